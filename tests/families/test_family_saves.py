"""Every family pruned per layer, saved and reloaded: greenprune_<type> with its own modeling code (remote code
and after `import greenprune`), each family feature kept (tiny random models of each family's config class)."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

import greenprune  # noqa: F401  registers the per-layer model types
from greenprune.families import FAMILIES, PER_LAYER_PREFIX, family_for, shape_of
from greenprune.modelio import modeling_greenprune
from greenprune.planning.plan import LayerPlan, PruningPlan
from greenprune.pruning.prune import prune_model

COMMON = dict(vocab_size=101, hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
              num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
CONFIGS = {
    "llama": lambda: FAMILIES["llama"] and __import__("transformers").LlamaConfig(**COMMON),
    "mistral-window": lambda: MistralConfig(**COMMON, sliding_window=5),
    "qwen2": lambda: Qwen2Config(**COMMON),
}
SEQ = 24  # longer than every sliding window above


def _model(kind, seed=0):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(CONFIGS[kind]()).double().eval()
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


def test_sliding_window_survives_a_per_layer_save(saved):
    """Logits past the window: the per-layer Mistral attends within its window as the dense model does (the
    window matters here: the same weights without it give other logits)."""
    kind, m, pruned, d, x, dense = saved
    if kind != "mistral-window":
        pytest.skip("no sliding window")
    m.config.sliding_window = None
    with torch.no_grad():
        assert not torch.allclose(m(x).logits[:, 6:], dense[:, 6:], atol=1e-4)
    m.config.sliding_window = 5
    reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    assert reloaded.config.sliding_window == 5
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits[:, 6:], dense[:, 6:], rtol=0, atol=1e-10)


def test_qwen2_qkv_biases_survive_a_per_layer_save(saved):
    kind, m, pruned, d, x, dense = saved
    if kind != "qwen2":
        pytest.skip("no q/k/v biases")
    attn = family_for(pruned).layers(pruned)[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None
    assert attn.k_proj.bias.shape[0] == 1 * shape_of(m).head_dim  # one KV group left in layer 0
    assert attn.k_proj.bias.abs().sum() > 0


def test_plain_transformers_loads_every_per_layer_save_without_greenprune(saves):
    """In a fresh interpreter that never imports greenprune: trust_remote_code loads each save from its own
    copy of the modeling code with identical logits; without it, transformers says to pass trust_remote_code
    (not to upgrade; interactively it asks)."""
    dirs = [str(d) for _, _, d, _, _ in saves.values()]
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
