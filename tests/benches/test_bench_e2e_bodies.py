"""benches/bench_e2e.py's bench bodies on the CPU, at tiny shapes: the suite itself (its parametrisations, plans
and floor arithmetic) is what is under test, so it is loaded from its file. The suite only times on a GPU; here
its own functions run in float32 on the CPU with a recording measure, so an API misuse shows up in `make test`
and not first on a short GPU lease. Timing is not checked here (benchmarks only)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from greenprune.families import ModelShape
from greenprune.serving import fuse_for_serving
from greenprune.planning.shapes import target_plan

spec = importlib.util.spec_from_file_location("bench_e2e", Path(__file__).resolve().parents[2] / "benches" / "bench_e2e.py")
bench_e2e = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_e2e)

TINY = ModelShape(num_hidden_layers=3, hidden_size=64, intermediate_size=192, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=101, tie_word_embeddings=False)


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch):
    monkeypatch.setattr(bench_e2e, "RUN", dict(device="cpu", dtype=torch.float32))


class _Benchmark:
    def __init__(self):
        self.group, self.extra_info = None, {}


def _recording_measure(benchmark, runs: list):
    """measure() as the suite calls it, without timing: runs the pruned step and its dense baseline once each.
    speedup_vs_baseline is a stand-in (1.0) so that the bench body's own arithmetic after it can run."""

    def measure(fn, *, bytes=None, flops=None, baseline=None, graph=False, **extra):
        assert (bytes if graph else flops) > 0  # decode is judged by bytes (replayed from graphs), prefill by FLOPs
        for step in (fn, baseline):
            out = step()
            assert not out.is_floating_point() or torch.isfinite(out).all()
        runs.append(extra)
        benchmark.extra_info.update(extra, speedup_vs_baseline=1.0)

    return measure


MINI_70B = ModelShape(num_hidden_layers=20, hidden_size=64, intermediate_size=1024, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=8, vocab_size=128, tie_word_embeddings=False)


MODES = [("prefill", 1, 8), ("decode", 2, 1)]  # (mode, batch, T), tiny


def test_every_slice_bench_runs_its_plan(monkeypatch):
    """bench_llama70b_slice's body for every variant, implementation and ratio, on a 70B-like shape scaled down
    (20 layers, widths aligned to 256 as in the suite): both steps run, and the recorded plan is the target's."""
    monkeypatch.setattr(bench_e2e, "LLAMA2_70B", MINI_70B)
    monkeypatch.setattr(bench_e2e, "CONTEXT", 6)
    marks = {m.args[0]: m.args[1] for m in bench_e2e.bench_llama70b_slice.pytestmark if m.name == "parametrize"}
    for variant, impl in marks["variant,impl"]:  # the suite's own parametrisations
        for ratio in marks["ratio"]:
            for mode, batch, T in MODES:
                bench, runs = _Benchmark(), []
                bench_e2e.bench_llama70b_slice(bench, _recording_measure(bench, runs), ratio, variant, impl, mode,
                                               batch, T)
                info = bench.extra_info
                plan = target_plan(MINI_70B, bench_e2e.RATIOS[ratio], variant)
                assert len(runs) == 1 and info["impl"] == impl and info["variant"] == variant
                assert info["params_kept"] <= bench_e2e.RATIOS[ratio] and info["ffn_width"] % 256 == 0
                assert info["layers_kept"] == len(plan.layers) and info["ideal_speedup"] > 1
                assert info["frac_of_ideal_speedup"] == pytest.approx(1 / info["ideal_speedup"])
                assert info["extrapolated_stack_speedup"] == pytest.approx(20 / len(plan.layers))


def test_whole_model_benches_run_eager_and_fused(monkeypatch):
    """bench_llama7b_model's and bench_default_model's bodies, both implementations: a tiny model for the first,
    the real default model with the committed 22% plan (float32, CPU) for the second."""
    monkeypatch.setattr(bench_e2e, "CONTEXT", 6)
    plan = target_plan(TINY, 0.7, "ffn", align=16)
    pairs = []
    for impl in ("eager", "fused"):
        torch.manual_seed(0)
        pairs.append(("llama7b", bench_e2e._model(TINY, impl=impl), bench_e2e._model(TINY, plan, impl=impl), plan, impl))
        dense, pruned, source = bench_e2e.default_model_pair("cpu")
        if impl == "fused":
            fuse_for_serving(dense)
            fuse_for_serving(pruned)
        pairs.append(("default", dense, pruned, source, impl))
    for kind, dense, pruned, extra, impl in pairs:
        for mode, batch, T in MODES:
            bench, runs = _Benchmark(), []
            measure = _recording_measure(bench, runs)
            if kind == "llama7b":
                bench_e2e.bench_llama7b_model(bench, measure, (dense, pruned, extra, impl), mode, batch, T)
                assert bench.extra_info["ffn_width"] == plan.layers[0].ffn_width
            else:
                bench_e2e.bench_default_model(bench, measure, (dense, pruned, extra, impl), mode, batch, T)
                assert bench.extra_info["pruned_model"] == "real weights, committed 22% plan"
            assert len(runs) == 1 and bench.extra_info["impl"] == impl and bench.extra_info["ideal_speedup"] > 1
