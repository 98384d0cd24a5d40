"""Backend selection for greenprune's ops: CUDA extension -> Triton -> torch reference.

Order in `auto` mode (the default), per call, from the op's tensor arguments; the first that can run the call wins:
  1. "cuda":   the compiled extension (`greenprune._C` from csrc/, ops under `torch.ops.greenprune_cuda`,
               same schemas as `torch.ops.greenprune`), when it is installed, has the op, and every tensor is
               on a CUDA device. Optional: built with GREENPRUNE_BUILD_CUDA (see csrc/README.md).
  2. "triton": when triton imports, the op has a Triton kernel, and the tensors are on CUDA, or
               TRITON_INTERPRET=1 is set (the Triton interpreter runs the kernels on CPU tensors: tests only).
  3. "torch":  the pure-torch reference in reference.py, always available.
On a GPU that the benchmarks have measured (its name in dispatch_table.json, written by scripts/gpu_results.py
--save), the backends measured for the op and the call's size class (decode: at most 64 rows; bulk) are tried
fastest first instead, then the others in the order above: see measured_order.

`GREENPRUNE_BACKEND=torch|triton|cuda|auto` forces one (read at every call, so tests may monkeypatch it; under
torch.compile the choice is made once, when the call is traced, and the compiled graph keeps it).
Forcing a backend that cannot run the call raises BackendUnavailable with the reason, rather than silently
measuring or testing something else. A GPU is never needed at import: a failed triton import is logged and
every op falls back to torch.

Kernels are declared with `lazy_jit`: the `triton.jit` decoration happens at first launch, so whether
TRITON_INTERPRET was set before or after this module was imported does not matter.
"""
from __future__ import annotations

import collections
import functools
import json
import logging
import os
import types
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import _ext

log = logging.getLogger("greenprune.kernels")

BACKENDS = ("cuda", "triton", "torch")
ENV_BACKEND = "GREENPRUNE_BACKEND"

try:  # triton is optional: a CPU-only install, or a broken/mismatched one, must still import greenprune
    import triton
    import triton.language as tl

    HAS_TRITON, TRITON_ERROR = True, None
except Exception as exc:  # noqa: BLE001 - any import failure (ImportError, missing libcuda, ...) means "no triton"
    triton, HAS_TRITON, TRITON_ERROR = None, False, f"{type(exc).__name__}: {exc}"
    tl = types.SimpleNamespace(constexpr=None)  # kernel annotations `x: tl.constexpr` still evaluate
    log.info("triton unavailable (%s); greenprune kernels use the torch reference", TRITON_ERROR)


class BackendUnavailable(RuntimeError):
    """A forced backend (GREENPRUNE_BACKEND) cannot run this call."""


def interpret_mode() -> bool:
    """True when TRITON_INTERPRET asks triton to interpret kernels on the CPU (read live, like triton does)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=None)
def _log_once(level: int, msg: str) -> None:
    log.log(level, msg)


# --- the CUDA extension -----------------------------------------------------------------------------------
def _cuda_extension() -> Optional[object]:
    """torch.ops.greenprune_cuda once `greenprune._C` (built from csrc/, see csrc/README.md) loads."""
    return torch.ops.greenprune_cuda if _ext.load() is not None else None


def _cuda_op(op: str) -> Optional[Callable]:
    ext = _cuda_extension()
    return getattr(ext, op, None) if ext is not None and hasattr(ext, op) else None


# --- registry ---------------------------------------------------------------------------------------------
_TRITON: dict[str, Callable] = {}
_TORCH: dict[str, Callable] = {}


def register(op: str, *, torch_impl: Callable, triton_impl: Optional[Callable] = None) -> None:
    """Declare an op's implementations (each op module calls this once at import)."""
    _TORCH[op] = torch_impl
    if triton_impl is not None:
        _TRITON[op] = triton_impl


def _tensors(args) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor)]


def _why_not(backend: str, op: str, tensors: list[torch.Tensor]) -> Optional[str]:
    """None when `backend` can run `op` on these tensors, else the reason it cannot."""
    on_cuda = bool(tensors) and all(t.is_cuda for t in tensors)
    if backend == "torch":
        return None
    if backend == "cuda":
        if _cuda_op(op) is None:
            why = _ext.why_absent() or f"it has no '{op}' op"
            return f"the greenprune CUDA extension (greenprune._C) is not usable: {why}"
        return None if on_cuda else "the CUDA extension needs every tensor on a CUDA device"
    if backend == "triton":
        if not HAS_TRITON:
            return f"triton failed to import ({TRITON_ERROR})"
        if op not in _TRITON:
            return f"'{op}' has no Triton kernel"
        if on_cuda or interpret_mode():
            return None
        return "Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 to interpret them on the CPU)"
    raise ValueError(f"unknown backend '{backend}'")


