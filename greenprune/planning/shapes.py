"""Published model shapes and the plans greenprune makes for them at a parameter target (benchmarks, docs).

`target_plan` builds, for a dense shape and a kept fraction of parameters (0.7 = a 49B model from a 70B one),
a plan of the kinds the planner emits: FFN widths aligned to `align` (the `uniform` method, via make_plan),
optionally with whole layers removed (evenly from the second half, where block influence is lowest in
ShortGPT's measurements) and/or KV groups removed (with their query heads), the FFN width then chosen so the
total lands just under the target. Channel indices are the first ones (benchmarks time shapes, not choices).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..errors import GreenpruneError
from ..families import ModelShape
from ..scoring.scorers import Scores
from .options import PlanOptions
from .plan import LayerPlan, PruningPlan
from .planner import make_plan

LLAMA2_70B = ModelShape(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                        num_key_value_heads=8, head_dim=128, vocab_size=32000, tie_word_embeddings=False)
LLAMA2_7B = ModelShape(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                       num_key_value_heads=32, head_dim=128, vocab_size=32000, tie_word_embeddings=False)
VARIANTS = ("ffn", "ffn+layers", "ffn+kv")


def _dummy_scores(shape: ModelShape) -> Scores:
    L = shape.num_hidden_layers
    return Scores([torch.arange(shape.intermediate_size, 0, -1).float()] * L,
                  [torch.arange(shape.num_key_value_heads, 0, -1).float()] * L, [1.0] * L, "shape-only")


def target_plan(shape: ModelShape, keep: float, variant: str = "ffn", align: int = 256,
                drop_fraction: float = 0.1, kv_keep: float = 0.5) -> PruningPlan:
    """A plan keeping at most `keep` of the dense parameters (see the module docstring)."""
    if variant not in VARIANTS:
        raise GreenpruneError(f"unknown variant '{variant}'; choose from {', '.join(VARIANTS)}")
    if not 0 < keep < 1:
        raise GreenpruneError(f"keep fraction must be in (0, 1), got {keep}")
    if variant == "ffn":
        opts = PlanOptions(ratio=1 - keep, align=align, method="uniform", max_ffn_prune=0.9, drop_layers=False)
        plan = make_plan(shape, _dummy_scores(shape), opts, None)
        return replace(plan, meta={**plan.meta, "variant": variant, "keep": keep})
    L, G = shape.num_hidden_layers, shape.num_key_value_heads
    kept = list(range(L))
    if variant == "ffn+layers":
        n_drop = max(1, round(drop_fraction * L))
        half = list(range(L // 2, L))
        step = len(half) / n_drop
        dropped = {half[int(i * step)] for i in range(n_drop)}
        kept = [i for i in kept if i not in dropped]
    kv = G if variant != "ffn+kv" else max(1, round(G * kv_keep))
    budget = math.floor(keep * shape.dense_params)
    fixed = shape.vocab_params(shape.vocab_size) + shape.hidden_size
    per_layer = (budget - fixed) / len(kept)
    w = (shape.intermediate_size // align) * align
    while w > 0 and shape.layer_params(w, kv) > per_layer:
        w -= align
    if w <= 0:
        raise GreenpruneError(f"keep fraction {keep} is unreachable with variant {variant}")
    layers = tuple(LayerPlan(i, w, kv, tuple(range(w)), tuple(range(kv))) for i in kept)
    return PruningPlan(shape, layers, None, {"method": "target", "variant": variant, "keep": keep, "align": align})
