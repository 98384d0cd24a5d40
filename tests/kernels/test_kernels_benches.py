"""The kernel benchmark functions themselves (benches/bench_*.py) run at tiny shapes on the CPU.

They only time on a GPU; here each bench function is called directly with fp16 CPU inputs (the `like` fixture's
CPU counterpart), its Triton ops run under the interpreter, and a recording `measure` calls the timed function
and its baseline once. A bench body that calls an op wrongly, builds inputs of the wrong shape or hands the
floor arithmetic something that is not a positive number fails in `make test`, not first on a GPU lease.
What runs: every implementation of every kernel bench except `cuda_ext` (no extension without CUDA) and with
`compile` given the function uncompiled (torch.compile itself is not what is checked here).
"""
import importlib.util
import inspect
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.interpreter

BENCHES = Path(__file__).resolve().parents[2] / "benches"
TINY = {  # per bench function: shapes small enough for the interpreter, 16-bit rows 16-byte aligned for TMA
    "bench_channel_moments": [dict(N=37, C=48)],
    "bench_wanda_scores": [dict(O=40, C=48)],
    "bench_taylor_scores": [dict(O=40, C=48, dim=0), dict(O=40, C=48, dim=1)],
    "bench_kl_divergence": [dict(T=9, H=32, V=300, K=100)],
    "bench_swiglu_ffn": [dict(T=9, H=32, F=45)],
    "bench_lm_head_argmax": [dict(T=3, H=32, V=300, K=100)],
    "bench_lm_head_topk": [dict(T=3, H=32, V=300, K=100)],
    "bench_remapped_embedding": [dict(N=11, H=32, V=300, K=100)],
}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"greenprune_bench_{name}", BENCHES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cases():
    for module_name in ("bench_channel_stats", "bench_kl", "bench_swiglu", "bench_vocab"):
        module = _module(module_name)
        for fn_name, shapes in TINY.items():
            fn = getattr(module, fn_name, None)
            if fn is None:
                continue
            impls = next(m.args[1] for m in fn.pytestmark if m.name == "parametrize" and m.args[0] == "impl")
            for impl in impls:
                if impl != "cuda_ext":
                    for shape in shapes:
                        yield pytest.param(fn, impl, shape, id=f"{fn_name}-{impl}-{'-'.join(map(str, shape.values()))}")


class _Benchmark:
    def __init__(self):
        self.group, self.extra_info = None, {}


def _check_output(out):
    for t in out if isinstance(out, tuple) else [out]:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            assert torch.isfinite(t).all()


@pytest.mark.parametrize("fn,impl,shape", list(_cases()))
def test_bench_function_runs(fn, impl, shape):
    calls = []

    def measure(timed, *, bytes=None, flops=None, baseline=None, graph=False, **extra):
        assert extra["impl"] == impl and any(k.startswith("target_") for k in extra)
        assert any(v is not None for v in (bytes, flops))
        for v in (bytes, flops):
            assert v is None or (v > 0 and math.isfinite(v))
        _check_output(timed())
        if baseline is not None:
            _check_output(baseline())
        calls.append(impl)

    given = dict(request=None, benchmark=_Benchmark(), measure=measure, compiled=lambda f: f,
                 like=dict(device="cpu", dtype=torch.float16), impl=impl, **shape)
    fn(**{k: v for k, v in given.items() if k in inspect.signature(fn).parameters})
    assert calls == [impl]