# --- measured order ---------------------------------------------------------------------------------------
# dispatch_table.json holds, per GPU name, per op and size class, the backends in the order the benchmarks
# measured them (fastest first); scripts/gpu_results.py --save writes it from a run's bench_kernels.json.
DISPATCH_TABLE = Path(__file__).with_name("dispatch_table.json")
DECODE_ROWS = 64  # calls on at most this many rows (tokens) form the "decode" size class, larger ones "bulk"


def size_class(rows: int) -> str:
    return "decode" if rows <= DECODE_ROWS else "bulk"


def call_rows(t: torch.Tensor) -> int:
    """Rows of an op's first tensor argument: token ids count one each, other tensors by their last dimension."""
    if t.dim() == 0:
        return 1
    return t.numel() if not t.is_floating_point() else t.numel() // max(t.shape[-1], 1)


@functools.lru_cache(maxsize=None)
def _measured_table() -> dict:
    try:
        return json.loads(DISPATCH_TABLE.read_text()).get("gpus", {})
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as exc:  # a broken table must not break the ops: default order
        log.warning("greenprune: ignoring %s (%s): default dispatch order", DISPATCH_TABLE, exc)
        return {}


def measured_order(op: str, gpu_name: str, rows: int, table: Optional[dict] = None) -> tuple[str, ...]:
    """The backends to try for `op` on `gpu_name` at `rows` rows: the measured order for that size class first,
    then the rest in the default order (cuda, triton, torch)."""
    entry = (table if table is not None else _measured_table()).get(gpu_name, {})
    measured = [b for b in entry.get("ops", {}).get(op, {}).get(size_class(rows), []) if b in BACKENDS]
    return tuple(measured) + tuple(b for b in BACKENDS if b not in measured)


@functools.lru_cache(maxsize=None)
def _gpu_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _auto_order(op: str, ts: list[torch.Tensor]) -> tuple[str, ...]:
    if not ts or not all(t.is_cuda for t in ts):
        return BACKENDS
    index = ts[0].device.index if ts[0].device.index is not None else torch.cuda.current_device()
    return measured_order(op, _gpu_name(index), call_rows(ts[0]))


def backend_for(op: str, *tensors: torch.Tensor) -> str:
    """The backend ('cuda', 'triton' or 'torch') that runs `op` on these tensors, honouring GREENPRUNE_BACKEND."""
    if op not in _TORCH:
        raise KeyError(f"unknown greenprune op '{op}'; known: {', '.join(sorted(_TORCH))}")
    ts = _tensors(tensors)
    forced = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if forced != "auto":
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_BACKEND}={forced!r}; choose one of auto, {', '.join(BACKENDS)}")
        reason = _why_not(forced, op, ts)
        if reason is not None:
            raise BackendUnavailable(f"{ENV_BACKEND}={forced} but it cannot run '{op}': {reason}")
        return forced
    for backend in _auto_order(op, ts):
        reason = _why_not(backend, op, ts)
        if reason is None:
            return backend
        level = logging.INFO if ts and ts[0].is_cuda else logging.DEBUG  # on CUDA a faster path was expected
        _log_once(level, f"greenprune '{op}': backend {backend} unavailable: {reason}")
    raise AssertionError("unreachable: the torch backend always runs")


@torch.compiler.assume_constant_result
def _traced_choice(op: str, *tensors: torch.Tensor) -> str:
    return backend_for(op, *tensors)


def call(op: str, *args, **kwargs):
    """Run `op` on the backend picked by backend_for (tensor arguments decide)."""
    backend = (_traced_choice if torch.compiler.is_compiling() else backend_for)(op, *args, *kwargs.values())
    if backend == "cuda":
        return _cuda_op(op)(*args, **kwargs)
    return (_TRITON if backend == "triton" else _TORCH)[op](*args, **kwargs)


