"""Vocabulary pruning of BPE tokenizers (Flab-Pruner style).

Keep the tokens a corpus uses, plus everything BPE needs to stay lossless on ANY text:
special/added tokens, the base alphabet (the 256 byte-level symbols, single-character tokens and
byte-fallback <0xXX> tokens) and, recursively, both parts of every kept merged token. The pruned
tokenizer renumbers the kept tokens densely: new id i <-> original id kept_ids[i].

Why this is exact: BPE applies, at each step, the best-ranked applicable merge. Every merge the
original applies on a word produces an intermediate or final token; if those are kept (closure),
the merge survives the filter, stays the best-ranked applicable one, and the run is unchanged.
"""
from __future__ import annotations

import copy
import functools
import json
import weakref
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ..errors import GreenpruneError
from ..families import ModelShape

_BATCH = 256  # texts per encode_batch call


def _bpe_json(tokenizer) -> dict:
    """The backend tokenizer as a JSON dict (a fresh copy: editing it never touches the tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GreenpruneError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer")
    spec = json.loads(backend.to_str())
    if spec["model"].get("type") not in ("BPE", "Unigram"):
        raise GreenpruneError(f"vocabulary pruning needs a BPE or Unigram tokenizer, not {spec['model'].get('type')}")
    return spec


def _vocab(model: dict) -> dict[str, int]:
    """token -> id: BPE stores a dict, Unigram a list of [piece, score] whose index is the id."""
    if model["type"] == "Unigram":
        return {piece: i for i, (piece, _) in enumerate(model["vocab"])}
    return model["vocab"]


def _pair(merge) -> tuple[str, str]:
    """A merge as (a, b): tokenizers stores [a, b] lists (new format) or "a b" strings (legacy)."""
    parts = merge.split(" ") if isinstance(merge, str) else merge
    if len(parts) != 2:
        raise GreenpruneError(f"malformed BPE merge {merge!r}")
    return parts[0], parts[1]


def _id_to_token(spec: dict) -> dict[int, str]:
    table = {i: t for t, i in _vocab(spec["model"]).items()}
    table.update({a["id"]: a["content"] for a in spec["added_tokens"]})
    return table


class TokenizerSpec:
    """A fast tokenizer's tokenizer.json, parsed once, with the tables the vocabulary stage reads; never edited
    (prune_tokenizer edits a fresh copy). Gemma 3's is 33 MB: 2.1 s to serialise and parse, 1.2 s for the merge
    table, each time a stage needed them (18 parses in one job before this cache)."""

    def __init__(self, spec: dict):
        self.json, self.model = spec, spec["model"]
        self.vocab = _vocab(self.model)
        self.id_to_tok = _id_to_token(spec)
        self._parts: Optional[dict[str, list[tuple[str, str]]]] = None

    @functools.cached_property
    def base_ids(self) -> frozenset[int]:
        """What every vocabulary keeps: specials and added tokens, the model's unk token, tokens the post-processor
        inserts, and the base alphabet: byte-fallback tokens and single characters (all byte-level symbols). Under
        byte fallback with all 256 byte tokens a character without a token is spelled in bytes, so single
        characters are kept only when used (Gemma 3 270M has 19,227 of them: 7.3% of its 262,144 rows)."""
        model, vocab = self.model, self.vocab
        kept = {a["id"] for a in self.json["added_tokens"]}
        extra = {model.get("unk_token")} | _post_processor_tokens(self.json.get("post_processor"))
        if model["type"] == "Unigram" and model.get("unk_id") is not None:
            kept.add(int(model["unk_id"]))
        kept.update(vocab[t] for t in extra if t in vocab)
        byte_ids = [i for t, i in vocab.items() if len(t) == 6 and t.startswith("<0x") and t.endswith(">")]
        kept.update(byte_ids)
        if not (model.get("byte_fallback") and len(byte_ids) == 256):
            kept.update(i for t, i in vocab.items() if len(t) == 1)
        return frozenset(kept)

    @property
    def parts(self) -> dict[str, list[tuple[str, str]]]:
        """Merged token -> the (a, b) merges that produce it."""
        if self._parts is None:
            self._parts = {}
            for merge in self.model.get("merges", ()):
                a, b = _pair(merge)
                self._parts.setdefault(a + b, []).append((a, b))
        return self._parts


_SPECS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tokenizer_spec(tokenizer) -> TokenizerSpec:
    """The tokenizer's parsed spec, cached per tokenizer object (re-parsed if tokens were added since)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not hasattr(backend, "get_vocab_size"):  # not a tokenizers-backed object: parsed each time, not cached
        return TokenizerSpec(_bpe_json(tokenizer))
    size = backend.get_vocab_size(with_added_tokens=True)
    cached = _SPECS.get(tokenizer)
    if cached is None or cached[0] != size:
        cached = (size, TokenizerSpec(_bpe_json(tokenizer)))
        _SPECS[tokenizer] = cached
    return cached[1]


