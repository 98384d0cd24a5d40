"""The measurement behind planning/vocab_options.py: each vocabulary size's cost on held-out calibration text."""
from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import tqdm

from ..data.corpus import Document, hashed_order, stable_hash, text_windows
from ..errors import GreenpruneError
from ..families import ModelShape, family_for
from ..kernels.reference import token_nll
from ..precision import working_copy
from ..planning.vocab_options import VocabOption
from .vocab import VocabularyRanking, prune_tokenizer, token_counts

# unused tokens kept beyond the floor: the ladder of options measured (those below the margin are not)
EXTRAS = (0, 2048, 8192, 32768, 131072)
BUDGET_SHARES = (1.0, 0.5, 0.25)  # and the options removing these shares of the rows the whole budget allows
PROBE_SHARE = 0.25  # of the calibration documents the statistics pass did not read
MIN_STEP = 0.1  # options closer than this share of the widest removal to a kept one are not measured


def probe_split(calib: list[Document], read: set[str]) -> tuple[list[Document], list[Document]]:
    """(fit, probe): of the documents the calibration blocks did not read (names in `read`), PROBE_SHARE by name hash
    are the probe fold; fit is every other calibration document. Empty probe when there are too few documents."""
    unread = [d for d in calib if d.name not in read]
    probe = {d.name for d in unread if stable_hash("vocab-probe:" + d.name) % 10_000 < PROBE_SHARE * 10_000}
    if not probe or len(probe) == len(calib):
        return calib, []
    return [d for d in calib if d.name not in probe], [d for d in calib if d.name in probe]


def probe_snippets(tokenizer, docs: list[Document], tokens: int, seq_len: int) -> list[str]:
    """About `tokens` tokens of probe text: from each document in hashed order, whole lines from a start line
    chosen by its name's hash, up to seq_len - 1 tokens (one window), so many documents are sampled."""
    out, used = [], 0
    for d in hashed_order(docs):
        lines = d.text.splitlines(keepends=True)
        if not lines:
            continue
        start = stable_hash("vocab-line:" + d.name) % len(lines)
        take, n = [], 0
        for line in lines[start:] + lines[:start]:
            k = len(tokenizer(line, add_special_tokens=False)["input_ids"])
            if take and n + k > seq_len - 1:
                break
            take.append(line)
            n += k
        text = "".join(take)
        if text.strip():
            out.append(text)
            used += n
        if used >= tokens:
            break
    return out


def option_extras(shape: ModelShape, floor: int, known: int, allowed_rows: int, margin: int = 0) -> list[int]:
    """The `extra` values measured: the ladder (EXTRAS), the ones removing BUDGET_SHARES of the rows allowed, within
    what the budget allows (never more rows than `allowed_rows`), at least `margin` and at most `known` kept,
    spaced by MIN_STEP."""
    widest = min(allowed_rows, shape.vocab_size - floor - margin)
    if widest <= 0:
        return []
    least = shape.vocab_size - widest - floor  # the extra of the widest removal
    wanted = {e for e in EXTRAS if least <= e < known - floor} | {
        max(least, shape.vocab_size - floor - int(s * widest)) for s in BUDGET_SHARES}
    chosen: list[int] = []
    for e in sorted(wanted):
        removed = shape.vocab_size - floor - e
        if removed > 0 and all(abs(removed - (shape.vocab_size - floor - c)) >= MIN_STEP * widest for c in chosen):
            chosen.append(e)
    return chosen


