"""Shared benchmark machinery: measured ceilings, device timing, and run metadata in the benchmark JSON.

Method (see README.md): count the floor first (fewest bytes through device memory, FLOPs), measure the two
ceilings once per session on the machine itself (a 1 GiB device-to-device copy, counting bytes read plus
written; an 8192^3 bf16 cuBLAS GEMM), then time each op with CUDA events (median over repeats, L2 flushed
between repeats so memory-bound ops are not timed out of cache) and record achieved GB/s or TFLOP/s and the
fraction of the ceiling in `benchmark.extra_info`. pytest-benchmark's own wall-clock stats (synchronised
calls) are kept alongside. Run: `pytest benches --benchmark-json=benches/results/<name>.json` (GPU only).
"""
from __future__ import annotations

import os
import statistics
from typing import Callable, Optional

import pytest
import torch

from greenprune import _ext
from greenprune.runinfo import run_info as greenprune_run_info
from greenprune.kernels import fallback_counts

CEILINGS: dict = {}  # filled once per session by the `ceilings` fixture, written into the JSON


def run_info() -> dict:
    """greenprune.runinfo's record of the run, plus what the kernel benches also depend on: the profile, triton's
    version and the GPU's properties."""
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    info = {**greenprune_run_info(dev), "profile": bench_profile()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        info["triton"] = f"unavailable ({type(exc).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(gpu=p.name, sm_count=p.multi_processor_count, gpu_memory_GiB=round(p.total_memory / 2**30, 1))
    return info


# --- profiles -------------------------------------------------------------------------------------------
# GREENPRUNE_BENCH_PROFILE=full (default) runs every parametrisation. `lease` runs the subset each bench module
# names in its LEASE dict ({bench function: [param subsets]}; an item is kept when its parameters contain one
# of the subsets): the headline figures of every op and end-to-end target, sized for a short lease of a GPU
# (scripts/gpu_check.sh lease). Declared beside the full lists, so the subset never drifts from the suite.
# Subsets are listed most important first, and the lease runs them in that order within each bench function,
# after all of them the torch.compile baselines (their compilation is the slowest part): a time budget that runs
# out cuts the least important figures.
PROFILES = ("full", "lease")


def bench_profile() -> str:
    profile = os.environ.get("GREENPRUNE_BENCH_PROFILE", "full").strip().lower() or "full"
    if profile not in PROFILES:
        raise pytest.UsageError(f"GREENPRUNE_BENCH_PROFILE={profile!r}; choose one of {', '.join(PROFILES)}")
    return profile


def _params(item) -> dict:
    return getattr(getattr(item, "callspec", None), "params", {})


def _contains(params: dict, subset: dict) -> bool:
    return all(k in params and params[k] == v for k, v in subset.items())


def _lease_rank(item) -> Optional[int]:
    """Index of the first LEASE subset of the item's function that its parameters contain; None: not leased."""
    subsets = getattr(item.module, "LEASE", {}).get(item.originalname, [])
    return next((rank for rank, subset in enumerate(subsets) if _contains(_params(item), subset)), None)


def pytest_collection_modifyitems(config, items):
    if bench_profile() == "full":
        return
    for module in {it.module for it in items}:  # a subset that matches nothing is a typo: say so, never run less
        for name, subsets in getattr(module, "LEASE", {}).items():
            params = [_params(it) for it in items if it.module is module and it.originalname == name]
            for subset in subsets:
                if not any(_contains(p, subset) for p in params):
                    raise pytest.UsageError(f"{module.__name__}.LEASE: {name} {subset} matches no benchmark")
    ranks = {it: _lease_rank(it) for it in items}
    dropped = [it for it in items if ranks[it] is None]
    first_seen = {}
    for it in items:
        first_seen.setdefault((it.module, it.originalname), len(first_seen))
    kept = sorted((it for it in items if ranks[it] is not None),  # stable: file order within equal keys
                  key=lambda it: ("compile" in str(_params(it).get("impl", "")),
                                  first_seen[(it.module, it.originalname)], ranks[it]))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["greenprune"] = run_info()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["greenprune"] = {**run_info(), "ceilings": dict(CEILINGS)}


_FLUSH: dict = {}


def device_ms(fn: Callable, reps: int = 25, flush: bool = True) -> float:
    """Median device time of fn() in ms, by CUDA events, after warm-up (compilation, autotuning)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    if flush and "buf" not in _FLUSH:
        _FLUSH["buf"] = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")  # > L2 (50 MB on H100)
    times = []
    for _ in range(reps):
        if flush:
            _FLUSH["buf"].zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@pytest.fixture(scope="session")
def ceilings() -> dict:
    """Session-scoped, so it is set up (and skips without a GPU) before any module-scoped model fixture."""
    if not torch.cuda.is_available():
        pytest.skip("benchmarks need a CUDA GPU (no GPU numbers without one)")
    if not CEILINGS:
        n = 2**30  # bytes
        src = torch.randint(-128, 127, (n,), dtype=torch.int8, device="cuda")  # random: never time zeros
        dst = torch.empty_like(src)
        ms = device_ms(lambda: dst.copy_(src), flush=False)
        CEILINGS["copy_GBps"] = 2 * n / ms / 1e6  # bytes read + written
        del src, dst
        a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        ms = device_ms(lambda: a @ b, flush=False)
        CEILINGS["gemm_bf16_TFLOPs"] = 2 * 8192**3 / ms / 1e9
        torch.cuda.empty_cache()
    return CEILINGS


@pytest.fixture
def measure(benchmark, ceilings):
    """measure(fn, bytes=..., flops=..., baseline=fn0, graph=False): time fn, record rates, fractions and speed-up;
    graph=True replays fn and the baseline from CUDA graphs (cuda_graphed: both or neither, recorded)."""

    def run(fn: Callable, *, bytes: Optional[float] = None, flops: Optional[float] = None,
            baseline: Optional[Callable] = None, graph: bool = False, **extra) -> float:
        before = fallback_counts()
        if graph:
            fns, extra["graph"] = cuda_graphed(fn, *([baseline] if baseline is not None else []))
            fn, baseline = fns[0], (fns[1] if baseline is not None else None)
        ms = device_ms(fn)
        fell = fallback_counts(since=before)
        if fell:  # a figure under a kernel's name that the torch reference produced: refuse it
            pytest.fail(f"Triton launchers ran the torch reference instead of their kernels: {fell}", pytrace=False)
        info = {"device_ms": round(ms, 4), **extra}
        if bytes is not None:
            info["GBps"] = bytes / ms / 1e6
            info["frac_of_copy_bw"] = info["GBps"] / ceilings["copy_GBps"]
        if flops is not None:
            info["TFLOPs"] = flops / ms / 1e9
            info["frac_of_cublas_bf16"] = info["TFLOPs"] / ceilings["gemm_bf16_TFLOPs"]
        if baseline is not None:
            info["speedup_vs_baseline"] = device_ms(baseline) / ms
        info["ceilings"] = dict(ceilings)
        benchmark.extra_info.update(info)

        def synced():
            fn()
            torch.cuda.synchronize()

        benchmark.pedantic(synced, rounds=10, warmup_rounds=1, iterations=1)
        return ms

    return run


def cuda_graphed(*fns: Callable) -> tuple[list[Callable], dict]:
    """Each fn captured once into a CUDA graph, replayed per call: a decode step launches ~10 kernels per layer
    and without a graph the CPU's launch rate, not the GPU, can set its time. A replay repeats the same inputs
    and cache slots, which is what the benchmarks time. All or none: if any capture fails (an op that waits on
    the host, say) every fn runs eagerly, so the compared sides stay alike, and the reason is recorded."""
    graphs = []
    try:
        for fn in fns:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture: allocations, Triton compilation/autotuning
                fn()
                fn()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            graphs.append(g)
    except Exception as exc:  # noqa: BLE001
        torch.cuda.synchronize()
        return list(fns), {"cuda_graph": False, "cuda_graph_error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return [g.replay for g in graphs], {"cuda_graph": True}


@pytest.fixture
def like() -> dict:
    """Where and in what the kernel benchmarks make their inputs (tests/kernels/test_kernels_benches.py calls the
    bench functions with CPU tensors under the Triton interpreter, at tiny shapes)."""
    return dict(device="cuda", dtype=torch.bfloat16)


@pytest.fixture
def cuda_ext():
    """torch.ops.greenprune_cuda (the csrc/ extension), or skip the `cuda_ext` implementation, saying why.
    Requested through request.getfixturevalue only by the cuda_ext parametrisations."""
    why = _ext.why_absent()
    if why is not None:
        pytest.skip(f"the CUDA extension greenprune._C is not built ({why})")
    return torch.ops.greenprune_cuda


@pytest.fixture
def compiled() -> Callable:
    """compiled(fn): torch.compile(fn), skipping the bench (with the reason) if compilation fails here."""

    def wrap(fn: Callable) -> Callable:
        cfn = torch.compile(fn)

        def call(*args, **kwargs):
            try:
                return cfn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                pytest.skip(f"torch.compile failed: {type(exc).__name__}: {str(exc)[:200]}")

        return call

    return wrap