def _post_processor_tokens(node, token_id: Callable[[str], int] | None = None) -> set[str]:
    """Tokens a post-processor inserts (TemplateProcessing, Bert/Roberta, Sequence); rewrite their ids if asked."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= _post_processor_tokens(item, token_id)
    elif isinstance(node, dict):
        for spec in (node.get("special_tokens") or {}).values():  # TemplateProcessing
            found.update(spec["tokens"])
            if token_id:
                spec["ids"] = [token_id(t) for t in spec["tokens"]]
        for key in ("cls", "sep"):  # BertProcessing / RobertaProcessing: [token, id]
            if isinstance(node.get(key), list) and len(node[key]) == 2:
                found.add(node[key][0])
                if token_id:
                    node[key][1] = token_id(node[key][0])
        for item in node.get("processors") or []:  # Sequence
            found |= _post_processor_tokens(item, token_id)
    return found


def _byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: the symbol standing for each byte value 0..255 in byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def missing_bytes(tokenizer) -> list[int]:
    """Byte values the tokenizer has no token for (byte-level symbol, or <0xXX> under byte fallback): text whose
    UTF-8 holds one becomes the unknown token there, in the dense tokenizer and in every pruned one alike.
    SmolLM2 lacks 21: 0x04 0x06 0x13 0x14 0x16 0x1D, 0xC0 0xC1 and 0xF5..0xFF (never in valid UTF-8), and the
    lead bytes 0xF1 0xF2 (U+40000..U+BFFFF, unassigned planes 4 to 11)."""
    ts = tokenizer_spec(tokenizer)
    spec, vocab = ts.json, ts.vocab
    fallback = bool(spec["model"].get("byte_fallback"))
    byte_level = '"ByteLevel"' in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    return [b for b, sym in enumerate(_byte_symbols())
            if not (fallback and f"<0x{b:02X}>" in vocab) and not (byte_level and sym in vocab)]


def token_counts(tokenizer, texts: Iterable[str], vocab_size: int) -> np.ndarray:
    """int64 counts[vocab_size] of the token ids the tokenizer produces on texts (no special tokens added)."""
    backend = tokenizer.backend_tokenizer
    if backend.padding is not None or backend.truncation is not None:
        from tokenizers import Tokenizer  # count every token of the raw text: no padding, no truncation

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_padding()
        backend.no_truncation()
    counts = np.zeros(vocab_size, dtype=np.int64)

    def flush(batch: list[str]) -> None:
        ids = [np.asarray(e.ids, dtype=np.int64) for e in backend.encode_batch(batch, add_special_tokens=False)]
        ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        if ids.size and ids.max() >= vocab_size:
            raise GreenpruneError(f"tokenizer produced id {int(ids.max())} >= vocab_size {vocab_size}")
        counts[:] += np.bincount(ids, minlength=vocab_size)

    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == _BATCH:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    return counts


def _close(ts: TokenizerSpec, candidate_ids: Iterable[int], closed: Optional[list[int]] = None) -> list[int]:
    """Sorted ids: the candidates, the base ids (TokenizerSpec.base_ids) and, recursively, both parts of every
    merged token among them. `closed`: a set already closed this way, extended by the candidates (only their
    parts are followed)."""
    kept: set[int] = set(ts.base_ids if closed is None else closed)
    _extend(ts, kept, list(kept) if closed is None else [])
    ids = list(candidate_ids)
    for i in ids:
        if int(i) != i or int(i) not in ts.id_to_tok:
            raise GreenpruneError(f"token id {i} is not in the vocabulary (size {len(ts.id_to_tok)})")
    _extend(ts, kept, [int(i) for i in ids])
    return sorted(kept)


def _extend(ts: TokenizerSpec, kept: set[int], ids: Iterable[int]) -> None:
    """Add `ids` to the closed set `kept` and, recursively, both parts of every merged token added. BPE reaches a
    merged token only through its merge, so its parts must stay; Unigram needs none (Viterbi's best segmentation
    over a subset that still holds it is unchanged) and has no merges."""
    vocab, id_to_tok, parts = ts.vocab, ts.id_to_tok, ts.parts
    stack = []
    for i in ids:
        if i not in kept:
            kept.add(i)
            stack.append(id_to_tok[i])
    while stack:
        for pair in parts.get(stack.pop(), ()):
            for t in pair:
                if t in vocab and vocab[t] not in kept:
                    kept.add(vocab[t])
                    stack.append(t)


def close_vocabulary(tokenizer, candidate_ids: Iterable[int]) -> list[int]:
    """Sorted original ids to keep: candidates + specials/added tokens + base alphabet, closed under merges."""
    return _close(tokenizer_spec(tokenizer), candidate_ids)


_TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id")


def model_token_ids(model) -> set[int]:
    """Every token id the model's config and generation_config name (bos/eos/pad/unk, int or Llama-3 style
    list): generation stops at each eos id, so vocabulary pruning must keep all of them."""
    ids: set[int] = set()
    for cfg in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        for f in _TOKEN_ID_FIELDS:
            v = getattr(cfg, f, None)
            ids.update(int(i) for i in ([v] if isinstance(v, int) else v if isinstance(v, (list, tuple)) else ())
                       if isinstance(i, int) and i >= 0)
    return ids


class VocabularyRanking:
    """The tokens a corpus uses (its floor) and the others ranked for keeping: `keep(extra)` is the floor plus the
    `extra` unused tokens ranked first, closed under merges (close_vocabulary). Unused tokens rank by
    `token_mass`, the dense model's summed output probability over calibration positions
    (stats.collect_activation_stats): the tokens it expects, which text from outside the corpus needs most. Without
    it, by id (BPE ids grow with merge rank). `keep_ids` (model_token_ids: every eos id) are always kept. Embedding
    rows past the tokenizer's ids (padded vocabularies: the tokenizer never produces them) are dropped.

    Measured on SmolLM2-135M, stdlib calibration, vocabulary pruning alone (bits per byte x dense, held-out
    stdlib / rich): used + lowest ids, 21,872 tokens: 0.995 / 1.046; used + dense output mass, 21,205
    tokens: 0.998 / 1.032. The out-of-corpus cost is nearly all in rich's words the corpus never used."""

    def __init__(self, tokenizer, texts: Iterable[str], vocab_size: int, token_mass=None, min_count: int = 1,
                 keep_ids: Iterable[int] = (), counts: Optional[np.ndarray] = None):
        """counts: the token counts of `texts` (token_counts) when the caller has them; texts is then not read."""
        self.spec, self.vocab_size = tokenizer_spec(tokenizer), vocab_size
        known = self.spec.id_to_tok
        keep_ids = {int(i) for i in keep_ids if int(i) in known}  # an id past the tokenizer is a padding row
        counts = token_counts(tokenizer, texts, vocab_size) if counts is None else counts
        self.floor = _close(self.spec, set(np.flatnonzero(counts >= min_count).tolist()) | keep_ids)
        base = set(self.floor)
        if token_mass is not None:
            mass = np.asarray(token_mass, dtype=np.float64)
            if mass.shape != (vocab_size,):
                raise GreenpruneError(f"token_mass has shape {mass.shape}, expected ({vocab_size},)")
            order = np.argsort(-mass, kind="stable")
        else:
            order = np.arange(vocab_size)
        self.ranked = [int(i) for i in order if int(i) not in base and int(i) in known]

    @property
    def known_size(self) -> int:
        """The rows the tokenizer can produce: the most a vocabulary keeps."""
        return len(self.floor) + len(self.ranked)

    def extra_for(self, max_removed: int) -> int:
        """The fewest ranked tokens added to the floor for at most `max_removed` rows to go, their merge parts
        counted (on SmolLM2 the parts of 11,192 tokens by mass were 1,439 more rows)."""
        target = self.vocab_size - max_removed
        kept = set(self.floor)
        for n, i in enumerate(self.ranked):
            if len(kept) >= target:
                return n
            _extend(self.spec, kept, [i])
        return len(self.ranked)

    def keeps(self, extras: Sequence[int]) -> list[list[int]]:
        """keep(e) for each e of the ascending `extras`, each closed from the one before (the sets are nested)."""
        out, kept, done = [], self.floor, 0
        for e in extras:
            if e < done:
                raise GreenpruneError("extras must be ascending")
            kept = _close(self.spec, self.ranked[done:e], closed=kept) if e > done else kept
            out.append(list(kept))
            done = e
        return out

    def keep(self, extra: int = 0, max_removed: Optional[int] = None) -> list[int]:
        """Sorted original ids: the floor and the `extra` unused tokens ranked first, closed; if more than
        `max_removed` rows would go, tokens are given back in id order."""
        kept = self.floor if extra <= 0 else _close(self.spec, self.ranked[:extra], closed=self.floor)
        if max_removed is not None and self.vocab_size - len(kept) > max_removed:
            # give back in id order: a BPE token's parts are earlier merges (lower ids), so the closure adds nothing
            # and exactly `max_removed` tokens go (mass order needed up to 2,300 more parts on a 49k vocabulary)
            have = set(kept)
            rest = [i for i in range(self.vocab_size) if i not in have and i in self.spec.id_to_tok]
            kept = _close(self.spec, rest[: self.vocab_size - max_removed - len(kept)], closed=kept)
        return list(kept)


