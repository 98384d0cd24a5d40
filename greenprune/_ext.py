"""The optional compiled CUDA extension greenprune._C (built from csrc/, see csrc/README.md).

load() imports it once and returns the module, or None with the reason kept in why_absent() and logged at
debug level (a pure-Python install is the normal case, not a problem). Its ops live under
torch.ops.greenprune_cuda; greenprune.kernels' dispatcher prefers them for CUDA tensors.
"""
from __future__ import annotations

import functools
import importlib
import logging
from typing import Optional

log = logging.getLogger("greenprune")
_ABSENT: list = []  # the reason, once load() has failed


@functools.lru_cache(maxsize=1)
def load() -> Optional[object]:
    try:
        return importlib.import_module("greenprune._C")
    except Exception as exc:  # noqa: BLE001 - not built (ImportError), or built against another torch/CUDA
        reason = f"{type(exc).__name__}: {exc}"
        _ABSENT.append(reason)
        log.debug("greenprune CUDA extension (greenprune._C) unavailable: %s", reason)
        return None


def why_absent() -> Optional[str]:
    """None when the extension is loaded, else why it is not."""
    return None if load() is not None else _ABSENT[0]
