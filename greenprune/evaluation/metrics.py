"""Evaluation: bits per byte, KL and top-1 agreement to the dense model, next-line exact match, speed, size.

Bits per byte stays comparable when tokenizers differ (a pruned vocabulary splits some text into more
tokens): every model is scored on exactly the same characters, and the bits are divided by their UTF-8 bytes.
"""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from ..data.corpus import text_windows, window_start_id
from ..families import family_for
from ..kernels.reference import kl_from_logits, token_nll


# Evaluation windows of one length run together, as many as keep one model's fp32 logits [batch x length, vocab]
# within this: SmolLM2-135M (49,152 tokens) 4 windows of 256 (1.18x the tokens/s of one window at a time on 2 EPYC
# Zen 4 cores, 2026-12-04), Gemma 3 (262,144) one
EVAL_BATCH_LOGITS_BYTES = 256 << 20


def equal_length_batches(windows: list[torch.Tensor], vocab_size: int) -> list[list[int]]:
    """Indices of `windows` in groups of equal length, in order, each within EVAL_BATCH_LOGITS_BYTES of logits."""
    groups: list[list[int]] = []
    for i, w in enumerate(windows):
        cap = max(1, EVAL_BATCH_LOGITS_BYTES // (4 * vocab_size * len(w)))
        if groups and len(windows[groups[-1][0]]) == len(w) and len(groups[-1]) < cap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _vocab_rows(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


@torch.no_grad()
def bits_per_byte(model, tokenizer, texts: list[str], seq_len: int = 512, progress: bool = True) -> dict:
    nll, tokens = 0.0, 0
    windows = text_windows(tokenizer, texts, seq_len)
    for rows in tqdm(equal_length_batches(windows, _vocab_rows(model)), desc="bits per byte",
                     disable=not progress, leave=False):
        w = torch.stack([windows[i] for i in rows])
        nll += token_nll(model(w, use_cache=False).logits.float(), w).sum().item()
        tokens += w[:, 1:].numel()
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"bpb": nll / math.log(2) / n_bytes, "tokens": tokens, "bytes": n_bytes,
            "nll_per_token": nll / max(tokens, 1)}


@torch.no_grad()
def agreement(dense, pruned, pruned_tokenizer, texts: list[str], vocab_keep: Optional[list[int]],
              seq_len: int = 512, progress: bool = True) -> dict:
    """KL(dense || pruned) and top-1 agreement over the shared vocabulary, on the pruned tokenization
    (mapped back to original ids for the dense model), plus the dense mass on dropped tokens."""
    keep = None if vocab_keep is None else torch.as_tensor(vocab_keep)
    fd, fp = family_for(dense), family_for(pruned)
    kl = dropped = agree = 0.0
    n = 0
    for w in tqdm(text_windows(pruned_tokenizer, texts, seq_len), desc="KL to dense", disable=not progress, leave=False):
        hd = fd.backbone(dense)(w[None] if keep is None else keep[w][None], use_cache=False).last_hidden_state[0]
        hp = fp.backbone(pruned)(w[None], use_cache=False).last_hidden_state[0]
        r = kl_from_logits(fd.logits(dense, hd), fp.logits(pruned, hp), keep)[0]
        kl += r.kl.sum().item()
        dropped += r.dropped_mass.sum().item()
        agree += (r.argmax_dense == r.argmax_pruned).sum().item()
        n += len(w)
    return {"kl": kl / n, "top1_agreement": agree / n, "dropped_mass": dropped / n, "tokens": n}


@torch.no_grad()
def pair_metrics(dense, dense_tokenizer, pruned, pruned_tokenizer, texts: list[str], vocab_keep: Optional[list[int]],
                 seq_len: int = 512, progress: bool = True, dense_bpb: Optional[dict] = None) -> tuple[dict, dict, dict]:
    """bits_per_byte of both models and agreement(), from one forward pass of each model per window:
    (dense bpb, pruned bpb, agreement), the same numbers as the three functions give with four passes.

    The dense model's bits per byte need its own tokenization; each window where that equals the pruned window
    mapped back to dense ids (no vocabulary pruning, or no dropped token up to the window's end) shares its pass
    with the KL; the other windows take one more dense pass, unless `dense_bpb` (a cached result) is given."""
    keep = None if vocab_keep is None else torch.as_tensor(vocab_keep)
    fd, fp = family_for(dense), family_for(pruned)
    # per window: whether the dense tokenization's window is the pruned one mapped back (then the pass that gives
    # the KL gives the dense log-likelihood too). Texts are tokenized whole, so the windows before a text's first
    # dropped token are shared and the ones from it on (shifted by the longer pruned tokenization) are not (on the
    # default job's `rich` that shares no more than a text-level test: its dense passes stayed 24,763 tokens)
    todo, own = [], []  # (pruned window, its dense pass gives the dense likelihood); dense-only windows
    for t in texts:
        wp = text_windows(pruned_tokenizer, [t], seq_len)
        wd = text_windows(dense_tokenizer, [t], seq_len) if dense_bpb is None else []
        shared = [i < len(wd) and torch.equal(wd[i], wp[i] if keep is None else keep[wp[i]]) for i in range(len(wp))]
        todo += list(zip(wp, shared))
        own += [w for i, w in enumerate(wd) if not (i < len(shared) and shared[i])]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    nll_d = nll_p = kl = dropped = agree = 0.0
    n = tokens = tokens_d = 0
    windows = [w for w, _ in todo]
    for rows in tqdm(equal_length_batches(windows, _vocab_rows(dense)), desc="bits per byte and KL",
                     disable=not progress, leave=False):
        w = torch.stack([windows[i] for i in rows])  # [B, L] pruned ids
        wd = w if keep is None else keep[w]
        hd = fd.backbone(dense)(wd, use_cache=False).last_hidden_state
        hp = fp.backbone(pruned)(w, use_cache=False).last_hidden_state
        # each head product once: the likelihoods and kernels.kl_divergence's results from the same logits (the
        # models' own: Granite's scaling and Gemma's soft-capping applied)
        ld, lp = fd.logits(dense, hd), fp.logits(pruned, hp)
        r, lse_d, lse_p = kl_from_logits(ld.flatten(0, 1), lp.flatten(0, 1), keep)
        nll_p += token_nll(lp, w, lse_p.view(w.shape)).sum().item()
        shared = torch.tensor([todo[i][1] for i in rows])
        if shared.any():
            nll_d += token_nll(ld[shared], wd[shared], lse_d.view(w.shape)[shared]).sum().item()
            tokens_d += wd[shared, 1:].numel()
        tokens += w[:, 1:].numel()
        kl += r.kl.sum().item()
        dropped += r.dropped_mass.sum().item()
        agree += (r.argmax_dense == r.argmax_pruned).sum().item()
        n += w.numel()
    for rows in tqdm(equal_length_batches(own, _vocab_rows(dense)), desc="bits per byte (dense tokenization)",
                     disable=not progress, leave=False):
        w = torch.stack([own[i] for i in rows])
        nll_d += token_nll(dense(w, use_cache=False).logits.float(), w).sum().item()
        tokens_d += w[:, 1:].numel()
    p = {"bpb": nll_p / math.log(2) / n_bytes, "tokens": tokens, "bytes": n_bytes, "nll_per_token": nll_p / max(tokens, 1)}
    if dense_bpb is not None:
        d = dense_bpb
    else:
        d = {"bpb": nll_d / math.log(2) / n_bytes, "tokens": tokens_d, "bytes": n_bytes,
             "nll_per_token": nll_d / max(tokens_d, 1)}
    return d, p, {"kl": kl / n, "top1_agreement": agree / n, "dropped_mass": dropped / n, "tokens": n}


def next_line_samples(texts: list[str], n: int, context_lines: int = 12, min_len: int = 12) -> list[tuple[str, str]]:
    """(context, next line) pairs from held-out code: deterministic, non-trivial target lines."""
    pairs = []
    for t in texts:
        lines = t.splitlines(keepends=True)
        for i in range(context_lines, len(lines), 7):
            target = lines[i].rstrip("\n")
            if len(target.strip()) >= min_len and not target.strip().startswith("#"):
                pairs.append(("".join(lines[i - context_lines : i]), target))
    step = max(1, len(pairs) // max(n, 1))
    return pairs[::step][:n]


def _line_decided(text: str) -> bool:
    return bool(text) and (not text.startswith("\n") or "\n" in text[1:])


class LineDecided(StoppingCriteria):
    """Stops a row's greedy completion once its next line is decided: the text does not start with a newline (a
    miss), or the line after it has ended. Greedy tokens before the stop are the same as without it, so the
    match is too; the 40-token budget mostly went on lines after the one scored. One flag per row: in a batch
    a decided row is padded while the others go on."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([_line_decided(t) for t in texts], dtype=torch.bool, device=input_ids.device)


def _scored_line(text: str) -> Optional[str]:
    return text[1:].split("\n", 1)[0] if text.startswith("\n") else None


@torch.no_grad()
def greedy_continuations(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
                         stop_line: bool = True, progress: bool = False, desc: str = "greedy completion") -> list[str]:
    """Greedy continuation text of each prompt (token ids), generated batch_size at a time.

    Prompts of similar length go together, left-padded: the attention mask hides the padding and generate
    derives the positions from it. A decode step of SmolLM2-135M on 2 CPU cores cost the same at batch 8 and
    16 (0.108 / 0.106 s, 2026-12-03), so batching is what makes completion cheap. stop_line: a row stops once
    its next line is decided (LineDecided) while the others go on."""
    bos = window_start_id(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    batch_size = max(batch_size, 1)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        rows = order[s:s + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.tensor([[bos] * (width - len(prompts[i])) + list(prompts[i]) for i in rows])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows])
        stop = StoppingCriteriaList([LineDecided(tokenizer, width)] if stop_line else [])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=bos, stopping_criteria=stop)
        for i, text in zip(rows, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
            texts[i] = text
    return texts


def next_line_completions(model, tokenizer, samples: list[tuple[str, str]], max_new_tokens: int = 40,
                          batch_size: int = 16, progress: bool = True) -> list[Optional[str]]:
    """The greedily completed next line of each sample (None: the completion did not start a new line).

    The prompt stops before the context's last newline: BPE merges a newline with the next line's indent, so
    a prompt ending in a bare newline is a boundary the model never saw (it then wrote '#' first)."""
    bos = window_start_id(tokenizer)
    prompts = [[bos] + tokenizer(ctx[:-1] if ctx.endswith("\n") else ctx, add_special_tokens=False)["input_ids"]
               for ctx, _ in samples]
    texts = greedy_continuations(model, tokenizer, prompts, max_new_tokens, batch_size, progress=progress,
                                 desc="next-line completion")
    return [_scored_line(t) for t in texts]


@torch.no_grad()
def next_line_exact_match(model, tokenizer, samples: list[tuple[str, str]], max_new_tokens: int = 40,
                          batch_size: int = 16, progress: bool = True) -> dict:
    """Greedy completion of the next line; exact match after stripping trailing whitespace."""
    lines = next_line_completions(model, tokenizer, samples, max_new_tokens, batch_size, progress)
    hits = sum(line is not None and line.rstrip() == target.rstrip() for line, (_, target) in zip(lines, samples))
    return {"exact_match": hits / max(len(samples), 1), "samples": len(samples)}


@torch.no_grad()
def cpu_tokens_per_second(model, vocab_size: int, batch: int = 4, seq_len: int = 128, repeats: int = 3) -> float:
    """Forward (prefill) throughput on random ids: median of `repeats` after one warm-up."""
    x = torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    model(x, use_cache=False)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x, use_cache=False)
        times.append(time.perf_counter() - t)
    return batch * seq_len / sorted(times)[len(times) // 2]


def generate_code(model, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    ids = torch.tensor([[window_start_id(tokenizer)] + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=window_start_id(tokenizer))
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