def choose_vocabulary(tokenizer, texts: Iterable[str], vocab_size: int, token_mass=None, min_count: int = 1,
                      extra: int = 0, max_removed: int | None = None, keep_ids: Iterable[int] = ()) -> list[int]:
    """Sorted original ids to keep: the tokens `texts` use >= min_count times, plus the `extra` unused tokens
    ranked first, closed under merges, never more than `max_removed` rows removed (VocabularyRanking)."""
    return VocabularyRanking(tokenizer, texts, vocab_size, token_mass, min_count, keep_ids).keep(extra, max_removed)


def remap_ids(kept_ids: Sequence[int], size: int | None = None) -> np.ndarray:
    """Old -> new id lookup (int64, -1 for dropped ids) of length size (default max(kept_ids) + 1)."""
    kept = np.asarray(kept_ids, dtype=np.int64)
    size = int(kept.max()) + 1 if size is None and kept.size else int(size or 0)
    table = np.full(size, -1, dtype=np.int64)
    table[kept] = np.arange(kept.size, dtype=np.int64)
    return table


def _check_kept(ts: TokenizerSpec, kept_ids: Sequence[int]) -> list[int]:
    kept = list(kept_ids)
    id_to_tok = ts.id_to_tok
    bad = [i for i in kept if not isinstance(i, (int, np.integer)) or int(i) not in id_to_tok]
    if bad:
        raise GreenpruneError(f"kept ids not in the vocabulary (ids 0..{max(id_to_tok)}): {bad[:5]}")
    kept = [int(i) for i in kept]
    if any(a >= b for a, b in zip(kept, kept[1:])):
        raise GreenpruneError("kept ids must be strictly increasing (sorted, no duplicates): use close_vocabulary()")
    missing = sorted(set(_close(ts, kept)) - set(kept))
    if missing:
        raise GreenpruneError(
            f"kept ids are not closed ({len(missing)} specials, alphabet tokens or merge parts missing, "
            f"e.g. {missing[:5]}): pass them through close_vocabulary() first"
        )
    return kept


