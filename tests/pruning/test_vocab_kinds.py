"""Vocabulary pruning for each tokenizer kind the families use, with real tokenizer files built here:
SentencePiece-style BPE with byte fallback (Gemma) and tiktoken-style byte-level BPE with a split regex and
ignore_merges (Llama 3); byte-level BPE (GPT-2 / SmolLM / Qwen) is tests/pruning/test_vocab.py. Also: every
eos id of a Llama-3 style generation_config survives and still stops generation, and padded vocabularies."""
import json
import random

import numpy as np
import pytest
import torch
from helpers import tiny_model
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, GenerationConfig, TokenizersBackend

from greenprune.errors import GreenpruneError
from greenprune.families import shape_of
from greenprune.planning.plan import LayerPlan, PruningPlan
from greenprune.pruning.prune import prune_model
from greenprune.pruning.vocab import (choose_vocabulary, close_vocabulary, missing_bytes, model_token_ids, prune_tokenizer,
                                      token_counts)

TRAIN = [
    "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n",
    "for item in items:\n    if item.name.startswith('_'):\n        continue\n    print(item)\n",
    "class Parser:\n    def __init__(self, text):\n        self.text = text\n        self.pos = 0\n",
    "import os, sys\nreturn os.path.join(base, name) if name else base\n",
] * 20
KEEP = TRAIN[:2]
# every byte value: the C0 controls, DEL, Latin-1 (two-byte UTF-8), and lead bytes E0..F4 of longer code points
ALL_BYTES = "".join(chr(c) for c in range(0x80)) + "é\u00ff\u0800\uffff\U00010000\U00040000\U00080000\U0010ffff"
FOREIGN = ["Le cœur a ses raisons 🤔", "数据 \x04\x06\x13 \U00040001", "\t\r\n  x\u200b", ALL_BYTES]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _random_texts(n, seed=0):
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x4E00, 0x9FFF), (0x1F300, 0x1F64F), (0x40000, 0x4FFFF)]
    return ["".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def _gemma_like():
    """Gemma's layout: spaces normalised to '\u2581', BPE with byte_fallback over <0x00>..<0xFF> vocabulary
    entries, <unk>/<bos>/<eos> and turn markers, decoder Replace + ByteFallback + Fuse."""
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trained.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trained.train_from_iterator(TRAIN, trainer=trainers.BpeTrainer(vocab_size=400, show_progress=False))
    spec = json.loads(trained.to_str())
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    spec["model"].update(vocab=vocab, byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    spec["added_tokens"] = [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t in specials]
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return TokenizersBackend(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template="{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                      "{% endfor %}")


def _llama3_like():
    """Llama 3's layout (tiktoken converted): a split regex then byte-level without its own regex, BPE with
    ignore_merges, <|begin_of_text|> prepended, several eos (<|end_of_text|>, <|eot_id|>) at the end."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(TRAIN, trainer=trainers.BpeTrainer(
        vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    spec = json.loads(backend.to_str())
    spec["model"]["ignore_merges"] = True
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                                "<|end_header_id|>"])
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
    return TokenizersBackend(
        tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        chat_template="{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                      "{{ m['content'] }}<|eot_id|>{% endfor %}")


def _gemma_gguf_like():
    """Gemma as transformers converts it from GGUF: a Unigram model (pieces with scores) with byte fallback."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    trained = Tokenizer(models.Unigram())
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trained.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    trained.train_from_iterator(TRAIN, trainer=trainers.UnigramTrainer(
        vocab_size=300, special_tokens=specials, unk_token="<unk>", show_progress=False))
    spec = json.loads(trained.to_str())
    pieces = spec["model"]["vocab"]
    n = len(specials)
    pieces[n:n] = [[f"<0x{b:02X}>", 0.0] for b in range(256)]
    spec["model"].update(vocab=pieces, byte_fallback=True, unk_id=specials.index("<unk>"))
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, t in enumerate(specials)]
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return TokenizersBackend(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template="{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                      "{% endfor %}")


KINDS = {"gemma_byte_fallback": _gemma_like, "gemma_gguf_unigram": _gemma_gguf_like, "llama3_tiktoken": _llama3_like}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request):
    tok = KINDS[request.param]()
    counts = token_counts(tok, KEEP, len(tok))
    kept = close_vocabulary(tok, np.flatnonzero(counts).tolist())
    return request.param, tok, kept, prune_tokenizer(tok, kept)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_prunes_and_any_text_round_trips_without_unk(kind):
    name, tok, kept, pruned = kind
    assert len(pruned) == len(kept) < len(tok) - 30
    unk = pruned.unk_token_id
    for text in FOREIGN + _random_texts(150) + TRAIN[2:4]:
        new = _ids(pruned, text)
        assert unk is None or unk not in new, (name, text)
        assert pruned.decode(new) == tok.decode(_ids(tok, text)) == text, (name, text)
    for b in range(256):  # every byte value is a token of its own where it appears alone
        piece = bytes([b]).decode("latin-1") if b < 0x80 else None
        if piece is not None:
            assert pruned.decode(_ids(pruned, piece)) == piece


def test_in_corpus_text_exact_specials_and_chat_template(kind, tmp_path):
    name, tok, kept, pruned = kind
    kept = np.asarray(kept)
    for text in KEEP:
        assert kept[_ids(pruned, text)].tolist() == _ids(tok, text)
    assert kept[pruned("def f")["input_ids"]].tolist() == tok("def f")["input_ids"]  # the BOS template
    for attr in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        if getattr(tok, attr) is not None:
            assert kept[getattr(pruned, attr)] == getattr(tok, attr), attr
    msgs = [{"role": "user", "content": "for item in items:"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert pruned.apply_chat_template(msgs, tokenize=False) == text
    new, orig = kept[_ids(pruned, text)].tolist(), _ids(tok, text)
    assert pruned.decode(_ids(pruned, text)) == text
    added = set(tok.added_tokens_decoder)
    turn = [i for i in orig if i in added]  # the turn markers, at their remapped ids
    assert len(turn) >= 2 and [i for i in new if i in added] == turn
    pruned.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == pruned.get_vocab() and _ids(again, FOREIGN[1]) == _ids(pruned, FOREIGN[1])


def test_byte_fallback_keeps_all_256_byte_tokens():
    tok = _gemma_like()
    pruned = prune_tokenizer(tok, close_vocabulary(tok, []))
    assert all(f"<0x{b:02X}>" in pruned.get_vocab() for b in range(256))
    assert missing_bytes(tok) == missing_bytes(pruned) == [] == missing_bytes(_llama3_like())
    assert pruned.convert_ids_to_tokens(_ids(pruned, "\x04")) == ["<0x04>"]
    # single characters are not needed under byte fallback: an unused one is spelled in bytes, losslessly
    assert tok.convert_tokens_to_ids("q") is not None and "q" not in pruned.get_vocab()
    assert pruned.convert_ids_to_tokens(_ids(pruned, "q")) == ["<0x71>"] and pruned.decode(_ids(pruned, "q")) == "q"
    assert pruned.decode(_ids(pruned, "\U00040000")) == "\U00040000"


def _vocab_plan(model, kept):
    shape = shape_of(model)
    cfg = model.config
    layers = tuple(LayerPlan(i, cfg.intermediate_size, cfg.num_key_value_heads,
                             tuple(range(cfg.intermediate_size)), tuple(range(cfg.num_key_value_heads)))
                   for i in range(cfg.num_hidden_layers))
    return PruningPlan(shape=shape, layers=layers, vocab_keep=tuple(kept))


def test_every_generation_config_eos_is_kept_remapped_and_stops_generation():
    tok = _llama3_like()
    eot, eot_text, bos = (tok.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>", "<|begin_of_text|>"))
    model = tiny_model(vocab_size=len(tok), layers=2, hidden=32, ffn=24, heads=4, kv_heads=2)
    model.config.bos_token_id, model.config.eos_token_id = bos, eot  # the config names one eos ...
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[eot_text, eot])  # ... generation two
    kept = choose_vocabulary(tok, KEEP[:1], len(tok), keep_ids=model_token_ids(model))
    kept_set = set(kept)
    assert {eot, eot_text, bos} <= kept_set
    pruned = prune_model(model, _vocab_plan(model, kept))
    ptok = prune_tokenizer(tok, kept)
    new = {t: kept.index(t) for t in (eot, eot_text)}
    assert pruned.generation_config.eos_token_id == [new[eot_text], new[eot]]
    assert pruned.config.eos_token_id == new[eot] == ptok.eos_token_id
    prompt = torch.tensor([ptok("def read")["input_ids"]])
    for stop in new.values():  # greedy decoding forced onto each eos: generation ends right there
        out = pruned.generate(prompt, max_new_tokens=6, do_sample=False,
                              prefix_allowed_tokens_fn=lambda b, ids, s=stop: [s])
        assert out.shape[1] == prompt.shape[1] + 1 and out[0, -1].item() == stop
    free = pruned.generate(prompt, max_new_tokens=6, do_sample=False,
                           prefix_allowed_tokens_fn=lambda b, ids: [3])  # not an eos: runs to max_new_tokens
    assert free.shape[1] == prompt.shape[1] + 6


def test_dropping_an_eos_id_is_an_error():
    tok = _llama3_like()
    model = tiny_model(vocab_size=len(tok), layers=1, hidden=32, ffn=24, heads=4, kv_heads=2)
    eot_text = tok.convert_tokens_to_ids("<|end_of_text|>")
    model.generation_config = GenerationConfig(eos_token_id=[eot_text])
    kept = [i for i in range(len(tok)) if i != eot_text]
    with pytest.raises(GreenpruneError, match=f"drops eos token id {eot_text}"):
        prune_model(model, _vocab_plan(model, kept))


def test_padded_vocabulary_rows_past_the_tokenizer_are_dropped():
    tok = _gemma_like()
    rows = len(tok) + 64  # embedding padded to a multiple, as many checkpoints are
    mass = np.zeros(rows)
    mass[len(tok):] = 1.0  # even if the dense model put mass on the padding rows
    kept = choose_vocabulary(tok, KEEP, rows, token_mass=mass, extra=100, max_removed=rows - len(tok) + 10)
    assert max(kept) < len(tok) and len(kept) >= len(tok) - 10
    model = tiny_model(vocab_size=rows, layers=1, hidden=32, ffn=24, heads=4, kv_heads=2)
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id)
    kept = choose_vocabulary(tok, KEEP, rows, extra=0, keep_ids=model_token_ids(model))
    pruned = prune_model(model, _vocab_plan(model, kept))
    ids = torch.tensor([_ids(tok, KEEP[0])])
    new_ids = torch.tensor([_ids(prune_tokenizer(tok, kept), KEEP[0])])
    assert pruned.get_input_embeddings().weight.shape[0] == len(kept) < len(tok)
    dense_logits = model(ids).logits[0][:, kept]
    assert torch.allclose(pruned(new_ids).logits[0], dense_logits, atol=1e-5)
