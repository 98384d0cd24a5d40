"""The step cost model (greenprune.deploy.cost) against real models: parameter bytes, torch's FLOP counter, KV caches."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, DynamicCache

from greenprune.families import shape_of
from greenprune.deploy.cost import ideal_speedup, layer_widths, step_cost
from greenprune.planning.plan import LayerPlan, PruningPlan
from greenprune.pruning.prune import derive_config
from helpers import tiny_config


def _pruned_model(attention_bias=False):
    cfg = tiny_config(vocab_size=97, layers=3, hidden=48, ffn=40, heads=6, kv_heads=3, tie_word_embeddings=False,
                      attention_bias=attention_bias)
    shape = shape_of(cfg)
    plan = PruningPlan(shape, (LayerPlan(0, 24, 2, tuple(range(24)), (0, 1)), LayerPlan(2, 37, 1, tuple(range(37)), (2,))))
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(cfg).eval()
    pruned = AutoModelForCausalLM.from_config(derive_config(cfg, plan)).eval()
    return shape, dense, pruned


def _linear_flops(model, ids, **kw) -> int:
    """FLOPs torch counts for the model's linear maps (aten.mm/addmm; its count of SDPA does not cover the CPU
    kernel, and the rotary embedding's tiny bmm is no linear map of the model)."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(ids, **kw)
    counts = fc.get_flop_counts()["Global"]
    return sum(v for k, v in counts.items() if str(k).split(".")[-1] in ("mm", "addmm"))


@pytest.mark.parametrize("attention_bias", [False, True])
def test_weight_bytes_and_linear_flops_match_real_models(attention_bias):
    shape, dense, pruned = _pruned_model(attention_bias)
    assert layer_widths(pruned.config) == [(24, 2), (37, 1)]
    for model in (dense, pruned):
        widths = layer_widths(model.config)
        B, T = 2, 5
        c = step_cost(shape, widths, B, T, head_tokens=T, dtype_bytes=4)
        params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
        assert c.weight_bytes == (params + B * T * shape.hidden_size) * 4  # embedding: only the gathered rows
        no_attn = step_cost(shape, widths, B, T, head_tokens=T)
        attn = sum(4 * B * kv * shape.heads_per_group * shape.head_dim * (T * (T + 1) // 2) for _, kv in widths)
        ids = torch.randint(0, 97, (B, T))
        assert _linear_flops(model, ids, use_cache=False) == no_attn.flops - attn


def test_decode_step_reads_the_cache_it_holds():
    shape, _, pruned = _pruned_model()
    widths = layer_widths(pruned.config)
    B, ctx = 3, 7
    cache = DynamicCache(config=pruned.config)
    with torch.no_grad():
        pruned(torch.randint(0, 97, (B, ctx)), past_key_values=cache, use_cache=True)
        pruned(torch.randint(0, 97, (B, 1)), past_key_values=cache, use_cache=True)
    held = sum(t.numel() for layer in cache.layers for t in (layer.keys, layer.values))
    c = step_cost(shape, widths, B, 1, context=ctx, dtype_bytes=4)
    assert c.kv_bytes == held * 4  # after the step the cache holds exactly the positions it attended over
    ids = torch.randint(0, 97, (B, 1))
    assert _linear_flops(pruned, ids, use_cache=False) == step_cost(shape, widths, B, 1, head_tokens=1).flops - sum(
        4 * B * kv * shape.heads_per_group * shape.head_dim for _, kv in widths)


def test_ideal_speedup_uses_the_binding_resource():
    shape, dense, pruned = _pruned_model()
    d = step_cost(shape, layer_widths(dense.config), 1, 1, context=64, head_tokens=1)
    p = step_cost(shape, layer_widths(pruned.config), 1, 1, context=64, head_tokens=1)
    assert ideal_speedup(d, p, "decode") == d.bytes / p.bytes > 1
    d, p = (step_cost(shape, layer_widths(m.config), 1, 256) for m in (dense, pruned))
    assert ideal_speedup(d, p, "prefill") == d.flops / p.flops > 1
    with pytest.raises(ValueError, match="prefill or decode"):
        ideal_speedup(d, p, "train")
