"""Large CPU temporaries from reused heap memory instead of fresh pages.

glibc serves an allocation above its mmap threshold (dynamic, at most 32 MB) with a fresh mapping and unmaps it
on free, so every such tensor (a [256, 49152] fp32 logits block is 50 MB) is page-faulted and zeroed anew.
On the 2-core AMD EPYC VM of benches/PIPELINE.md `x - x.amax(-1, keepdim=True)` on [512, 30000] fp32 took
25 ms that way and 5 ms from reused memory; a SmolLM2-135M forward of [4, 256] tokens ~2.4 -> 2.0 s.
`keep_freed_memory()` raises the threshold to 1 GiB and keeps freed memory for reuse (the process's resident
size then stays at its peak). The command line calls it; a library caller decides for its own process.
GREENPRUNE_MALLOC=default leaves the allocator as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h


def keep_freed_memory(mmap_threshold: int = 1 << 30) -> bool:
    """Tune glibc malloc as the module docstring says; False where it does not apply (not glibc, or opted out)."""
    if os.environ.get("GREENPRUNE_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to tune this way
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold - 1))
