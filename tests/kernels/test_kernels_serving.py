"""Serving a pruned model through the fused ops (greenprune/serving.py): the Triton swiglu_ffn and lm_head_argmax
kernels inside a real (tiny) pruned model, against the same model run by eager transformers.

Tolerance (fp32 logits): under the interpreter the fused FFN sums the same fp32 products in another order in
every layer: 1e-5 x the logits' scale (measured: 1.2e-7 at scale 0.5, seed 0). On a GPU the kernel's fp32 dots are
tf32x3 (three TF32 products, about fp32 accuracy; kernels/dispatch.dot_modes): 1e-4 x scale. Greedy tokens must
be equal.
"""
import pytest
import torch
from transformers import DynamicCache

from greenprune.families import shape_of
from greenprune.errors import GreenpruneError
from greenprune.planning.plan import LayerPlan, PruningPlan
from greenprune.pruning.prune import prune_model
from greenprune.pruning.compensation import enable_output_biases_
from greenprune.serving import FusedSwiGLU, fuse_for_serving, greedy_step
from helpers import tiny_model

pytestmark = pytest.mark.interpreter
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def pruned_pair(gen):
    """(eager pruned model, fused copy): unaligned per-layer widths (37, 64, 5), one layer removed, random
    nonzero down_proj biases (as bias compensation leaves them)."""
    dense = tiny_model(layers=4, hidden=64, ffn=96, heads=4, kv_heads=2)
    shape = shape_of(dense.config)
    keep = lambda w: tuple(sorted(torch.randperm(96, generator=gen)[:w].tolist()))  # noqa: E731
    plan = PruningPlan(shape, tuple(LayerPlan(i, w, 2, keep(w), (0, 1)) for i, w in ((0, 37), (1, 64), (3, 5))))
    eager = prune_model(dense, plan)
    enable_output_biases_(eager, down=True, o=False)
    with torch.no_grad():
        for layer in eager.model.layers:
            layer.mlp.down_proj.bias.copy_(torch.randn(64, generator=gen) * 0.1)
    fused = prune_model(dense, plan)
    enable_output_biases_(fused, down=True, o=False)
    fused.load_state_dict(eager.state_dict())
    assert fuse_for_serving(fused) == 3 and fuse_for_serving(fused) == 0  # idempotent
    return eager, fused


def _check_logits(eager, fused, ids, rel=1e-5):
    with torch.no_grad():
        want = eager(ids).logits.float()
        got = fused(ids).logits.float()
    assert all(isinstance(l.mlp, FusedSwiGLU) for l in fused.model.layers)
    assert [l.mlp.intermediate_size for l in fused.model.layers] == [37, 64, 5]
    torch.testing.assert_close(got, want, rtol=0, atol=rel * float(want.abs().max()))


def _greedy(model, ids, steps, fused: bool):
    cache, out_ids, x = DynamicCache(config=model.config), [], ids
    pos = torch.arange(ids.shape[1], device=ids.device)
    for _ in range(steps):
        if fused:
            tok, _ = greedy_step(model, x, past_key_values=cache, use_cache=True, cache_position=pos)
        else:
            with torch.no_grad():
                tok = model(input_ids=x, past_key_values=cache, use_cache=True, cache_position=pos).logits[:, -1:].argmax(-1)
        out_ids.append(tok)
        x, pos = tok, pos[-1:] + 1
    return torch.cat(out_ids, 1)


def _count_launches(monkeypatch, module, name) -> list:
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_fused_model_matches_eager_logits_and_greedy_tokens(gen, monkeypatch):
    from greenprune.kernels import swiglu, vocab

    ffn_launches = _count_launches(monkeypatch, swiglu, "_launch_swiglu_act")
    head_launches = _count_launches(monkeypatch, vocab, "_launch_lm_head_argmax")
    eager, fused = pruned_pair(gen)
    ids = torch.randint(0, 97, (2, 11), generator=gen)
    _check_logits(eager, fused, ids)
    assert torch.equal(_greedy(fused, ids, 6, fused=True), _greedy(eager, ids, 6, fused=False))
    assert len(ffn_launches) == 3 + 6 * 3 and len(head_launches) == 6  # the Triton kernels ran, not a fallback


def test_fused_serving_refuses_an_mlp_it_cannot_compute():
    m = tiny_model(layers=1, hidden=64, ffn=96, heads=4, kv_heads=2, hidden_act="gelu")
    with pytest.raises(GreenpruneError, match="SiLU"):
        fuse_for_serving(m)
    m = tiny_model(layers=1, hidden=64, ffn=96, heads=4, kv_heads=2, mlp_bias=True)
    with pytest.raises(GreenpruneError, match="without bias"):
        fuse_for_serving(m)


@pytest.mark.parametrize("mark", [pytest.param(0, marks=CUDA)])
def test_fused_model_matches_eager_on_gpu(mark, gen):
    eager, fused = (m.cuda() for m in pruned_pair(gen))
    ids = torch.randint(0, 97, (2, 11), generator=gen).cuda()
    _check_logits(eager, fused, ids, rel=1e-4)
    assert torch.equal(_greedy(fused, ids, 6, fused=True), _greedy(eager, ids, 6, fused=False))
