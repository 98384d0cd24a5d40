"""The unified planner's KL tables: for every decoder layer and every candidate change of it alone (FFN
narrowed to an allowed width, KV groups removed, the layer removed), KL(dense || changed) on calibration tokens.

Each change re-runs only the layers from the changed one up, from cached dense activations (replay.py).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..families import ModelShape
from ..precision import working_copy
from ..scoring.scorers import Scores
from .options import PlanOptions
from .plan import keep_top
from .replay import Change, LayerReplay


# The dense logits a 16-bit replay keeps (LayerwiseKL.delta): the default job's 512 tokens x ~30k kept tokens are
# 60 MB; Gemma 3's 262k vocabulary at 512 tokens 540 MB
DELTA_LOGITS_BYTES = 1 << 30


class LayerwiseKL:
    """KL(dense || dense with one layer changed) on cached calibration activations."""

    def __init__(self, model, blocks: torch.Tensor, vocab_keep: Optional[list[int]] = None, batch_size: int = 4,
                 depth: int = 0, dtype: Optional[torch.dtype] = None):
        self.depth = depth  # 0: exact (every layer above the change re-run); else the bounded proxy (replay.final)
        # dtype: the layers are replayed in a copy of this precision (None: the model's own); the head stays the
        # model's, in fp32, and the dense side of the KL is the replay's own dense pass, so "no change" is 0
        work = working_copy(model, dtype)
        self.dtype = next(work.parameters()).dtype
        self.replay = LayerReplay(work, blocks, batch_size)
        head = self.replay.family.head_weight(model)
        self.head = (head if vocab_keep is None else head[torch.as_tensor(vocab_keep)]).float()
        # KL(p || q) = sum p log p - sum p z + logsumexp(z), z = W h the candidate's logits, and sum_v p_v z_v =
        # h . (p W): the dense side is two per-token quantities (neg_entropy [T], mean_row = p W [T, hidden]), so a
        # candidate costs its head product and a logsumexp, not a [T, vocab] log-softmax, exp and product (-0.1 s
        # of 1.06 s per SmolLM2 candidate, 512 tokens). They are float64, from the fp32 head product a candidate
        # gets: with p in float32 the identity was off by up to 1e-5 nats per token (p sums to 1 only within
        # ~1e-5); against a float64 reference on SmolLM2-135M it is now within 4e-8
        # A 16-bit replay takes a candidate's logits as the dense ones plus the head applied to its change,
        # z = z_dense + W (h - h_dense), that product in the replay's precision: its rounding is relative to the
        # logits' change, not to the logits (a 16-bit W h is off by ~0.05 on logits of ~20, more than most
        # candidates' KL), and it costs a 16-bit product instead of an fp32 one (SmolLM2-135M: 0.21 vs 0.59 s per
        # [1024, 576] x [576, 49152] on 2 Zen 4 cores). It needs the dense logits kept, fp32 [tokens, vocabulary];
        # past DELTA_LOGITS_BYTES the fp32 product is used.
        n_tokens = sum(self.replay.dense_final(b).shape[:2].numel() for b in range(len(self.replay)))
        self.delta = self.dtype != torch.float32 and 4 * n_tokens * self.head.shape[0] <= DELTA_LOGITS_BYTES
        self.head_lowp = self.head.to(self.dtype) if self.delta else None
        self.neg_entropy, self.mean_row, self.dense_logits, self.dense_hidden = [], [], [], []
        with torch.no_grad():
            for b in range(len(self.replay)):
                negh, rows, logits = [], [], []
                for hd in self.replay.dense_final(b).flatten(0, 1).float().split(128):
                    z = hd @ self.head.T
                    logp = torch.log_softmax(z.double(), -1)
                    p = logp.exp()
                    negh.append((p * logp).sum(-1))
                    rows.append(sum(p[:, lo : lo + 16384] @ self.head[lo : lo + 16384].double()
                                    for lo in range(0, self.head.shape[0], 16384)))
                    if self.delta:
                        logits.append(z)
                self.neg_entropy.append(torch.cat(negh))
                self.mean_row.append(torch.cat(rows))
                if self.delta:
                    self.dense_logits.append(torch.cat(logits))
                    self.dense_hidden.append(self.replay.dense_final(b).flatten(0, 1).float())

    @torch.no_grad()
    def kl(self, index: int, ffn_keep=None, kv_keep=None, drop: bool = False) -> float:
        """Mean per-token KL in nats with layer `index` changed (channels outside *_keep zeroed, or dropped)."""
        total, count = 0.0, 0
        with self.replay.changed({index: Change(ffn_keep, kv_keep, drop)}) as (first, skip):
            for b in range(len(self.replay)):
                h = self.replay.final(b, first, skip, self.depth).flatten(0, 1).float()
                if self.delta:
                    change = (h - self.dense_hidden[b]).to(self.dtype)
                    lse = torch.logsumexp(self.dense_logits[b] + (change @ self.head_lowp.T).float(), -1)
                else:
                    lse = torch.logsumexp(h @ self.head.T, -1)
                cross = (h.double() * self.mean_row[b]).sum(-1)  # sum_v p_v z_v
                total += (self.neg_entropy[b] - cross + lse.double()).sum().item()
                count += h.shape[0]
        return max(total / max(count, 1), 0.0)  # >= 0 in exact arithmetic; rounding can leave -1e-9


def measure_kl_tables(kl: LayerwiseKL, scores: Scores, shape: ModelShape, opts: PlanOptions, progress=True):
    """Per layer: KL at each allowed FFN width (measured at kl_levels, interpolated between),
    at each KV-group count, and with the layer dropped."""
    widths = opts.widths(shape)
    measured_idx = sorted({round(i * (len(widths) - 1) / max(opts.kl_levels, 1)) for i in range(1, opts.kl_levels + 1)})
    measured_idx = [i for i in measured_idx if i > 0]
    kv_counts = opts.kv_counts(shape)
    n_evals = shape.num_hidden_layers * (len(measured_idx) + len(kv_counts) - 1 + int(opts.drop_layers))
    bar = tqdm(total=n_evals, desc="KL of candidate changes", disable=not progress)
    ffn_kl, kv_kl, drop_kl = [], [], []
    for i in range(shape.num_hidden_layers):
        pts = {0: 0.0}
        for k in measured_idx:
            pts[k] = kl.kl(i, ffn_keep=keep_top(scores.ffn[i], widths[k]))
            bar.update()
        xs = sorted(pts)
        ffn_kl.append(np.interp(np.arange(len(widths)), xs, [pts[x] for x in xs]))
        row = [0.0]
        for g in kv_counts[1:]:
            row.append(kl.kl(i, kv_keep=keep_top(scores.kv[i], g)))
            bar.update()
        kv_kl.append(row)
        if opts.drop_layers:
            drop_kl.append(kl.kl(i, drop=True))
            bar.update()
    bar.close()
    return {"ffn_widths": widths, "kv_counts": kv_counts, "ffn": [list(map(float, r)) for r in ffn_kl],
            "kv": kv_kl, "drop": drop_kl, "replay_dtype": str(kl.dtype).removeprefix("torch.")}