# --- kernel helpers ---------------------------------------------------------------------------------------
class LazyKernel:
    """A Triton kernel decorated at first launch: interpreted or compiled as TRITON_INTERPRET says then.

    kernel[grid](...) launches with explicit meta-parameters; kernel.tuned(configs, key)[grid](...) launches the
    autotuned variant (CUDA only: autotuning under the interpreter would run every config at ~1 ms a step).
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self._jit: dict[bool, object] = {}
        self._tuned: dict[tuple, object] = {}
        functools.update_wrapper(self, fn)

    def jit(self):
        if not HAS_TRITON:
            raise BackendUnavailable(f"triton failed to import ({TRITON_ERROR})")
        mode = interpret_mode()
        if mode:
            _interpreter_numpy_compat()
        if mode not in self._jit:
            self._jit[mode] = triton.jit(self.fn)
        return self._jit[mode]

    def __getitem__(self, grid):
        return self.jit()[grid]

    def tuned(self, configs: Callable[[], list], key: list[str]):
        """configs: a function returning triton.Config objects (built lazily, so no triton needed at import)."""
        cache_key = (interpret_mode(), configs, tuple(key))  # the function itself, not its id: no reuse
        if cache_key not in self._tuned:
            self._tuned[cache_key] = triton.autotune(configs=configs(), key=key)(self.jit())
        return self._tuned[cache_key]


@functools.lru_cache(maxsize=1)
def _interpreter_numpy_compat() -> None:
    """The Triton interpreter (3.x) turns a kernel's int arguments into 1-element numpy arrays and converts
    them back with int(array), which numpy >= 2.4 refuses for arrays with ndim > 0: every `range(0, n, B)`
    loop with a run-time bound then fails. Patch the interpreter's tensor.__index__ to take the single
    element. Applied only when interpreting, and only on numpy versions that need it."""
    import numpy as np

    try:
        int(np.array([1]))
        return
    except TypeError:
        pass
    from triton.runtime import interpreter as ti

    original = getattr(ti, "_patch_lang_tensor", None)
    if original is None:  # a triton whose interpreter changed shape: nothing we know how to fix
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    ti._patch_lang_tensor = patched
    _log_once(logging.DEBUG, "patched the Triton interpreter's tensor.__index__ for numpy >= 2.4")


def lazy_jit(fn: Callable) -> LazyKernel:
    return LazyKernel(fn)


def use_autotune(*tensors: torch.Tensor) -> bool:
    """Autotune only for compiled kernels on CUDA tensors."""
    return not interpret_mode() and all(t.is_cuda for t in tensors)


def dot_modes(dtype: torch.dtype) -> dict:
    """Meta-parameters for tl.dot: UPCAST loads to fp32 before the dot (the interpreter is wrong for bf16
    dots); PREC is the precision of fp32 dots: 'tf32' when torch allows TF32 matmuls, else 'tf32x3' (three
    TF32 tensor-core products, about fp32 accuracy; 'ieee' FMA dots spill registers at these tile sizes)."""
    if interpret_mode():
        return dict(UPCAST=True, PREC="ieee")
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return dict(UPCAST=False, PREC="tf32x3")
    return dict(UPCAST=False, PREC="tf32")  # 16-bit operands ignore it: tensor cores, fp32 accumulate


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_programs_target(t: torch.Tensor) -> int:
    """About two waves of programs on the device; a handful under the interpreter (each program costs ~ms)."""
    if t.is_cuda and not interpret_mode():
        return 2 * _sm_count(t.device.index if t.device.index is not None else torch.cuda.current_device())
    return 2


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


def vocab_split(t: torch.Tensor, token_blocks: int, n_vocab: int, granule: int) -> tuple[int, int]:
    """(SPLIT, ids_per_split) for kernels that stream a vocabulary: enough (token block, vocab slice)
    programs to fill the device, each slice a multiple of `granule` ids (>= every config's BLOCK_V)."""
    split = max(1, min(cdiv(num_programs_target(t), token_blocks), cdiv(n_vocab, granule)))
    per_split = round_up(cdiv(n_vocab, split), granule)
    return cdiv(n_vocab, per_split), per_split


def _torch_scratch(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_tma_allocator() -> None:
    """Kernels that build TMA tensor descriptors on the device (tl.make_tensor_descriptor) need a little global
    scratch per launch from triton's allocator: install a torch-backed one unless the process set its own."""
    try:
        from triton.runtime import _allocation

        if _allocation._allocator.get() is not _allocation._NULL_ALLOCATOR:
            return
    except (ImportError, AttributeError):  # another triton layout: install ours
        pass
    triton.set_allocator(_torch_scratch)


def tma_compatible(*tensors: torch.Tensor) -> bool:
    """TMA descriptors need a 16-byte aligned base, a unit last stride and 16-byte multiples for the others.
    Kernels that use them fall back to the torch reference otherwise (logged once per op)."""
    for t in tensors:
        es = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any((s * es) % 16 for s in t.stride()[:-1]):
            return False
    return True


_FALLBACKS: collections.Counter = collections.Counter()


def note_fallback(op: str, why: str) -> None:
    """A Triton launcher is running the torch reference instead of its kernel for this call: logged once, counted."""
    _FALLBACKS[op] += 1
    _log_once(logging.INFO, f"greenprune '{op}': {why}; using the torch reference for this call")


def fallback_counts(since: Optional[dict] = None) -> dict[str, int]:
    """Calls per op whose Triton implementation ran the torch reference instead (note_fallback), since import or,
    given an earlier result, since then: the kernel tests and the benchmarks check that what they report under a
    kernel's name came from the kernel."""
    since = since or {}
    return {op: n - since.get(op, 0) for op, n in _FALLBACKS.items() if n > since.get(op, 0)}
