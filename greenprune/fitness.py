"""Fitness of a candidate plan without building its model: KL(dense || candidate) on calibration tokens.

One working copy of the dense model carries masks: the down_proj input columns of removed FFN channels and
the o_proj input columns of removed KV groups (with their query heads) are zeroed, removed layers are skipped.
This computes exactly what the physically pruned model computes (a zeroed channel contributes nothing).
The dense pass is run once: it caches every layer's input, the keyword arguments the model passes to its
layers (rotary embeddings, mask) and the final normed hidden states; a candidate re-runs only the layers from
its first changed one up. KL is greenprune.kernels.kl_divergence over the kept vocabulary (the dense
distribution restricted to it and renormalised), never a T x V tensor beyond the op's chunk.

Token budgets are staged: `evaluate(g, n_blocks)` scores on the first n_blocks calibration blocks and caches
the per-block sums, so re-scoring a survivor on more blocks only runs the blocks it has not seen.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch

from .kernels import kl_divergence
from .planner import capture_layer_inputs
from .searchspace import Genome

FITNESS = ("kl", "bpb")


class MaskedFitness:
    def __init__(self, model, blocks: torch.Tensor, ffn_scores, kv_scores, vocab_keep: Optional[list[int]] = None,
                 metric: str = "kl", tokenizer=None, batch_size: int = 4, copy_model: bool = True):
        if metric not in FITNESS:
            raise ValueError(f"unknown fitness '{metric}'")
        if metric == "bpb" and tokenizer is None:
            raise ValueError("bits per byte needs the tokenizer")
        self.metric = metric
        # the masks live on a copy, so the dense model is never touched; copy_model=False hooks the model itself
        # (no second copy in memory) and the caller must close() this object before using the model again
        self.work = (copy.deepcopy(model) if copy_model else model).eval()
        if copy_model:
            for p in self.work.parameters():
                p.requires_grad_(False)
        self.layers = self.work.model.layers
        self.ffn_scores, self.kv_scores = ffn_scores, kv_scores
        head = self.work.lm_head.weight
        self.keep = None if vocab_keep is None else torch.as_tensor(list(vocab_keep))
        self.head = head if self.keep is None else head[self.keep]
        self.blocks = blocks
        self.seq_len = blocks.shape[1]
        self.batch_size = batch_size
        self._ffn_mask: list[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._kv_mask: list[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._hooks = []
        for i, layer in enumerate(self.layers):
            self._hooks.append(layer.mlp.down_proj.register_forward_pre_hook(self._masker(self._ffn_mask, i)))
            self._hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(self._masker(self._kv_mask, i)))
        self._dense = [self._capture(blocks[b : b + 1]) for b in range(len(blocks))]  # per block
        self._bytes = None
        if metric == "bpb":
            self._bytes = [len(tokenizer.decode(blk[1:].tolist()).encode("utf-8")) for blk in blocks]
            pos = {int(t): i for i, t in enumerate(self.keep.tolist())} if self.keep is not None else None
            self._targets = [torch.tensor([pos.get(int(t), -100) for t in blk[1:]]) if pos else blk[1:] for blk in blocks]
        self._cache: dict[str, list[float]] = {}  # genome key -> per-block sums (nats or bits)
        self.evaluations = 0  # block forward passes run
        self.tokens = 0  # tokens through the model

    @staticmethod
    def _masker(masks, i):
        def hook(mod, args):
            m = masks[i]
            return None if m is None else (args[0] * m,)
        return hook

    def _capture(self, x):
        inputs, kw, final = capture_layer_inputs(self.work, x)
        return inputs, kw, final[0]

    def _set_masks(self, g: Genome) -> int:
        """Masks for genome g; returns the first layer that differs from the dense model."""
        F = self.layers[0].mlp.down_proj.in_features
        first = len(self.layers)
        for i, layer in enumerate(self.layers):
            f, k = g.ffn[i], g.kv[i]
            G = self.kv_scores[i].numel()
            self._ffn_mask[i] = self._kv_mask[i] = None
            if f == 0:
                first = min(first, i)
                continue
            if f < F:
                m = torch.zeros(F, dtype=self.head.dtype)
                m[self.ffn_scores[i].topk(f).indices] = 1
                self._ffn_mask[i] = m
                first = min(first, i)
            if k < G:
                C = layer.self_attn.o_proj.in_features
                m2 = torch.zeros(C, dtype=self.head.dtype).view(G, -1)
                m2[self.kv_scores[i].topk(k).indices] = 1
                self._kv_mask[i] = m2.view(-1)
                first = min(first, i)
        return first

    @torch.no_grad()
    def _block_score(self, g: Genome, b: int, first: int) -> float:
        inputs, kw, final = self._dense[b]
        if first >= len(self.layers):
            h = final
        else:
            h = inputs[first]
            for j in range(first, len(self.layers)):
                if g.ffn[j] == 0:
                    continue
                out = self.layers[j](h, **kw)
                h = out[0] if isinstance(out, tuple) else out
            h = self.work.model.norm(h)[0]
        self.evaluations += 1
        self.tokens += self.seq_len
        if self.metric == "kl":
            r = kl_divergence(final, self.work.lm_head.weight, h, self.head, self.keep)
            return float(r.kl.sum())
        logits = (h[:-1].float() @ self.head.float().T)
        nll = torch.nn.functional.cross_entropy(logits, self._targets[b], reduction="sum", ignore_index=-100)
        return float(nll) / math.log(2)

    def evaluate(self, g: Genome, n_blocks: int) -> float:
        """Mean KL per token in nats (or bits per byte) on the first n_blocks blocks; cached per block."""
        n_blocks = min(n_blocks, len(self.blocks))
        sums = self._cache.setdefault(g.key, [])
        if len(sums) < n_blocks:
            first = self._set_masks(g)
            try:
                for b in range(len(sums), n_blocks):
                    sums.append(self._block_score(g, b, first))
            finally:
                self._ffn_mask[:] = [None] * len(self.layers)
                self._kv_mask[:] = [None] * len(self.layers)
        return self._reduce(sums[:n_blocks])

    def _reduce(self, sums: list[float]) -> float:
        if self.metric == "kl":
            return sum(sums) / (len(sums) * self.seq_len)
        return sum(sums) / sum(self._bytes[: len(sums)])

    def reset(self) -> None:
        self._cache = {}

    def blocks_seen(self, g: Genome) -> int:
        return len(self._cache.get(g.key, []))

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
