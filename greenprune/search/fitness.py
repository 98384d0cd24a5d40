"""Fitness of a candidate plan without building its model: KL(dense || candidate) on calibration tokens.

A candidate (a genome: per-layer FFN width, KV groups, or the layer removed) is scored by masked replay of the
dense model (planning/replay.py): removed FFN channels and KV groups (with their query heads) are zeroed at
their consumer projections, removed layers are skipped, and only the layers from the first changed one up are
re-run from cached dense activations. This computes exactly what the physically pruned model computes. KL is
greenprune.kernels.kl_divergence over the kept vocabulary (the dense distribution restricted to it and
renormalised), never a T x V tensor beyond the op's chunk.

Token budgets are staged: `evaluate(g, n_blocks)` scores on the first n_blocks calibration blocks and caches
the per-block sums, so re-scoring a survivor on more blocks only runs the blocks it has not seen.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch

from ..kernels import kl_divergence
from ..planning.replay import Change, LayerReplay
from .space import Genome

FITNESS = ("kl", "bpb")


class MaskedFitness:
    def __init__(self, model, blocks: torch.Tensor, ffn_scores, kv_scores, vocab_keep: Optional[list[int]] = None,
                 metric: str = "kl", tokenizer=None, copy_model: bool = True):
        if metric not in FITNESS:
            raise ValueError(f"unknown fitness '{metric}'")
        if metric == "bpb" and tokenizer is None:
            raise ValueError("bits per byte needs the tokenizer")
        self.metric = metric
        # the masks are installed on a copy, so the dense model is never touched while a search runs;
        # copy_model=False masks the model itself (no second copy in memory), only during evaluate()
        work = (copy.deepcopy(model) if copy_model else model).eval()
        if copy_model:
            for p in work.parameters():
                p.requires_grad_(False)
        self.replay = LayerReplay(work, blocks, batch_size=1)  # per block: the cache below is per block
        self.n_layers = len(self.replay.layers)
        self.dense_head = self.replay.family.head_weight(work)
        self.ffn_scores, self.kv_scores = ffn_scores, kv_scores
        self.keep = None if vocab_keep is None else torch.as_tensor(list(vocab_keep))
        self.head = self.dense_head if self.keep is None else self.dense_head[self.keep]
        self.blocks = blocks
        self.seq_len = blocks.shape[1]
        self._bytes = None
        if metric == "bpb":
            self._bytes = [len(tokenizer.decode(blk[1:].tolist()).encode("utf-8")) for blk in blocks]
            pos = {int(t): i for i, t in enumerate(self.keep.tolist())} if self.keep is not None else None
            self._targets = [torch.tensor([pos.get(int(t), -100) for t in blk[1:]]) if pos else blk[1:] for blk in blocks]
        self._cache: dict[str, list[float]] = {}  # genome key -> per-block sums (nats or bits)
        self.evaluations = 0  # block forward passes run
        self.tokens = 0  # tokens through the model

    def changes(self, g: Genome) -> dict[int, Change]:
        """The genome as per-layer changes: the top-scoring channels and KV groups kept, width 0 removed."""
        out = {}
        for i in range(self.n_layers):
            f, k = g.ffn[i], g.kv[i]
            if f == 0:
                out[i] = Change(dropped=True)
                continue
            F, G = self.ffn_scores[i].numel(), self.kv_scores[i].numel()
            ffn = self.ffn_scores[i].topk(f).indices.tolist() if f < F else None
            kv = self.kv_scores[i].topk(k).indices.tolist() if k < G else None
            if ffn is not None or kv is not None:
                out[i] = Change(ffn, kv)
        return out

    @torch.no_grad()
    def _block_score(self, b: int, first: int, skip: frozenset) -> float:
        final = self.replay.dense_final(b)[0]
        h = self.replay.final(b, first, skip)[0]
        self.evaluations += 1
        self.tokens += self.seq_len
        if self.metric == "kl":
            r = kl_divergence(final, self.dense_head, h, self.head, self.keep)
            return float(r.kl.sum())
        logits = (h[:-1].float() @ self.head.float().T)
        nll = torch.nn.functional.cross_entropy(logits, self._targets[b], reduction="sum", ignore_index=-100)
        return float(nll) / math.log(2)

    def evaluate(self, g: Genome, n_blocks: int) -> float:
        """Mean KL per token in nats (or bits per byte) on the first n_blocks blocks; cached per block."""
        n_blocks = min(n_blocks, len(self.blocks))
        sums = self._cache.setdefault(g.key, [])
        if len(sums) < n_blocks:
            with self.replay.changed(self.changes(g)) as (first, skip):
                for b in range(len(sums), n_blocks):
                    sums.append(self._block_score(b, first, skip))
        return self._reduce(sums[:n_blocks])

    def _reduce(self, sums: list[float]) -> float:
        if self.metric == "kl":
            return sum(sums) / (len(sums) * self.seq_len)
        return sum(sums) / sum(self._bytes[: len(sums)])

    def reset(self) -> None:
        self._cache = {}

    def blocks_seen(self, g: Genome) -> int:
        return len(self._cache.get(g.key, []))