def _log_kept_mass(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """[T, n] log of the softmax mass of logits z [T, V] on each of n nested vocabularies, from levels [V, n + 1],
    the one-hot of the first vocabulary that keeps each id (the last column: none): one product for all of them.
    As log1p(-dropped mass), summed over the dropped ids only: the kept mass is within fp32 rounding of 1 (a sum
    over 262,144 probabilities errs by ~3e-5, the size of the costs measured on Gemma 3), the dropped mass is not."""
    by_level = torch.softmax(z, -1) @ levels  # [T, n + 1]
    dropped = by_level.flip(1).cumsum(1).flip(1)[:, 1:]  # [:, o] = mass of the ids vocabulary o drops
    return torch.log1p(-dropped.clamp(max=1.0))


def _probe_nll(model, tokenizer, texts: list[str], keeps: list[list[int]], seq_len: int, progress: bool) -> tuple:
    """Summed next-token NLL of the probe texts under the dense model with each vocabulary in `keeps` (nested,
    smallest first; its tokenizer pruned, the head restricted to its rows), and with the whole vocabulary; the
    whole vocabulary's token count; the windows run again. Text by text: a window whose pruned tokenization,
    mapped back, is the dense one has the dense pass's hidden states, and its NLL there is the dense NLL plus
    sum log(kept mass) over its positions (renormalised over the kept rows); only windows the pruned
    tokenization changes run the model again. A pruned tokenizer is built only where a probe token is missing
    from that vocabulary (where none is, BPE applies the same merges and Unigram finds the same segmentation)."""
    fam = family_for(model)
    dense_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    used = {i for ids in dense_ids for i in ids}
    tokenizers = [prune_tokenizer(tokenizer, k) if not used <= set(k) else None for k in keeps]
    keep_t = [torch.as_tensor(k) for k in keeps]
    rows = fam.lm_head(model).weight.shape[0]
    levels = torch.full((rows,), len(keeps), dtype=torch.long)
    for o in reversed(range(len(keeps))):
        levels[keep_t[o]] = o
    if any(int((levels <= o).sum()) != len(k) for o, k in enumerate(keeps)):
        raise GreenpruneError("vocabulary options must be nested (each keeps every id of the smaller ones)")
    levels = torch.nn.functional.one_hot(levels, len(keeps) + 1).float()
    dense_nll, nll, n_tokens, reruns = 0.0, [0.0] * len(keeps), 0, 0
    for text in tqdm(texts, desc="vocabulary options", disable=not progress, leave=False):
        windows = []  # this text's dense windows: (ids, logits, their NLL, [T-1, n] kept mass)
        for w in text_windows(tokenizer, [text], seq_len):
            z = fam.logits(model, fam.backbone(model)(w[None], use_cache=False).last_hidden_state)[0]
            d = token_nll(z[None], w[None]).sum().item()
            windows.append((w, z, d, _log_kept_mass(z[:-1], levels)))
            dense_nll += d
            n_tokens += len(w) - 1
        for o, (tok, keep) in enumerate(zip(tokenizers, keep_t)):
            pruned = None if tok is None else text_windows(tok, [text], seq_len)  # None: the dense windows
            for j in range(len(windows) if pruned is None else len(pruned)):
                if pruned is None or (j < len(windows) and torch.equal(windows[j][0], keep[pruned[j]])):
                    nll[o] += windows[j][2] + windows[j][3][:, o].sum().item()
                    continue
                w = pruned[j]
                z = fam.logits(model, fam.backbone(model)(keep[w][None], use_cache=False).last_hidden_state)
                nll[o] += token_nll(z[..., keep], w[None]).sum().item()
                reruns += 1
    return dense_nll, nll, n_tokens, reruns


def measure_vocab_options(model, tokenizer, shape: ModelShape, calib: list[Document], read: set[str], token_mass,
                          allowed_rows: int, min_count: int = 1, keep_ids=(), seq_len: int = 256,
                          tokens: int = 4096, progress: bool = True, dtype: Optional[torch.dtype] = None,
                          margin: int = 0) -> tuple[list[VocabOption], dict]:
    """The options (widest removal first, the whole vocabulary last) with their measured costs, and a record for
    the report. `read`: names of the documents the calibration blocks hold; allowed_rows: the most rows the whole
    parameter budget allows; dtype: the probe's forward precision (greenprune.precision; None: the model's own);
    margin: the fewest unused tokens an option keeps (the probe is the calibration corpus's own kind of text and
    cannot see what other code needs: on SmolLM2 the floor alone measured best there, 1.030x bits/byte held-out
    stdlib against 1.039x, and cost `rich` 1.125x against 1.087x with 2,048 kept; benches/PIPELINE.md).
    With no probe documents (a tiny corpus), only the floor + margin (capped at the budget) and the whole
    vocabulary are returned, their costs unmeasured (0)."""
    fit_docs, probe_docs = probe_split(calib, read)
    counts_fit = token_counts(tokenizer, (d.text for d in fit_docs), shape.vocab_size)
    counts = counts_fit + token_counts(tokenizer, (d.text for d in probe_docs), shape.vocab_size)
    final = VocabularyRanking(tokenizer, (), shape.vocab_size, token_mass, min_count, keep_ids, counts=counts)
    extras = option_extras(shape, len(final.floor), final.known_size, allowed_rows, margin)
    if extras and extras[0] > margin:  # the budget-bound widest removal: exactly the budget, merge parts counted
        extras[0] = max(margin, final.extra_for(allowed_rows))
    whole = VocabOption(None, None, 0.0, 0)
    if not extras:
        return [whole], {"measured": False, "reason": "the budget allows no vocabulary row to go"}
    if not probe_docs:
        keep = final.keep(margin, max_removed=allowed_rows)
        return [VocabOption(margin, tuple(keep), 0.0, shape.vocab_size - len(keep)), whole], {
            "measured": False, "reason": "too few calibration documents for a probe fold"}
    fit = VocabularyRanking(tokenizer, (), shape.vocab_size, token_mass, min_count, keep_ids, counts=counts_fit)
    texts = probe_snippets(tokenizer, probe_docs, tokens, seq_len)
    keeps = fit.keeps(extras)
    work = working_copy(model, dtype)
    dense_nll, nll, n_tokens, reruns = _probe_nll(work, tokenizer, texts, keeps, seq_len, progress)
    del work
    options, rows = [], []
    for e, keep_fit, keep, total in zip(extras, keeps, final.keeps(extras), nll):
        if shape.vocab_size - len(keep) > allowed_rows:  # not with option_extras' bounds; kept as the guard
            raise GreenpruneError(f"vocabulary option extra={e} removes more rows than the budget allows")
        option = VocabOption(e, tuple(keep), (total - dense_nll) / max(n_tokens, 1), shape.vocab_size - len(keep))
        options.append(option)
        rows.append({**option.record(), "fit_kept": len(keep_fit)})
    record = {"measured": True, "probe_documents": len(probe_docs), "probe_snippets": len(texts),
              "probe_tokens": n_tokens, "windows_rerun": reruns, "fit_documents": len(fit_docs),
              "floor": len(final.floor), "fit_floor": len(fit.floor), "dense_nll_per_token": dense_nll / max(n_tokens, 1),
              "dtype": str(next(model.parameters()).dtype if dtype is None else dtype).removeprefix("torch."),
              "options": rows}
    return options + [whole], record