def prune_tokenizer(tokenizer, kept_ids: Sequence[int]):
    """A new fast tokenizer whose vocabulary is exactly kept_ids, renumbered: new id i <-> original id kept_ids[i]."""
    from tokenizers import Tokenizer
    from transformers import TokenizersBackend

    ts = tokenizer_spec(tokenizer)
    kept = _check_kept(ts, kept_ids)
    new = remap_ids(kept, max(ts.id_to_tok) + 1)
    # A copy of what is edited below (the cached spec is shared): the model's tables are rebuilt, not edited
    src = ts.json
    spec = {**src, "model": dict(src["model"]), "added_tokens": [dict(a) for a in src["added_tokens"]],
            "post_processor": copy.deepcopy(src.get("post_processor")), "padding": copy.deepcopy(src.get("padding"))}

    # Model: kept tokens with their new ids, and the merges whose parts and result all survive (order = priority).
    model = spec["model"]
    if model["type"] == "Unigram":  # pieces in kept order (their scores unchanged), ids are list positions
        model["vocab"] = [model["vocab"][i] for i in kept if i < len(model["vocab"])]
        if model.get("unk_id") is not None:
            model["unk_id"] = int(new[model["unk_id"]])
        vocab = _vocab(model)
    else:
        model["vocab"] = {t: int(new[i]) for t, i in model["vocab"].items() if new[i] >= 0}
        vocab = model["vocab"]
        model["merges"] = [m for m in model["merges"] if all(t in vocab for t in (*_pair(m), "".join(_pair(m))))]
    for added in spec["added_tokens"]:
        added["id"] = int(new[added["id"]])
    by_token = {**vocab, **{a["content"]: a["id"] for a in spec["added_tokens"]}}
    _post_processor_tokens(spec.get("post_processor"), by_token.__getitem__)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = by_token.get(spec["padding"]["pad_token"], 0)
    backend = Tokenizer.from_str(json.dumps(spec))

    # Wrap into the generic transformers fast tokenizer: its behaviour is all in tokenizer.json, so it
    # saves and reloads with AutoTokenizer whatever the source class was. Ids are recomputed, never copied.
    drop = {"added_tokens_decoder", "name_or_path", "vocab_file", "merges_file", "tokenizer_file", "vocab",
            "merges", "gguf_file", "tokenizer_object", "is_local", "local_files_only", "tokenizer_class", "auto_map"}
    kwargs = {  # like save_pretrained: init kwargs, with the current attribute value where there is one
        k: getattr(tokenizer, k, v)
        for k, v in tokenizer.init_kwargs.items()
        if k not in drop and not k.endswith(("_id", "_ids"))
    }
    kwargs.update(tokenizer.special_tokens_map)
    if tokenizer.extra_special_tokens:
        kwargs["extra_special_tokens"] = [str(t) for t in tokenizer.extra_special_tokens]
    kwargs.update(
        chat_template=tokenizer.chat_template,
        model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
    )
    pruned = TokenizersBackend(tokenizer_object=backend, **kwargs)
    if len(pruned) != len(kept):
        raise GreenpruneError(f"pruned tokenizer has {len(pruned)} tokens, expected {len(kept)}")
    return pruned


