"""Physical pruning: exactness, parameter arithmetic, GQA slicing, derived configs, save/reload."""
import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from greenprune.families import shape_of
import greenprune  # noqa: F401  (registers greenprune_llama)
from greenprune.errors import GreenpruneError
from greenprune.modelio.per_layer import per_layer_classes
from greenprune.planning.plan import LayerPlan, PruningPlan, identity_plan
from greenprune.families import ModelShape
from greenprune.pruning.prune import prune_model

from helpers import tiny_model


def random_plan(shape: ModelShape, rng: random.Random, uniform=False, vocab=True, drop=True) -> PruningPlan:
    layers = []
    w0, g0 = rng.randint(1, shape.intermediate_size), rng.randint(1, shape.num_key_value_heads)
    for i in range(shape.num_hidden_layers):
        if drop and i > 0 and rng.random() < 0.3:
            continue
        w, g = (w0, g0) if uniform else (rng.randint(1, shape.intermediate_size), rng.randint(1, shape.num_key_value_heads))
        layers.append(LayerPlan(i, w, g, tuple(sorted(rng.sample(range(shape.intermediate_size), w))),
                                tuple(sorted(rng.sample(range(shape.num_key_value_heads), g)))))
    # the eos id (2 in tiny_config) stays: a plan dropping it is refused
    vk = tuple(sorted({2, *rng.sample(range(shape.vocab_size), shape.vocab_size // 2)})) if vocab else None
    return PruningPlan(shape, tuple(layers), vk)


def logits(m, x):
    with torch.no_grad():
        return m(x).logits


@pytest.mark.parametrize("tie", [True, False])
def test_identity_plan_reproduces_dense_logits_exactly(tie):
    m = tiny_model(tie_word_embeddings=tie)
    x = torch.randint(0, 97, (2, 13))
    p = prune_model(m, identity_plan(shape_of(m.config)))
    assert torch.equal(logits(p, x), logits(m, x))
    assert type(p) is LlamaForCausalLM


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("uniform", [True, False])
def test_param_arithmetic_matches_real_pruned_models(seed, uniform):
    kw = dict(attention_bias=seed % 2 == 1, mlp_bias=seed == 2, tie_word_embeddings=seed != 3)
    m = tiny_model(seed=seed, layers=4, **kw)
    shape = shape_of(m.config)
    assert shape.dense_params == sum(p.numel() for p in m.parameters())
    plan = random_plan(shape, random.Random(seed), uniform=uniform)
    pm = prune_model(m, plan)
    assert sum(p.numel() for p in pm.parameters()) == plan.params()
    assert (type(pm) is per_layer_classes("llama")[1]) == (not plan.is_uniform)


def test_removing_zero_channels_changes_nothing():
    m = tiny_model(layers=3, ffn=40, heads=6, kv_heads=3)
    shape = shape_of(m.config)
    d, r = shape.head_dim, shape.heads_per_group
    dead_ffn = {0: [1, 5, 7, 30], 1: list(range(0, 40, 3)), 2: [39]}
    dead_kv = {0: [1], 2: [0, 2]}
    with torch.no_grad():
        for i, chans in dead_ffn.items():
            m.model.layers[i].mlp.down_proj.weight[:, chans] = 0
        for i, groups in dead_kv.items():
            for g in groups:  # a KV group's query heads write nothing through o_proj
                m.model.layers[i].self_attn.o_proj.weight[:, g * r * d : (g + 1) * r * d] = 0
    layers = tuple(
        LayerPlan(i, 40 - len(dead_ffn[i]), 3 - len(dead_kv.get(i, [])),
                  tuple(c for c in range(40) if c not in dead_ffn[i]),
                  tuple(g for g in range(3) if g not in dead_kv.get(i, [])))
        for i in range(3)
    )
    pm = prune_model(m, PruningPlan(shape, layers))
    x = torch.randint(0, 97, (3, 17))
    # fp32: only the summation order of the surviving terms differs
    torch.testing.assert_close(logits(pm, x), logits(m, x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in pm.parameters()) < shape.dense_params


def test_vocab_pruning_keeps_rows_of_kept_tokens():
    m = tiny_model(tie_word_embeddings=False)
    shape = shape_of(m.config)
    keep = tuple(sorted({2, *range(0, 97, 3)}))  # with the eos id
    pm = prune_model(m, PruningPlan(shape, identity_plan(shape).layers, keep))
    x_old = torch.tensor([list(keep[:11])])
    x_new = torch.arange(11)[None]
    # the pruned model's logits are the dense logits restricted to the kept ids
    assert torch.allclose(logits(pm, x_new), logits(m, x_old)[..., list(keep)], atol=1e-6)  # matmul widths differ
    assert pm.config.vocab_size == len(keep)
    assert pm.config.bos_token_id == keep.index(1) if 1 in keep else pm.config.bos_token_id is None
    assert pm.config.eos_token_id == pm.generation_config.eos_token_id == keep.index(2)


def test_dropped_layers_and_layer_idx_renumbered_for_kv_cache():
    m = tiny_model(layers=4)
    shape = shape_of(m.config)
    full = identity_plan(shape).layers
    pm = prune_model(m, PruningPlan(shape, (full[0], full[2], full[3])))
    assert [l.self_attn.layer_idx for l in pm.model.layers] == [0, 1, 2]
    x = torch.randint(0, 97, (1, 9))
    out = pm.generate(x, max_new_tokens=5, do_sample=False)  # uses the KV cache
    assert out.shape == (1, 14)


@pytest.mark.parametrize("uniform", [True, False])
def test_saved_pruned_model_reloads_with_identical_logits(tmp_path, uniform):
    m = tiny_model(layers=4)
    shape = shape_of(m.config)
    plan = random_plan(shape, random.Random(7), uniform=uniform, drop=False)
    assert plan.is_uniform == uniform
    pm = prune_model(m, plan)
    pm.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == ("llama" if uniform else "greenprune_llama")
    re = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(re) is type(pm)
    x = torch.randint(0, plan.vocab_size, (2, 11))
    assert torch.equal(logits(re, x), logits(pm, x))


def test_source_model_unchanged():
    m = tiny_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    shape = shape_of(m.config)
    prune_model(m, random_plan(shape, random.Random(1)))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.config.vocab_size == 97 and m.config.num_hidden_layers == 3


def test_plan_for_another_shape_is_refused():
    m = tiny_model()
    other = shape_of(tiny_model(ffn=64).config)
    with pytest.raises(GreenpruneError, match="different model shape"):
        prune_model(m, identity_plan(other))


def test_transformers_llama_does_not_honour_per_layer_config():
    """Why greenprune registers its own model type: the pinned Llama modeling rejects per-layer widths."""
    from helpers import tiny_config

    cfg = tiny_config(per_layer_config={1: {"intermediate_size": 16, "num_key_value_heads": 1}})
    with pytest.raises(Exception, match="per-layer"):
        LlamaForCausalLM(cfg)
