"""The working precision of the planning passes (activation statistics, KL tables): which dtype, and the model
copy in it. The dense model itself is never converted; scores are computed from its own weights."""
from __future__ import annotations

import copy
import functools
import time
from typing import Optional

import torch

DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(choice: str, model) -> torch.dtype:
    """auto / float32 / bfloat16 -> a dtype. auto: a 16-bit model's own; bfloat16 on a GPU that has it, and on
    a CPU where a layer-sized bf16 product is measured at least 1.3x faster than fp32 (2 AMD EPYC Zen 4 cores:
    2.4x; CPUs without native bf16 emulate it, slower than fp32); else float32."""
    if choice != "auto":
        return getattr(torch, choice)
    p = next(model.parameters())
    if p.dtype in (torch.bfloat16, torch.float16):
        return p.dtype
    if p.is_cuda:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _cpu_bf16_speedup() >= 1.3 else torch.float32


def working_copy(model, dtype: Optional[torch.dtype]):
    """The model itself when it already is in `dtype` (or dtype is None), else a converted copy."""
    return model if dtype in (None, next(model.parameters()).dtype) else copy.deepcopy(model).to(dtype)


@functools.lru_cache(maxsize=1)
def _cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of a [512, 576] x [576, 1536] product on this CPU, best of 5 (~0.1 s)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 576, generator=g), torch.randn(576, 1536, generator=g)

    def best(x, y):
        x @ y
        times = []
        for _ in range(5):
            t = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t)
        return min(times)

    return best(a, b) / best(a.bfloat16(), b.bfloat16())
