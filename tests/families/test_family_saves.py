"""Every family pruned per layer, saved and reloaded: greenprune_<type> with its own modeling code (remote code
and after `import greenprune`), each family feature kept (tiny random models of each family's config class)."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GraniteConfig, LlamaConfig,
                          MistralConfig, Phi3Config, Qwen2Config, Qwen3Config, Starcoder2Config)

import greenprune  # noqa: F401  registers the per-layer model types
from greenprune.families import FAMILIES, PER_LAYER_PREFIX, family_for, shape_of
from greenprune.modelio import modeling_greenprune
from greenprune.planning.plan import LayerPlan, PruningPlan, identity_plan
from greenprune.pruning.prune import prune_model

COMMON = dict(vocab_size=101, hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
              num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)
GEMMA = dict(COMMON, head_dim=12, query_pre_attn_scalar=12, sliding_window=5, tie_word_embeddings=True,
             layer_types=["sliding_attention", "full_attention", "sliding_attention"])
CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "mistral-window": lambda: MistralConfig(**COMMON, sliding_window=5),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=16),  # head_dim unlike hidden / heads (8)
    "gemma3_text": lambda: Gemma3TextConfig(**GEMMA, final_logit_softcapping=3.0),
    "gemma2": lambda: Gemma2Config(**GEMMA, attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
    "phi3": lambda: Phi3Config(**COMMON),
    "starcoder2": lambda: Starcoder2Config(**COMMON, use_bias=True),
    "granite": lambda: GraniteConfig(**COMMON, embedding_multiplier=3.0, residual_multiplier=0.5,
                                     attention_multiplier=0.2, logits_scaling=2.0),
}
SEQ = 24  # longer than every sliding window above


def _model(kind, seed=0, config=None):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config or CONFIGS[kind](), dtype=torch.float64).eval()
    with torch.no_grad():  # zero-initialised biases and norms would hide a lost feature: make them matter
        for n, p in m.named_parameters():
            if n.endswith(".bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def _zero_and_remove(m):
    """Zero the consumer columns of 8 FFN channels and one KV group of layer 0, and a plan that removes exactly
    those from layer 0 and keeps the other layers whole: per-layer widths that change nothing."""
    fam, shape = family_for(m), shape_of(m)
    layer = fam.layers(m)[0]
    F, G = shape.intermediate_size, shape.num_key_value_heads
    gone_ffn, gone_kv = list(range(8, 16)), [0]
    with torch.no_grad():
        fam.ffn_out(layer).weight[:, gone_ffn] = 0
        fam.attn_out(layer).weight[:, shape.query_channels(gone_kv)] = 0
    keep_ffn = tuple(j for j in range(F) if j not in gone_ffn)
    keep_kv = tuple(g for g in range(G) if g not in gone_kv)
    layers = [LayerPlan(0, len(keep_ffn), len(keep_kv), keep_ffn, keep_kv)]
    layers += [LayerPlan(i, F, G, tuple(range(F)), tuple(range(G))) for i in range(1, shape.num_hidden_layers)]
    return PruningPlan(shape, tuple(layers))


@pytest.fixture(scope="module")
def saves(tmp_path_factory):
    """kind -> (dense model, per-layer pruned model, its save, inputs, dense logits), every family once."""
    out = {}
    for kind in sorted(CONFIGS):
        m = _model(kind)
        plan = _zero_and_remove(m)
        x = torch.randint(0, 101, (2, SEQ), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            dense = m(x).logits
        pruned = prune_model(m, plan)
        d = tmp_path_factory.mktemp(kind) / "pruned"
        pruned.save_pretrained(d)
        torch.save(x, d.parent / "x.pt")
        with torch.no_grad():
            torch.save(pruned(x).logits, d.parent / "want.pt")
        out[kind] = (m, pruned, d, x, dense)
    return out


@pytest.fixture(params=sorted(CONFIGS))
def saved(request, saves):
    return (request.param, *saves[request.param])


def test_every_family_is_covered_here():
    # mixture-of-experts families have no per-layer save (refused): test_moe.py covers them
    assert {family_for(CONFIGS[k]()).name for k in CONFIGS} == {f.name for f in FAMILIES.values() if not f.moe}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_shape_counts_every_parameter(kind):
    m = _model(kind)
    assert shape_of(m).dense_params == sum(p.numel() for p in m.parameters())


def test_removing_zeroed_channels_per_layer_changes_nothing(saved):
    kind, m, pruned, d, x, dense = saved
    assert pruned.config.model_type == PER_LAYER_PREFIX + m.config.model_type
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, dense, rtol=0, atol=1e-10)


def test_per_layer_save_reloads_after_import_greenprune(saved):
    kind, m, pruned, d, x, dense = saved
    cfg = json.loads((d / "config.json").read_text())
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    assert (d / modeling_greenprune.CODE_FILE).read_text() == open(modeling_greenprune.__file__).read()
    local = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    assert type(local).__module__ == modeling_greenprune.__name__
    with torch.no_grad():
        assert torch.equal(local(x).logits, pruned(x).logits)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_a_plan_that_removes_nothing_reproduces_the_dense_logits(kind):
    m = _model(kind)
    x = torch.randint(0, 101, (1, SEQ))
    p = prune_model(m, identity_plan(shape_of(m)))
    assert p.config.model_type == m.config.model_type  # uniform: the family's own plain checkpoint
    with torch.no_grad():
        assert torch.equal(m(x).logits, p(x).logits)


def test_family_logits_from_hidden_states_are_the_models_own(saved):
    """What the evaluation and the KL computations take from final hidden states: the model's logits, Granite's
    scaling and Gemma's soft-capping included (the bare LM head would be a silent wrong distribution), for the
    dense model and its per-layer save."""
    kind, m, pruned, d, x, dense = saved
    for model, want in ((m, dense), (pruned, None)):
        fam = family_for(model)
        with torch.no_grad():
            h = fam.backbone(model)(x, use_cache=False).last_hidden_state
            want = model(x).logits if want is None else want
            torch.testing.assert_close(fam.logits(model, h), want.float(), rtol=1e-6, atol=1e-6)
            if kind in ("granite", "gemma2", "gemma3_text"):  # the head alone is not the distribution here
                assert not torch.allclose(fam.lm_head(model)(h).float(), want.float(), atol=1e-3)


def _logits(model, x, **config_changes):
    """Logits with some config fields changed for one forward (to show that a feature is active)."""
    old = {k: getattr(model.config, k) for k in config_changes}
    for k, v in config_changes.items():
        setattr(model.config, k, v)
    try:
        with torch.no_grad():
            return model(x).logits
    finally:
        for k, v in old.items():
            setattr(model.config, k, v)


def test_sliding_window_survives_a_per_layer_save(saves):
    """Logits past the window: the per-layer Mistral attends within its window as the dense model does (the
    window matters here: the same weights without it give other logits)."""
    m, pruned, d, x, dense = saves["mistral-window"]
    assert not torch.allclose(_logits(m, x, sliding_window=None)[:, 6:], dense[:, 6:], atol=1e-4)
    reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    assert reloaded.config.sliding_window == 5
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits[:, 6:], dense[:, 6:], rtol=0, atol=1e-10)


def test_qwen2_qkv_biases_survive_a_per_layer_save(saves):
    m, pruned, d, x, dense = saves["qwen2"]
    attn = family_for(pruned).layers(pruned)[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None
    assert attn.k_proj.bias.shape[0] == 1 * shape_of(m).head_dim  # one KV group left in layer 0
    assert attn.k_proj.bias.abs().sum() > 0


def test_qwen3_qk_norms_and_head_dim_survive(saves):
    m, pruned, d, x, dense = saves["qwen3"]
    src, got = m.model.layers[0].self_attn, pruned.model.layers[0].self_attn
    assert pruned.config.head_dim == 16 and got.q_proj.out_features == 3 * 16  # 3 query heads of one group
    assert torch.equal(got.q_norm.weight, src.q_norm.weight) and torch.equal(got.k_norm.weight, src.k_norm.weight)
    assert not torch.allclose(src.q_norm.weight, torch.ones_like(src.q_norm.weight))  # the norms matter here


@pytest.mark.parametrize("kind", ["gemma3_text", "gemma2"])
def test_gemma_soft_capping_layer_pattern_and_scaled_embedding_survive(saves, kind):
    m, pruned, d, x, dense = saves[kind]
    reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    assert reloaded.config.final_logit_softcapping == 3.0 and dense.abs().max() < 3.0
    assert not torch.allclose(_logits(m, x, final_logit_softcapping=None), dense, atol=1e-4)  # capping is active
    if kind == "gemma2":
        assert reloaded.config.attn_logit_softcapping == 2.0
        assert all(layer.self_attn.attn_logit_softcapping == 2.0 for layer in reloaded.model.layers)
    assert reloaded.config.layer_types == m.config.layer_types
    assert not torch.allclose(_logits(m, x, sliding_window=64), dense, atol=1e-6)  # the window matters
    assert [layer.self_attn.sliding_window for layer in reloaded.model.layers] == [5, None, 5]
    assert torch.equal(reloaded.model.embed_tokens.embed_scale, m.model.embed_tokens.embed_scale)
    assert len(reloaded.model.layers[0].state_dict()) - len(reloaded.model.layers[0].self_attn.state_dict()) >= 7
    # a plan that drops the global layer keeps the pattern of the layers it keeps
    shape = shape_of(m)
    whole = lambda i: LayerPlan(i, shape.intermediate_size, shape.num_key_value_heads,  # noqa: E731
                                tuple(range(shape.intermediate_size)), tuple(range(shape.num_key_value_heads)))
    dropped = prune_model(m, PruningPlan(shape, (whole(0), whole(2))))
    assert dropped.config.layer_types == ["sliding_attention", "sliding_attention"]


def test_starcoder2_biases_and_layernorms_survive(saves):
    m, pruned, d, x, dense = saves["starcoder2"]
    src, got = m.model.layers[0], pruned.model.layers[0]
    assert got.mlp.c_fc.bias.shape[0] == 32 and torch.equal(got.mlp.c_proj.bias, src.mlp.c_proj.bias)
    assert torch.equal(got.self_attn.o_proj.bias, src.self_attn.o_proj.bias)
    assert torch.equal(got.input_layernorm.bias, src.input_layernorm.bias) and got.input_layernorm.bias.abs().sum() > 0


def test_phi3_fused_projections_are_sliced_per_block(saves):
    m, pruned, d, x, dense = saves["phi3"]
    got, shape = pruned.model.layers[0], shape_of(m)
    assert got.self_attn.qkv_proj.out_features == (3 + 2 * 1) * shape.head_dim  # 3 query heads, 1 k and 1 v head
    assert got.mlp.gate_up_proj.out_features == 2 * 32
    src = m.model.layers[0].mlp.gate_up_proj.weight
    assert torch.equal(got.mlp.gate_up_proj.weight[32], src[40])  # up row of channel 0 after the 32 gate rows


def test_granite_multipliers_survive(saves):
    m, pruned, d, x, dense = saves["granite"]
    reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    for k, v in dict(embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0).items():
        assert getattr(reloaded.config, k) == v
        plain = _model("granite", config=GraniteConfig(**{**reloaded.config.to_dict(), k: 1.0}))
        with torch.no_grad():  # the same weights with this multiplier at 1: other logits, so it is active
            assert not torch.allclose(plain(x).logits, dense, atol=1e-6), k


REMOTE = ("qwen2", "gemma3_text", "phi3")  # a fresh interpreter per run costs seconds: three layouts unlike Llama's


def test_plain_transformers_loads_per_layer_saves_without_greenprune(saves):
    """In a fresh interpreter that never imports greenprune: trust_remote_code loads each save from its own
    copy of the modeling code with identical logits; without it, transformers says to pass trust_remote_code
    (not to upgrade; interactively it asks)."""
    dirs = [str(saves[k][2]) for k in REMOTE]
    code = f"""
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
for d in {dirs!r}:
    try:
        AutoModelForCausalLM.from_pretrained(d, trust_remote_code=False)
        sys.exit("loaded without trust_remote_code: " + d)
    except ValueError as e:
        assert "trust_remote_code" in str(e), e
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, trust_remote_code=True).eval()
    assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
    p = Path(d).parent
    with torch.no_grad():
        assert torch.equal(m(torch.load(p / "x.pt")).logits, torch.load(p / "want.pt")), d
