"""One importance threshold over every FFN channel of every layer (LLM-Pruner / FLAP-style global ranking):
each layer keeps its channels scoring at or above it, rounded down to an allowed width. Layer streaming plans
this way (on scores standardised within each layer, FLAP's adaptive structure) and the search seeds with it."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch


def widths_at(scores: Sequence[torch.Tensor], threshold: float, ladder: Sequence[int]) -> list[int]:
    """Per layer, the widest allowed width (ladder: widest first) not above its count of channels scoring
    >= threshold; the narrowest allowed width when there is none."""
    out = []
    for s in scores:
        keep = int((s >= threshold).sum())
        out.append(max([w for w in ladder if w <= keep] or [ladder[-1]]))
    return out


def global_threshold_widths(scores: Sequence[torch.Tensor], ladder: Sequence[int], fits: Callable[[list[int]], bool],
                            standardise: bool = False) -> Optional[list[int]]:
    """The widths of the lowest threshold (the most channels kept) whose widths fit(widths); None when not even
    every layer at its narrowest fits. `fits` must hold for any widths narrower than widths it holds for."""
    z = [s.double() for s in scores]
    if standardise:
        z = [(s - s.mean()) / s.std().clamp_min(1e-30) for s in z]
    cands = torch.cat(z).unique().sort().values.tolist() + [math.inf]
    if not fits(widths_at(z, math.inf, ladder)):
        return None
    lo, hi = 0, len(cands) - 1  # smallest candidate index that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(widths_at(z, cands[mid], ladder)):
            hi = mid
        else:
            lo = mid + 1
    return widths_at(z, cands[lo], ladder)
