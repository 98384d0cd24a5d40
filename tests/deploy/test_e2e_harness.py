"""The end-to-end benchmark's harness (greenprune.deploy.e2e) on the CPU, at tiny shapes: what the GPU suite
times must run and be right. Timing is not checked here (benchmarks only)."""
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from greenprune.deploy import e2e
from greenprune.deploy.serving import fuse_for_serving
from greenprune.families import ModelShape
from greenprune.planning.plan import PruningPlan
from greenprune.planning.shapes import target_plan

PLANS = Path(__file__).resolve().parents[2] / "benches" / "plans"
CPU = dict(device="cpu", dtype=torch.float32)
TINY = ModelShape(num_hidden_layers=3, hidden_size=64, intermediate_size=192, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=101, tie_word_embeddings=False)


@pytest.mark.parametrize("batch,T,ctx", [(1, 9, 0), (3, 1, 6)], ids=["prefill", "decode"])
def test_slice_step_is_the_layers_applied_in_turn_and_repeats_exactly(batch, T, ctx):
    """The timed slice step feeds each layer's output to the next, and a repeat (same cache slots) gives the same
    result, which is what timing many repeats of one step assumes. Widths and KV heads differ per layer (ffn+kv)."""
    torch.manual_seed(0)
    layers, rotary, cache_cfg = e2e.layer_slice(e2e.slice_config(TINY, 2), [(192, 2), (64, 1)], **CPU)
    assert [l.mlp.intermediate_size for l in layers] == [192, 64]
    assert [l.self_attn.k_proj.out_features // TINY.head_dim for l in layers] == [2, 1]
    step = e2e.slice_step(layers, rotary, cache_cfg, batch, T, ctx)
    first, again = step(), step()
    assert first.shape == (batch, T, TINY.hidden_size) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    # Reference: the same layers and draws (h, then the cached prefix) through a DynamicCache, stepped once.
    torch.manual_seed(0)
    layers2, rotary2, _ = e2e.layer_slice(e2e.slice_config(TINY, 2), [(192, 2), (64, 1)], **CPU)
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
        model = e2e.whole_model(TINY, p, **CPU)
        torch.manual_seed(2)
        eager_step = e2e.model_step(model, "eager", 2, 1, 5)
        eager = eager_step()
        torch.testing.assert_close(eager_step(), eager, rtol=0, atol=0)  # a repeat writes the same cache slot
        fuse_for_serving(model)
        torch.manual_seed(2)  # the same ids and cache prefix
        fused_step = e2e.model_step(model, "fused", 2, 1, 5)
        fused = fused_step()
        assert torch.equal(fused_step(), fused)
        assert eager.shape == (2, 1, TINY.vocab_size) and fused.shape == (2, 1)
        assert torch.equal(fused[:, 0], eager[:, -1].argmax(-1))
        if p is not None:
            assert [l.mlp.intermediate_size for l in model.model.layers] == [lp.ffn_width for lp in p.layers]


def test_default_model_pair_builds_the_committed_plan(real_tokenizer):
    dense, pruned, source = e2e.default_model_pair(PLANS / "smollm2_135m_22.plan.json", PLANS / "smollm2_135m.config.json", **CPU)
    assert source == "real weights, committed 22% plan"
    plan = PruningPlan.load(PLANS / "smollm2_135m_22.plan.json")
    assert sum(t.numel() for t in pruned.parameters()) == plan.params()
    assert sum(t.numel() for t in dense.parameters()) == plan.shape.dense_params
