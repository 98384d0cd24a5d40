"""Fused KL(dense || vocabulary-pruned) from final hidden states and two LM heads, without T x V logits.

Op (one name across kernel, custom op, test and bench):
  kl_divergence(h_dense[T, H], w_dense[V, H], h_pruned[T, H], w_pruned[K, H], kept_ids[K] | None)
      -> KLResult(kl[T], dropped_mass[T], argmax_dense[T], argmax_pruned[T])

p = softmax of the dense logits restricted to the kept ids, q = softmax of the pruned logits, both indexed by
pruned id k (dense id kept_ids[k]). With ld / lq the two logits and Z their normalisers,
    KL(p || q) = sum_k p_k (ld_k - lq_k) - log Z_p + log Z_q,
so one pass keeps, per token, online log-sum-exp state (running max m, sum of exp s) for p, q and the dropped
dense ids, plus a_p = sum_k exp(ld_k - m_p) (ld_k - lq_k) rescaled with s_p, and running argmaxes.

Kernel: program (token block, vocab split) loops over its kept ids in BLOCK_V blocks (dense rows gathered
by kept_ids; hidden states and pruned rows by TMA descriptors, so H must be a multiple of 8 for 16-bit inputs,
else the torch reference runs), two tl.dot accumulators over H, then over its share of the dropped
dense ids (lse only). Splitting the vocabulary keeps the device full when T is small; the [SPLIT, T]
partial states merge in torch (exact log-sum-exp algebra). Extra memory: O(T x SPLIT + V) (+ the inputs).
FLOPs: 2 T H (V + K), the minimum (each dense row is multiplied once, each pruned row once).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference as ref
from .dispatch import (call, cdiv, dot_modes, ensure_tma_allocator, lazy_jit, note_fallback, register, round_up, tl,
                       tma_compatible, triton, use_autotune, vocab_split)
from .reference import KLResult

_NSTAT = 9  # m_p, s_p, a_p, m_q, s_q, m_r, s_r, best_p, best_q


@lazy_jit
def _kl_divergence_kernel(
    hd_ptr, wd_ptr, hp_ptr, wp_ptr, kept_ptr, drop_ptr, stat_ptr, arg_ptr,  # stat[9, S, T] f32, arg[2, S, T] i32
    T, H, K, D, stride_hd, stride_wd, stride_hp, stride_wp, k_per_split, d_per_split,
    HAS_IDS: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_t, pid_s, n_split = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
    t0 = pid_t * BLOCK_T
    offs_t = t0 + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    tmask = offs_t < T
    offs_h = tl.arange(0, BLOCK_H)
    offs_v = tl.arange(0, BLOCK_V)
    # contiguous operands through TMA descriptors (zeros past T, K and H); gathered dense rows by pointers
    hd_desc = tl.make_tensor_descriptor(hd_ptr, shape=[T, H], strides=[stride_hd, 1], block_shape=[BLOCK_T, BLOCK_H])
    hp_desc = tl.make_tensor_descriptor(hp_ptr, shape=[T, H], strides=[stride_hp, 1], block_shape=[BLOCK_T, BLOCK_H])
    wp_desc = tl.make_tensor_descriptor(wp_ptr, shape=[K, H], strides=[stride_wp, 1], block_shape=[BLOCK_V, BLOCK_H])
    if not HAS_IDS:  # same vocabulary: dense row k is contiguous too
        wd_desc = tl.make_tensor_descriptor(wd_ptr, shape=[K, H], strides=[stride_wd, 1],
                                            block_shape=[BLOCK_V, BLOCK_H])
    neg = float("-inf")
    m_p = tl.full([BLOCK_T], neg, tl.float32)
    s_p = tl.zeros([BLOCK_T], tl.float32)
    a_p = tl.zeros([BLOCK_T], tl.float32)
    m_q = tl.full([BLOCK_T], neg, tl.float32)
    s_q = tl.zeros([BLOCK_T], tl.float32)
    best_p = tl.full([BLOCK_T], neg, tl.float32)
    best_q = tl.full([BLOCK_T], neg, tl.float32)
    arg_p = tl.zeros([BLOCK_T], tl.int32)
    arg_q = tl.zeros([BLOCK_T], tl.int32)

    # ---- kept ids [k_lo, k_hi): dense (gathered) and pruned logits side by side -------------------------
    k_lo = pid_s * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    for v0 in range(0, k_per_split, BLOCK_V):
        ids = k_lo + v0 + offs_v  # pruned ids [BLOCK_V]
        vmask = ids < k_hi
        if HAS_IDS:
            rows_d = tl.load(kept_ptr + ids, mask=vmask, other=0)
            wd_off = rows_d[None, :] * stride_wd  # [1, BLOCK_V] int32: the launcher checks V * H < 2^31
        acc_d = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        acc_q = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        for h0 in range(0, H, BLOCK_H):
            xd = hd_desc.load([t0, h0])  # [BLOCK_T, BLOCK_H]
            xp = hp_desc.load([t0, h0])
            wp = wp_desc.load([k_lo + v0, h0]).T  # [BLOCK_H, BLOCK_V]
            if HAS_IDS:
                hh = h0 + offs_h
                wd = tl.load(wd_ptr + (wd_off + hh[:, None]), mask=(hh < H)[:, None] & vmask[None, :], other=0.0)
            else:
                wd = wd_desc.load([k_lo + v0, h0]).T
            if UPCAST:
                xd, xp, wd, wp = xd.to(tl.float32), xp.to(tl.float32), wd.to(tl.float32), wp.to(tl.float32)
            acc_d = tl.dot(xd, wd, acc_d, input_precision=PREC)
            acc_q = tl.dot(xp, wp, acc_q, input_precision=PREC)
        ld = tl.where(vmask[None, :], acc_d, neg)  # [BLOCK_T, BLOCK_V]
        lq = tl.where(vmask[None, :], acc_q, neg)
        tmax_p = tl.max(ld, axis=1)
        tmax_q = tl.max(lq, axis=1)
        up = tmax_p > best_p  # strict: the earliest id wins ties
        arg_p = tl.where(up, tl.argmax(ld, axis=1) + k_lo + v0, arg_p)
        best_p = tl.where(up, tmax_p, best_p)
        uq = tmax_q > best_q
        arg_q = tl.where(uq, tl.argmax(lq, axis=1) + k_lo + v0, arg_q)
        best_q = tl.where(uq, tmax_q, best_q)
        # online log-sum-exp of p, with the KL numerator rescaled alongside s_p
        m_new = tl.maximum(m_p, tmax_p)
        m_use = tl.where(m_new == neg, 0.0, m_new)  # an all-masked block leaves the state at (-inf, 0)
        alpha = tl.exp(m_p - m_use)
        e = tl.exp(ld - m_use[:, None])
        s_p = s_p * alpha + tl.sum(e, axis=1)
        a_p = a_p * alpha + tl.sum(tl.where(vmask[None, :], e * (acc_d - acc_q), 0.0), axis=1)
        m_p = m_new
        m_new = tl.maximum(m_q, tmax_q)
        m_use = tl.where(m_new == neg, 0.0, m_new)
        s_q = s_q * tl.exp(m_q - m_use) + tl.sum(tl.exp(lq - m_use[:, None]), axis=1)
        m_q = m_new

    # ---- dropped dense ids [d_lo, d_hi): only their log-sum-exp --------------------------------------------
    m_r = tl.full([BLOCK_T], neg, tl.float32)
    s_r = tl.zeros([BLOCK_T], tl.float32)
    if HAS_IDS:
        d_lo = pid_s * d_per_split
        d_hi = tl.minimum(d_lo + d_per_split, D)
        for v0 in range(0, d_per_split, BLOCK_V):
            ids = d_lo + v0 + offs_v
            vmask = ids < d_hi
            wd_off = tl.load(drop_ptr + ids, mask=vmask, other=0)[None, :] * stride_wd  # [1, BLOCK_V] int32
            acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
            for h0 in range(0, H, BLOCK_H):
                hh = h0 + offs_h
                xd = hd_desc.load([t0, h0])
                wd = tl.load(wd_ptr + (wd_off + hh[:, None]), mask=(hh < H)[:, None] & vmask[None, :], other=0.0)
                if UPCAST:
                    xd, wd = xd.to(tl.float32), wd.to(tl.float32)
                acc = tl.dot(xd, wd, acc, input_precision=PREC)
            lr = tl.where(vmask[None, :], acc, neg)
            m_new = tl.maximum(m_r, tl.max(lr, axis=1))
            m_use = tl.where(m_new == neg, 0.0, m_new)
            s_r = s_r * tl.exp(m_r - m_use) + tl.sum(tl.exp(lr - m_use[:, None]), axis=1)
            m_r = m_new

    out = stat_ptr + pid_s * T + offs_t  # field f of split s at stat[f, s, t]
    step = n_split * T
    tl.store(out, m_p, mask=tmask)
    tl.store(out + step, s_p, mask=tmask)
    tl.store(out + 2 * step, a_p, mask=tmask)
    tl.store(out + 3 * step, m_q, mask=tmask)
    tl.store(out + 4 * step, s_q, mask=tmask)
    tl.store(out + 5 * step, m_r, mask=tmask)
    tl.store(out + 6 * step, s_r, mask=tmask)
    tl.store(out + 7 * step, best_p, mask=tmask)
    tl.store(out + 8 * step, best_q, mask=tmask)
    tl.store(arg_ptr + pid_s * T + offs_t, arg_p, mask=tmask)
    tl.store(arg_ptr + step + pid_s * T + offs_t, arg_q, mask=tmask)


def _kl_configs():
    # Two fp32 accumulators plus the online-softmax temporaries per tile: 128 x 64 tiles (8 warps) stay within
    # 255 registers with the gathered dense rows; 128 x 128 spills a little there but not without kept_ids.
    return [
        triton.Config({"BLOCK_T": bt, "BLOCK_V": bv, "BLOCK_H": bh}, num_warps=w, num_stages=s)
        for bt, bv, bh, w, s in [(128, 64, 64, 8, 3), (128, 64, 32, 8, 4), (64, 64, 64, 4, 4), (128, 128, 64, 8, 3)]
    ]


_V_GRANULE = 128  # vocab splits are multiples of this (every config's BLOCK_V divides it)
_INTERP_META = dict(BLOCK_T=16, BLOCK_V=32, BLOCK_H=32)  # tl.dot needs >= 16 per dim


def _merge_lse(m: torch.Tensor, s: torch.Tensor, *rescaled: torch.Tensor):
    """Merge online log-sum-exp states over the split axis: m, s, extra [S, T] -> lse [T], extra / s [T]."""
    mx = m.amax(0)
    mx_use = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    w = torch.exp(m - mx_use)  # [S, T]; 0 for empty splits (m = -inf)
    tot = (s * w).sum(0)
    return (mx_use + tot.log(), *[(r * w).sum(0) / tot for r in rescaled])


def _combine(stat: torch.Tensor, arg: torch.Tensor) -> KLResult:
    """stat[9, S, T], arg[2, S, T] -> KLResult."""
    lse_p, mean_diff = _merge_lse(stat[0], stat[1], stat[2])  # mean_diff = E_p[ld - lq]
    (lse_q,) = _merge_lse(stat[3], stat[4])
    (lse_r,) = _merge_lse(stat[5], stat[6])  # -inf when nothing was dropped
    kl = mean_diff - lse_p + lse_q
    dropped = torch.exp(lse_r - torch.logaddexp(lse_p, lse_r))
    pick = lambda best, idx: idx.gather(0, best.argmax(0, keepdim=True))[0].long()  # noqa: E731 - first max
    return KLResult(kl, dropped, pick(stat[7], arg[0]), pick(stat[8], arg[1]))


def _launch_kl_divergence(h_dense, w_dense, h_pruned, w_pruned, kept_ids) -> KLResult:
    T, H = h_dense.shape
    V, K = w_dense.shape[0], w_pruned.shape[0]
    if h_pruned.shape != (T, H) or w_dense.shape[1] != H or w_pruned.shape[1] != H:
        raise ValueError(f"shapes: h_dense {tuple(h_dense.shape)} w_dense {tuple(w_dense.shape)} "
                         f"h_pruned {tuple(h_pruned.shape)} w_pruned {tuple(w_pruned.shape)}")
    if kept_ids is None and K != V:
        raise ValueError(f"kept_ids is needed when the vocabularies differ ({V} dense, {K} pruned)")
    if kept_ids is not None and kept_ids.shape != (K,):
        raise ValueError(f"kept_ids {tuple(kept_ids.shape)} must have one dense id per pruned row ({K})")
    if T == 0 or K == 0:
        return ref.kl_divergence(h_dense, w_dense, h_pruned, w_pruned, kept_ids)
    dt = h_dense.dtype  # tl.dot wants both operands in one dtype
    hd, wd, hp, wp = (t.to(dt) if t.stride(-1) == 1 else t.to(dt).contiguous() for t in (h_dense, w_dense, h_pruned, w_pruned))
    if wd.shape[0] * wd.stride(0) >= 2**31:  # gathered dense rows use int32 offsets
        note_fallback("kl_divergence", "the dense head has 2^31 elements or more")
        return ref.kl_divergence(h_dense, w_dense, h_pruned, w_pruned, kept_ids)
    if not tma_compatible(hd, wd, hp, wp):
        note_fallback("kl_divergence", "operands are not 16-byte aligned for TMA (H a multiple of 8 for 16-bit)")
        return ref.kl_divergence(h_dense, w_dense, h_pruned, w_pruned, kept_ids)
    dev = hd.device
    if kept_ids is not None:
        kept = kept_ids.to(device=dev, dtype=torch.int32).contiguous()
        is_dropped = torch.ones(V, dtype=torch.bool, device=dev)
        is_dropped[kept_ids.to(dev).long()] = False
        drop = is_dropped.nonzero().squeeze(1).to(torch.int32)  # [D] dense ids no pruned row maps to
    else:
        kept = drop = torch.zeros(1, dtype=torch.int32, device=dev)
    D = drop.numel() if kept_ids is not None else 0

    tuned = use_autotune(hd, wd, hp, wp)
    granule = _V_GRANULE if tuned else _INTERP_META["BLOCK_V"]
    t_blocks = cdiv(T, 128 if tuned else _INTERP_META["BLOCK_T"])
    split, k_per_split = vocab_split(hd, t_blocks, K, granule)
    d_per_split = round_up(cdiv(D, split), granule) if D else 0

    stat = torch.empty(_NSTAT, split, T, device=dev, dtype=torch.float32)  # [9, S, T]
    arg = torch.empty(2, split, T, device=dev, dtype=torch.int32)  # [2, S, T]
    args = (hd, wd, hp, wp, kept, drop, stat, arg, T, H, K, D,
            hd.stride(0), wd.stride(0), hp.stride(0), wp.stride(0), k_per_split, d_per_split)
    meta = dict(HAS_IDS=kept_ids is not None, **dot_modes(dt))
    if hd.is_cuda:
        ensure_tma_allocator()
    if tuned:
        grid = lambda m: (cdiv(T, m["BLOCK_T"]), split)  # noqa: E731
        _kl_divergence_kernel.tuned(_kl_configs, key=["T", "H", "K", "D"])[grid](*args, **meta)
    else:
        _kl_divergence_kernel[(cdiv(T, _INTERP_META["BLOCK_T"]), split)](*args, **meta, **_INTERP_META)
    return _combine(stat, arg)


@torch.library.custom_op("greenprune::kl_divergence", mutates_args=())
def _kl_divergence_op(
    h_dense: torch.Tensor, w_dense: torch.Tensor, h_pruned: torch.Tensor, w_pruned: torch.Tensor,
    kept_ids: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(_launch_kl_divergence(h_dense, w_dense, h_pruned, w_pruned, kept_ids))


@_kl_divergence_op.register_fake
def _(h_dense, w_dense, h_pruned, w_pruned, kept_ids):
    t = h_dense.shape[0]
    f = lambda dtype: h_dense.new_empty(t, dtype=dtype)  # noqa: E731
    return f(torch.float32), f(torch.float32), f(torch.int64), f(torch.int64)


def _triton_kl(h_dense, w_dense, h_pruned, w_pruned, kept_ids=None, chunk=1024):
    return KLResult(*torch.ops.greenprune.kl_divergence(h_dense, w_dense, h_pruned, w_pruned, kept_ids))


register("kl_divergence", torch_impl=ref.kl_divergence, triton_impl=_triton_kl)


def kl_divergence(
    h_dense: torch.Tensor,
    w_dense: torch.Tensor,
    h_pruned: torch.Tensor,
    w_pruned: torch.Tensor,
    kept_ids: Optional[torch.Tensor] = None,
    chunk: int = 1024,
) -> KLResult:
    """Per-token KL(dense restricted to kept ids, renormalised || pruned), the dense mass on dropped ids and
    both argmaxes (pruned id space), from hidden states [T, H] and LM heads [V, H] / [K, H]; never builds
    T x V logits. kept_ids[K]: dense id of each pruned row (None: same vocabulary). chunk: tokens per
    step of the torch fallback (the Triton kernel streams the vocabulary instead)."""
    return call("kl_divergence", h_dense, w_dense, h_pruned, w_pruned, kept_ids, chunk)