def check_tokenizer_fits(tokenizer, rows: int) -> None:
    """Refuse vocabulary pruning when the tokenizer has ids the model has no embedding row for: the model cannot
    embed them (an IndexError wherever one occurs), and the pruned tokenizer could not keep them. Seen with a
    tokenizer class that adds a special token of its own on loading (Qwen2's <|endoftext|>) to a checkpoint
    whose embedding was sized to the tokenizer without it."""
    beyond = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i >= rows)
    if beyond:
        shown = ", ".join(f"{t!r} ({i})" for i, t in beyond[:5])
        raise GreenpruneError(f"the tokenizer has {len(beyond)} token(s) past the model's {rows} embedding rows: "
                              f"{shown}; the model cannot embed them. Resize the embedding to the tokenizer "
                              "(model.resize_token_embeddings(len(tokenizer))) or prune without the vocabulary "
                              "(--no-vocab)")


def vocabulary_for(tokenizer, shape: ModelShape, texts: Iterable[str], token_mass, ratio: float, min_count: int = 1,
                   extra: int = 2048, keep_ids: Iterable[int] = ()) -> list[int]:
    """The kept vocabulary of a plan removing `ratio` of the parameters: the tokens the calibration texts use +
    the `extra` others the dense model expects most (token_mass), never removing more than the whole parameter
    budget (tokens are given back first)."""
    allowed = int(ratio * shape.dense_params) // shape.vocab_params(1)
    return choose_vocabulary(tokenizer, texts, shape.vocab_size, token_mass, min_count, extra, max_removed=allowed,
                             keep_ids=keep_ids)
