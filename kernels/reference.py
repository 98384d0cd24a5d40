"""Pure-torch reference implementations of greenprune's ops (and the CPU fallback).

Each function here has the same name and semantics as the dispatched op exported by greenprune.kernels;
the Triton kernels are tested against these.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F


# --- channel statistics -----------------------------------------------------------------------------------
def channel_moments(
    x: torch.Tensor, shift: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel (sum, sum of squares, abs-max) over all leading dims of x[..., C], accumulated in fp32.

    shift[C] (optional): sum and sum of squares are of (x - shift), which keeps the variance accurate when a
    channel's mean is large against its spread (ChannelStats passes its running mean). abs-max is of x itself.
    """
    x2 = x.reshape(-1, x.shape[-1]).float()  # [N, C]
    if x2.shape[0] == 0:
        z = torch.zeros(x2.shape[1], device=x.device)
        return z, z.clone(), z.clone()
    d = x2 if shift is None else x2 - shift.float()
    return d.sum(0), (d * d).sum(0), x2.abs().amax(0)


def wanda_scores(weight: torch.Tensor, act_l2: torch.Tensor, group_size: int = 1) -> torch.Tensor:
    """Wanda-sp: score[c] = sum_o |W[o, c]| * ||x_c||_2 for weight[O, C] (a layer's input channels are its
    columns), summed over contiguous groups of `group_size` channels (a KV group: head_dim * heads per group).
    Returns [C // group_size] fp32."""
    return group_sum(weight.float().abs().sum(0) * act_l2.float(), group_size)


def taylor_scores(weight: torch.Tensor, grad: torch.Tensor, dim: int, group_size: int = 1,
                  signed: bool = False) -> torch.Tensor:
    """First-order Taylor importance of a weight's channels: sum of |W * dL/dW| (signed: of W * dL/dW, which a
    Fisher estimate squares per sample) over `dim` (0: per input channel / column, 1: per output channel / row),
    summed over groups of `group_size` contiguous channels. Returns fp32 [channels // group_size]."""
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (per column) or 1 (per row), got {dim}")
    if weight.shape != grad.shape or weight.dim() != 2:
        raise ValueError(f"weight {tuple(weight.shape)} and grad {tuple(grad.shape)} must be the same 2-D shape")
    p = weight.float() * grad.float()
    return group_sum((p if signed else p.abs()).sum(dim), group_size)


def group_sum(per_channel: torch.Tensor, group_size: int) -> torch.Tensor:
    """[C] -> [C // group_size]: sums of contiguous groups of channels (group_size must divide C)."""
    if group_size < 1 or per_channel.shape[-1] % group_size:
        raise ValueError(f"group_size {group_size} does not divide {per_channel.shape[-1]} channels")
    return per_channel.reshape(*per_channel.shape[:-1], -1, group_size).sum(-1)


# --- KL between a dense and a vocabulary-pruned model -----------------------------------------------------
class KLResult(NamedTuple):
    kl: torch.Tensor  # [T] KL(dense restricted to kept ids, renormalised || pruned), nats
    dropped_mass: torch.Tensor  # [T] dense probability mass on ids the pruned vocabulary dropped
    argmax_dense: torch.Tensor  # [T] argmax of the dense logits over the kept ids (pruned id space)
    argmax_pruned: torch.Tensor  # [T] argmax of the pruned logits (pruned id space)


