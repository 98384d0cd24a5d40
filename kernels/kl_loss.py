"""Differentiable KL(dense || pruned) distillation loss from final hidden states and two LM heads, chunked.

Op (one name across wrapper, test and recovery loop):
  kl_loss(h_dense[T, H], w_dense[V, H], h_pruned[T, Hp], w_pruned[K, Hp], kept_ids[K] | None,
          weights[T] | None, labels[T] | None, ce_weight, chunk, parts) -> scalar
      = sum_t w_t (KL(p_t || q_t) + ce_weight * CE(q_t, labels_t)) / sum_t w_t
  (parts=True: (that scalar, its KL term alone, without gradient), for logging what the CE term hides)

p = softmax of the dense logits restricted to the kept ids (renormalised), q = softmax of the pruned logits,
both indexed by pruned id k (dense id kept_ids[k]): a pruned vocabulary is compared over the ids it kept, as
evaluate.agreement does. The dense side is the teacher: a constant (no gradient flows into it).

Memory: the forward pass walks the tokens in chunks and keeps only the two log-normalisers per token [T]; the
backward pass recomputes each chunk's logits and uses d loss / d logit_q = w_t (q - p + ce_weight (q - onehot)),
so no T x V tensor ever exists, only chunk x V (extra memory O(T + chunk x V) besides the gradients of the
inputs). FLOPs: forward 2 T (H V + Hp K), backward the same again plus 2 x 2 T Hp K for the two gradients.
Torch only (every backend runs this code): the chunked GEMMs are cuBLAS / MKL calls already; a fused Triton
forward exists for the no-gradient case (kl.py).
"""
from __future__ import annotations

from typing import Optional

import torch

from .dispatch import call, register


def _chunk_logits(hd, wd, hp, wp, kept, s, e):
    ld = hd[s:e].float() @ wd.float().T  # [t, V]
    if kept is not None:
        ld = ld.index_select(1, kept)  # [t, K]
    lq = hp[s:e].float() @ wp.float().T  # [t, K]
    return ld, lq


class _KLLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_dense, w_dense, h_pruned, w_pruned, kept_ids, scale, labels, ce_weight, chunk):
        T = h_pruned.shape[0]
        lse_p = torch.empty(T, device=h_pruned.device)
        lse_q = torch.empty(T, device=h_pruned.device)
        total = torch.zeros((), device=h_pruned.device, dtype=torch.float64)
        kl_total = torch.zeros((), device=h_pruned.device, dtype=torch.float64)
        for s in range(0, T, chunk):
            e = min(s + chunk, T)
            ld, lq = _chunk_logits(h_dense, w_dense, h_pruned, w_pruned, kept_ids, s, e)
            lse_p[s:e] = torch.logsumexp(ld, -1)
            lse_q[s:e] = torch.logsumexp(lq, -1)
            logp = ld - lse_p[s:e, None]
            logq = lq - lse_q[s:e, None]
            per_tok = (logp.exp() * (logp - logq)).sum(-1)  # [t] KL
            kl_total += (scale[s:e] * per_tok).sum().double()
            if labels is not None and ce_weight:
                lab = labels[s:e]
                ok = lab >= 0
                ce = -logq.gather(1, lab.clamp_min(0)[:, None])[:, 0]
                per_tok = per_tok + ce_weight * torch.where(ok, ce, torch.zeros_like(ce))
            total += (scale[s:e] * per_tok).sum().double()
        ctx.save_for_backward(h_dense, w_dense, h_pruned, w_pruned, kept_ids, scale, labels, lse_p, lse_q)
        ctx.ce_weight, ctx.chunk = ce_weight, chunk
        kl_part = kl_total.float()
        ctx.mark_non_differentiable(kl_part)
        return total.float(), kl_part

    @staticmethod
    def backward(ctx, grad, _grad_kl_part):
        hd, wd, hp, wp, kept, scale, labels, lse_p, lse_q = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        T = hp.shape[0]
        dh = torch.zeros(hp.shape, device=hp.device, dtype=torch.float32) if need_h else None
        dw = torch.zeros(wp.shape, device=wp.device, dtype=torch.float32) if need_w else None
        for s in range(0, T, ctx.chunk):
            e = min(s + ctx.chunk, T)
            ld, lq = _chunk_logits(hd, wd, hp, wp, kept, s, e)
            q = (lq - lse_q[s:e, None]).exp()
            dl = q - (ld - lse_p[s:e, None]).exp()  # d KL / d logit_q = q - p
            if labels is not None and ctx.ce_weight:
                lab = labels[s:e]
                ok = (lab >= 0).float()[:, None]
                onehot = torch.zeros_like(q).scatter_(1, lab.clamp_min(0)[:, None], 1.0)
                dl = dl + ctx.ce_weight * ok * (q - onehot)
            dl = dl * (scale[s:e] * grad)[:, None]  # [t, K]
            if need_h:
                dh[s:e] = dl @ wp.float()
            if need_w:
                dw += dl.T @ hp[s:e].float()
        return (None, None, dh.to(hp.dtype) if need_h else None, dw.to(wp.dtype) if need_w else None,
                None, None, None, None, None)


