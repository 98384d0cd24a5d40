"""Two rules every planner shares: the FFN widths a layer may take, and the parameters kept free for the
output biases that bias compensation adds after planning."""
from __future__ import annotations

import math

from ..families import ModelShape


def ffn_widths(intermediate_size: int, align: int, max_ffn_prune: float) -> list[int]:
    """Allowed FFN widths, widest first: the dense width, then the multiples of `align` down to the floor
    (at most `max_ffn_prune` of the channels removed, never below one `align`)."""
    F, a = intermediate_size, align
    floor = max(a, math.ceil((1 - max_ffn_prune) * F / a) * a)
    return [F] + [w for w in range((F - 1) // a * a, floor - 1, -a) if w > 0]


def bias_reserve(shape: ModelShape, kv: bool) -> int:
    """Parameters bias compensation adds to a per-layer plan: one hidden-size bias per layer for down_proj,
    and for o_proj too where KV groups may be removed. Planners leave this much room under the budget so the
    saved model still removes at least the requested fraction."""
    return shape.num_hidden_layers * shape.hidden_size * (2 if kv else 1)