assert "greenprune" not in sys.modules
print("ok", len({dirs!r}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == f"ok {len(dirs)}", r.stderr[-3000:]


@pytest.mark.parametrize("kind", ["gemma3_text", "starcoder2", "phi3"])
def test_fused_swiglu_serving_refuses_other_mlps(saves, kind):
    """Gemma's gelu, StarCoder2's ungated and Phi-3's fused MLPs are not what the fused SwiGLU op computes:
    refused in one line rather than served wrong."""
    from greenprune.deploy.serving import fuse_for_serving
    from greenprune.errors import GreenpruneError

    with pytest.raises(GreenpruneError, match="fused SwiGLU op needs a SiLU-gated MLP"):
        fuse_for_serving(saves[kind][1])


@pytest.mark.parametrize("kind", ["qwen2", "gemma3_text"])
def test_cached_generation_with_per_layer_kv_heads_matches_the_dense_model(saves, kind):
    """The KV cache holds a different number of heads per layer (and Gemma's sliding layers past the window)."""
    m, pruned, d, x, dense = saves[kind]
    prompt = x[:1, :8]
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert torch.equal(m.generate(prompt, **kw), pruned.generate(prompt, **kw))


def test_export_refuses_per_layer_saves_its_layouts_cannot_hold(saves):
    """A per-layer Qwen2 or Gemma save is not a Llama / DeciLM checkpoint, nor is a windowed Mistral: refused in
    one line naming what is supported (the widest layer's globals were read as every layer's before)."""
    from greenprune.deploy.export import read_layout
    from greenprune.errors import GreenpruneError

    for kind in ("qwen2", "gemma3_text"):
        with pytest.raises(GreenpruneError, match=rf"cannot export model_type 'greenprune_{kind}' as Llama / DeciLM \(supported: .*greenprune_llama"):
            read_layout(saves[kind][2])
    with pytest.raises(GreenpruneError, match="sliding-window attention"):
        read_layout(saves["mistral-window"][2])
    cfg, layers, _ = read_layout(saves["llama"][2])
    assert [l.ffn_width for l in layers] == [32, 40, 40] and [l.kv_heads for l in layers] == [1, 2, 2]
