"""benches/bench_e2e.py's harness on the CPU, at tiny shapes: what the GPU suite times must run and be right.

The suite itself only runs on a GPU; here its own builders and step functions (not copies) run in float32 on the
CPU, so an API misuse or a wrong step shows up in `make test` and not first on a short GPU lease. Timing is not
checked here (benchmarks only).
"""
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from greenprune.plan import ModelShape, PruningPlan
from greenprune.serving import fuse_for_serving
from greenprune.shapes import target_plan

spec = importlib.util.spec_from_file_location("bench_e2e", Path(__file__).resolve().parent.parent / "benches" / "bench_e2e.py")
bench_e2e = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_e2e)

TINY = ModelShape(num_hidden_layers=3, hidden_size=64, intermediate_size=192, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=101, tie_word_embeddings=False)


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch):
    monkeypatch.setattr(bench_e2e, "RUN", dict(device="cpu", dtype=torch.float32))


@pytest.mark.parametrize("batch,T,ctx", [(1, 9, 0), (3, 1, 6)], ids=["prefill", "decode"])
def test_slice_step_is_the_layers_applied_in_turn_and_repeats_exactly(batch, T, ctx):
    """The timed slice step feeds each layer's output to the next, and a repeat (same cache slots) gives the same
    result, which is what timing many repeats of one step assumes. Widths and KV heads differ per layer (ffn+kv)."""
    torch.manual_seed(0)
    layers, rotary, cache_cfg = bench_e2e._slice(bench_e2e._config(TINY, 2), [(192, 2), (64, 1)])
    assert [l.mlp.intermediate_size for l in layers] == [192, 64]
    assert [l.self_attn.k_proj.out_features // TINY.head_dim for l in layers] == [2, 1]
    step = bench_e2e._slice_fns(layers, rotary, cache_cfg, batch, T, ctx)
    first, again = step(), step()
    assert first.shape == (batch, T, TINY.hidden_size) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    # Reference: the same layers and draws (h, then the cached prefix) through a DynamicCache, stepped once.
    torch.manual_seed(0)
    layers2, rotary2, _ = bench_e2e._slice(bench_e2e._config(TINY, 2), [(192, 2), (64, 1)])
    h = torch.randn(batch, T, TINY.hidden_size)
    cache = DynamicCache() if ctx else None
    with torch.no_grad():
        if ctx:
            pre, pos = torch.randn(batch, ctx, TINY.hidden_size), torch.arange(ctx).unsqueeze(0)
            for layer in layers2:  # as the harness does: every layer caches the same prefix hidden states
                layer(pre, position_embeddings=rotary2(pre, pos), position_ids=pos, past_key_values=cache)
        pos = torch.arange(ctx, ctx + T).unsqueeze(0)
        pe = rotary2(h, pos)
        for layer in layers2:
            h = layer(h, position_embeddings=pe, position_ids=pos, past_key_values=cache)
    torch.testing.assert_close(first, h, rtol=1e-5, atol=1e-5)  # float32; the caches differ in layout only


def test_model_steps_eager_and_fused_pick_the_same_next_token():
    """Whole-model steps: the fused step (fused SwiGLU FFNs, lm_head_argmax on the last hidden state) returns the
    argmax of the eager step's last logits, on the same weights, ids and cache state; for a pruned plan too."""
    plan = target_plan(TINY, 0.7, "ffn", align=16)
    for p in (None, plan):
        torch.manual_seed(1)
        model = bench_e2e._model(TINY, p)
        torch.manual_seed(2)
        eager_step = bench_e2e._model_fns(model, "eager", 2, 1, 5)
        eager = eager_step()
        torch.testing.assert_close(eager_step(), eager, rtol=0, atol=0)  # a repeat writes the same cache slot
        fuse_for_serving(model)
        torch.manual_seed(2)  # the same ids and cache prefix
        fused_step = bench_e2e._model_fns(model, "fused", 2, 1, 5)
        fused = fused_step()
        assert torch.equal(fused_step(), fused)
        assert eager.shape == (2, 1, TINY.vocab_size) and fused.shape == (2, 1)
        assert torch.equal(fused[:, 0], eager[:, -1].argmax(-1))
        if p is not None:
            assert [l.mlp.intermediate_size for l in model.model.layers] == [lp.ffn_width for lp in p.layers]


def test_default_model_pair_builds_the_committed_plan(real_tokenizer):
    dense, pruned, source = bench_e2e.default_model_pair("cpu")
    assert source == "real weights, committed 22% plan"
    plan = PruningPlan.load(bench_e2e.PLANS / "smollm2_135m_22.plan.json")
    assert sum(t.numel() for t in pruned.parameters()) == plan.params()
    assert sum(t.numel() for t in dense.parameters()) == plan.shape.dense_params


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