def kl_divergence(
    h_dense: torch.Tensor,
    w_dense: torch.Tensor,
    h_pruned: torch.Tensor,
    w_pruned: torch.Tensor,
    kept_ids: Optional[torch.Tensor] = None,
    chunk: int = 1024,
) -> KLResult:
    """Per-token KL(dense || pruned) from final hidden states [T, H] and LM heads [V, H] / [K, H].

    kept_ids[K] maps pruned vocabulary rows to dense ids (None: same vocabulary). Tokens are processed in
    chunks so only chunk x vocab logits exist at a time.
    """
    outs = []
    for s in range(0, h_dense.shape[0], chunk):
        ld = h_dense[s : s + chunk].float() @ w_dense.float().T  # [t, V]
        lp = h_pruned[s : s + chunk].float() @ w_pruned.float().T  # [t, K]
        outs.append(kl_from_logits(ld, lp, kept_ids)[0])
    if not outs:
        dev = h_dense.device
        z, i = torch.zeros(0, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
        return KLResult(z, z.clone(), i, i.clone())
    return KLResult(*[torch.cat(t) for t in zip(*outs)])


def token_nll(logits: torch.Tensor, ids: torch.Tensor, lse: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-window summed next-token NLL [B] of windows ids [B, L] under logits [B, L, V] (lse: their logsumexp)."""
    lse = torch.logsumexp(logits[:, :-1], -1) if lse is None else lse[:, :-1]
    return (lse - logits[:, :-1].gather(2, ids[:, 1:, None])[..., 0]).sum(1)


def kl_from_logits(
    ld: torch.Tensor, lp: torch.Tensor, kept_ids: Optional[torch.Tensor] = None
) -> tuple[KLResult, torch.Tensor, torch.Tensor]:
    """kl_divergence's per-token results from fp32 logits already computed, dense [T, V] and pruned [T, K], and
    the two logsumexps [T] (dense over all V, pruned over K): what a caller that also needs the models'
    likelihoods (the evaluation) shares instead of computing the head products twice."""
    lse_full = torch.logsumexp(ld, -1)
    ld_kept = ld if kept_ids is None else ld[:, kept_ids]  # [T, K]
    lse_kept = lse_full if kept_ids is None else torch.logsumexp(ld_kept, -1)
    logp = ld_kept - lse_kept[:, None]
    lse_p = torch.logsumexp(lp, -1)
    logq = lp - lse_p[:, None]
    kl = (logp.exp() * (logp - logq)).sum(-1)
    dropped = (1.0 - torch.exp(lse_kept - lse_full)).clamp_min(0.0)
    return KLResult(kl, dropped, ld_kept.argmax(-1), lp.argmax(-1)), lse_full, lse_p


# --- serving a pruned model -------------------------------------------------------------------------------
def fuse_gate_up(w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """[F, H] + [F, H] -> the concatenated [2F, H] weight swiglu_ffn takes (gate rows first)."""
    return torch.cat([w_gate, w_up], 0)


def swiglu_ffn(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Llama FFN: down(silu(x @ Wg.T) * (x @ Wu.T)) for x[..., H], w_gate_up[2F, H] = [Wg; Wu], w_down[H, F]."""
    w_gate, w_up = w_gate_up.chunk(2, 0)
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def remap_ids(ids: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
    """Original ids -> kept (pruned) ids through id_map[V_orig] (-1 = dropped); -1 for dropped/out-of-range."""
    v = id_map.shape[0]
    valid = (ids >= 0) & (ids < v)
    return torch.where(valid, id_map[ids.clamp(0, v - 1)].long(), torch.full_like(ids, -1, dtype=torch.long))


def remapped_embedding(
    ids: torch.Tensor, id_map: torch.Tensor, weight: torch.Tensor, fallback: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding of original token ids[...] in a pruned table weight[K, H] through id_map[V_orig].

    Returns (embeddings [..., H], kept ids [...] with -1 for ids that are dropped or outside [0, V_orig)).
    Rows of such ids are weight[fallback] when fallback >= 0 (e.g. the pruned unk id), else zeros.
    """
    kept = remap_ids(ids, id_map)
    rows = torch.where(kept >= 0, kept, torch.full_like(kept, max(fallback, 0)))
    out = weight[rows]
    if fallback < 0:
        out = out.masked_fill((kept < 0)[..., None], 0)
    return out, kept


def compact_logits(h: torch.Tensor, w_kept: torch.Tensor) -> torch.Tensor:
    """Logits over the kept vocabulary only, [..., K] fp32 (sample in kept space, then map with kept_ids)."""
    return F.linear(h, w_kept).float()


def _to_original(idx: torch.Tensor, kept_ids: Optional[torch.Tensor]) -> torch.Tensor:
    return idx if kept_ids is None else kept_ids.long()[idx]


def lm_head_argmax(h: torch.Tensor, w_kept: torch.Tensor, kept_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Greedy next token: argmax over kept rows of h[..., H] @ w_kept[K, H].T, as ORIGINAL ids [...] (int64)."""
    return _to_original((h.float() @ w_kept.float().T).argmax(-1), kept_ids)


def lm_head_topk(
    h: torch.Tensor, w_kept: torch.Tensor, kept_ids: Optional[torch.Tensor] = None, k: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k logits over kept rows: (values [..., k] fp32, descending; ORIGINAL ids [..., k] int64)."""
    vals, idx = (h.float() @ w_kept.float().T).topk(k, -1)
    return vals, _to_original(idx, kept_ids)