def _kl_loss_torch(h_dense, w_dense, h_pruned, w_pruned, kept_ids=None, weights=None, labels=None,
                   ce_weight: float = 0.0, chunk: int = 256, parts: bool = False):
    T = h_pruned.shape[0]
    if h_dense.shape[0] != T:
        raise ValueError(f"h_dense has {h_dense.shape[0]} tokens, h_pruned {T}")
    if w_dense.shape[1] != h_dense.shape[1] or w_pruned.shape[1] != h_pruned.shape[1]:
        raise ValueError(f"head/hidden mismatch: w_dense {tuple(w_dense.shape)} h_dense {tuple(h_dense.shape)} "
                         f"w_pruned {tuple(w_pruned.shape)} h_pruned {tuple(h_pruned.shape)}")
    K, V = w_pruned.shape[0], w_dense.shape[0]
    if kept_ids is None and K != V:
        raise ValueError(f"kept_ids is needed when the vocabularies differ ({V} dense, {K} pruned)")
    if kept_ids is not None:
        kept_ids = kept_ids.to(device=h_dense.device, dtype=torch.long)
        if kept_ids.shape != (K,) or (K and int(kept_ids.max()) >= V):
            raise ValueError(f"kept_ids must hold one dense id (< {V}) per pruned row ({K})")
    w = torch.ones(T, device=h_pruned.device) if weights is None else weights.to(h_pruned.device).float()
    scale = w / w.sum().clamp_min(1e-12)
    if labels is not None:
        labels = labels.to(h_pruned.device, torch.long)
    total, kl_part = _KLLoss.apply(h_dense.detach(), w_dense.detach(), h_pruned, w_pruned, kept_ids, scale.detach(),
                                   labels, float(ce_weight), int(chunk))
    return (total, kl_part) if parts else total


register("kl_loss", torch_impl=_kl_loss_torch)


def kl_loss(
    h_dense: torch.Tensor,
    w_dense: torch.Tensor,
    h_pruned: torch.Tensor,
    w_pruned: torch.Tensor,
    kept_ids: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    ce_weight: float = 0.0,
    chunk: int = 256,
    parts: bool = False,
):
    """Weighted mean over tokens of KL(dense restricted to kept ids || pruned) (+ ce_weight x cross-entropy of
    the pruned model on `labels`, pruned ids, -100 ignored); differentiable in h_pruned and w_pruned, never
    materialising T x V logits (chunk tokens at a time). weights[T]: per-token weights (0 masks a token).
    parts=True returns (loss, its KL term alone) — the second without gradient, for logging."""
    return call("kl_loss", h_dense, w_dense, h_pruned, w_pruned, kept_ids, weights, labels, ce_weight, chunk, parts)
