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
from ..scoring.scorers import Scores
from .options import PlanOptions
from .plan import keep_top
from .replay import Change, LayerReplay


class LayerwiseKL:
    """KL(dense || dense with one layer changed) on cached calibration activations."""

    def __init__(self, model, blocks: torch.Tensor, vocab_keep: Optional[list[int]] = None, batch_size: int = 4,
                 depth: int = 0):
        self.depth = depth  # 0: exact (every layer above the change re-run); else the bounded proxy (replay.final)
        self.replay = LayerReplay(model, blocks, batch_size)
        head = self.replay.family.lm_head(model).weight
        self.head = head if vocab_keep is None else head[torch.as_tensor(vocab_keep)]
        # the dense log-probabilities, computed once: every candidate then costs one head product, not two
        # (the head is a third of SmolLM2-135M's parameters; kl_tokens x vocabulary x 4 bytes, 100 MB by default)
        with torch.no_grad():
            self.dense_logp = [torch.log_softmax(self.replay.dense_final(b).flatten(0, 1).float() @ self.head.float().T, -1)
                               for b in range(len(self.replay))]

    @torch.no_grad()
    def kl(self, index: int, ffn_keep=None, kv_keep=None, drop: bool = False) -> float:
        """Mean per-token KL in nats with layer `index` changed (channels outside *_keep zeroed, or dropped)."""
        total, count = 0.0, 0
        with self.replay.changed({index: Change(ffn_keep, kv_keep, drop)}) as (first, skip):
            for b in range(len(self.replay)):
                h = self.replay.final(b, first, skip, self.depth).flatten(0, 1)
                logp = self.dense_logp[b]
                logq = torch.log_softmax(h.float() @ self.head.float().T, -1)
                total += (logp.exp() * (logp - logq)).sum().item()
                count += h.shape[0]
        return total / max(count, 1)


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
            "kv": kv_kl, "drop": drop_kl}
