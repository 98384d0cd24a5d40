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
