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

from ..families import family_for
from ..kernels import kl_divergence


def _bos(tokenizer) -> int:
    for t in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if t is not None:
            return t
    raise ValueError("tokenizer has neither a BOS nor an EOS token to start windows with")


def _windows(tokenizer, texts: list[str], seq_len: int) -> list[torch.Tensor]:
    """Each text tokenized whole, cut into windows of seq_len - 1 tokens, each behind a BOS token."""
    bos, out = _bos(tokenizer), []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), seq_len - 1):
            out.append(torch.tensor([bos] + ids[s : s + seq_len - 1]))
    return out


@torch.no_grad()
def bits_per_byte(model, tokenizer, texts: list[str], seq_len: int = 512, progress: bool = True) -> dict:
    nll, tokens = 0.0, 0
    for w in tqdm(_windows(tokenizer, texts, seq_len), desc="bits per byte", disable=not progress, leave=False):
        logits = model(w[None], use_cache=False).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum").item()
        tokens += len(w) - 1
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
    for w in tqdm(_windows(pruned_tokenizer, texts, seq_len), desc="KL to dense", disable=not progress, leave=False):
        hd = fd.backbone(dense)(w[None] if keep is None else keep[w][None], use_cache=False).last_hidden_state[0]
        hp = fp.backbone(pruned)(w[None], use_cache=False).last_hidden_state[0]
        r = kl_divergence(hd, fd.lm_head(dense).weight, hp, fp.lm_head(pruned).weight, keep)
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

    The dense model's bits per byte need its own tokenization; where that equals the pruned tokenization mapped
    back to dense ids (no vocabulary pruning, or no text touching a dropped token) its pass is shared with the KL.
    Otherwise the dense bits per byte take one more pass, unless `dense_bpb` (a cached result) is given."""
    if any(getattr(m.config, "final_logit_softcapping", None) for m in (dense, pruned)):
        # the logits are not the head's output alone (Gemma 2): bits per byte from the models' own logits
        d = dense_bpb or bits_per_byte(dense, dense_tokenizer, texts, seq_len, progress)
        return d, bits_per_byte(pruned, pruned_tokenizer, texts, seq_len, progress), agreement(
            dense, pruned, pruned_tokenizer, texts, vocab_keep, seq_len, progress)
    keep = None if vocab_keep is None else torch.as_tensor(vocab_keep)
    fd, fp = family_for(dense), family_for(pruned)
    head_d, head_p = fd.lm_head(dense), fp.lm_head(pruned)
    wins_p = _windows(pruned_tokenizer, texts, seq_len)
    wins_d = None
    if dense_bpb is None:
        wins_d = _windows(dense_tokenizer, texts, seq_len)
        mapped = [w if keep is None else keep[w] for w in wins_p]
        shared = len(wins_d) == len(mapped) and all(torch.equal(a, b) for a, b in zip(wins_d, mapped))
    else:
        shared = False
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    nll_d = nll_p = kl = dropped = agree = 0.0
    n = tokens = 0
    for w in tqdm(wins_p, desc="bits per byte and KL", disable=not progress, leave=False):
        hd = fd.backbone(dense)(w[None] if keep is None else keep[w][None], use_cache=False).last_hidden_state[0]
        hp = fp.backbone(pruned)(w[None], use_cache=False).last_hidden_state[0]
        nll_p += torch.nn.functional.cross_entropy(head_p(hp[:-1]).float(), w[1:], reduction="sum").item()
        if shared:
            nll_d += torch.nn.functional.cross_entropy(head_d(hd[:-1]).float(), (w if keep is None else keep[w])[1:],
                                                       reduction="sum").item()
        tokens += len(w) - 1
        r = kl_divergence(hd, head_d.weight, hp, head_p.weight, keep)
        kl += r.kl.sum().item()
        dropped += r.dropped_mass.sum().item()
        agree += (r.argmax_dense == r.argmax_pruned).sum().item()
        n += len(w)
    p = {"bpb": nll_p / math.log(2) / n_bytes, "tokens": tokens, "bytes": n_bytes, "nll_per_token": nll_p / max(tokens, 1)}
    if shared:
        d = {"bpb": nll_d / math.log(2) / n_bytes, "tokens": tokens, "bytes": n_bytes, "nll_per_token": nll_d / max(tokens, 1)}
    elif dense_bpb is not None:
        d = dense_bpb
    else:
        d = bits_per_byte(dense, dense_tokenizer, texts, seq_len, progress)
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


class LineDecided(StoppingCriteria):
    """Stops greedy completion once the next line is decided: the text does not start with a newline (a miss),
    or the line after it has ended. Greedy tokens before the stop are the same as without it, so the match is
    too; the 40-token budget mostly went on lines after the one scored."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        text = self.tokenizer.decode(input_ids[0, self.prompt_len:], skip_special_tokens=True)
        done = bool(text) and (not text.startswith("\n") or "\n" in text[1:])
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def next_line_exact_match(model, tokenizer, samples: list[tuple[str, str]], max_new_tokens: int = 40,
                          progress: bool = True) -> dict:
    """Greedy completion of the next line; exact match after stripping trailing whitespace.

    The prompt stops before the context's last newline: BPE merges a newline with the next line's indent, so
    a prompt ending in a bare newline is a boundary the model never saw (it then wrote '#' first)."""
    hits = 0
    for ctx, target in tqdm(samples, desc="next-line completion", disable=not progress, leave=False):
        prompt = ctx[:-1] if ctx.endswith("\n") else ctx
        ids = torch.tensor([[_bos(tokenizer)] + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=_bos(tokenizer),
                             stopping_criteria=StoppingCriteriaList([LineDecided(tokenizer, ids.shape[1])]))
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        line = text[1:].split("\n", 1)[0] if text.startswith("\n") else None
        hits += line is not None and line.rstrip() == target.rstrip()
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
    ids = torch.tensor([[_bos(tokenizer)] + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=_bos(tokenizer))
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
