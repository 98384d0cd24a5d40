"""Serving a vocabulary-pruned model: remapped embedding gather and LM heads over the kept rows only.

Ops (one name each across kernel, custom op, test and bench):
  remapped_embedding(ids[...], id_map[V_orig], weight[K, H]) -> [..., H]   original ids in, kept rows out
  lm_head_argmax(h[..., H], w_kept[K, H], kept_ids[K] | None) -> [...]       greedy ORIGINAL ids, int64
  lm_head_topk(h[..., H], w_kept[K, H], kept_ids, k) -> (values[..., k], ORIGINAL ids[..., k])
and, without a kernel of its own (a plain cuBLAS GEMM is already at the ceiling), compact_logits(h, w_kept)
-> [..., K] fp32 for sampling in kept space; map a sampled kept id back with to_original_ids.

The LM-head kernels never write logits: a program (token block, vocab slice) streams its kept rows in
BLOCK_V blocks (TMA descriptors: H a multiple of 8 for 16-bit inputs, else the torch reference) through tl.dot and keeps a running argmax (or a running top-k, k small, by k rounds of
max-and-replace-the-minimum per block) in registers; the [SPLIT, T(, k)] partials merge in torch. Cost is
proportional to K, so the speed-up over a full-vocabulary head approaches V / K.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference as ref
from .dispatch import (call, cdiv, dot_modes, ensure_tma_allocator, lazy_jit, note_fallback, register, tl, tma_compatible,
                       triton, use_autotune, vocab_split)

compact_logits = ref.compact_logits
remap_ids = ref.remap_ids
_MAX_TOPK = 64  # the register top-k is for small k; larger k goes through compact_logits + torch.topk


def build_id_map(kept_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """id_map[V_orig] int32: the kept (pruned) id of each original id, -1 where the id was dropped."""
    id_map = torch.full((vocab_size,), -1, dtype=torch.int32, device=kept_ids.device)
    id_map[kept_ids.long()] = torch.arange(kept_ids.numel(), dtype=torch.int32, device=kept_ids.device)
    return id_map


def to_original_ids(pruned_ids: torch.Tensor, kept_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Kept-space ids (e.g. sampled from compact_logits) -> original token ids, int64."""
    return pruned_ids.long() if kept_ids is None else kept_ids.long()[pruned_ids.long()]


# ----------------------------------------------------------------------------------------------------------
# remapped embedding
# ----------------------------------------------------------------------------------------------------------


@lazy_jit
def _remapped_embedding_kernel(
    ids_ptr, map_ptr, w_ptr, out_ptr, kept_ptr,  # ids[N], id_map[V], w[K, H], out[N, H], kept[N] int64 out
    N, V, H, stride_w, stride_o, fallback,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_t, pid_h = tl.program_id(0), tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    tmask = offs_t < N
    ids = tl.load(ids_ptr + offs_t, mask=tmask, other=0).to(tl.int64)
    valid = tmask & (ids >= 0) & (ids < V)
    kept = tl.load(map_ptr + ids, mask=valid, other=-1).to(tl.int64)  # -1: dropped or out of range
    row = tl.where(kept >= 0, kept, fallback)
    m = (tmask & (row >= 0))[:, None] & (offs_h < H)[None, :]
    vals = tl.load(w_ptr + row[:, None] * stride_w + offs_h[None, :], mask=m, other=0.0)  # [BLOCK_T, BLOCK_H]
    o = out_ptr + offs_t.to(tl.int64)[:, None] * stride_o + offs_h[None, :]
    tl.store(o, vals, mask=tmask[:, None] & (offs_h < H)[None, :])
    tl.store(kept_ptr + offs_t, kept, mask=tmask & (pid_h == 0))


def _launch_remapped_embedding(ids, id_map, weight, fallback: int):
    K, H = weight.shape
    flat = ids.reshape(-1).contiguous()  # [N]
    N = flat.numel()
    if not -1 <= fallback < K:
        raise ValueError(f"fallback {fallback} is not a kept id (0 <= fallback < {K}) or -1 (zeros)")
    out = torch.empty(N, H, device=weight.device, dtype=weight.dtype)
    kept = torch.empty(N, device=weight.device, dtype=torch.int64)
    if N and H:
        w = weight if weight.stride(-1) == 1 else weight.contiguous()
        big = use_autotune(flat, w)  # memory-bound gather: wide rows per program on the GPU
        bt, bh = (16, min(1024, triton.next_power_of_2(H))) if big else (8, 32)
        grid = (cdiv(N, bt), cdiv(H, bh))
        _remapped_embedding_kernel[grid](flat, id_map.contiguous(), w, out, kept, N, id_map.numel(), H,
                                         w.stride(0), out.stride(0), fallback, BLOCK_T=bt, BLOCK_H=bh,
                                         **({"num_warps": 4} if big else {}))
    return out.reshape(*ids.shape, H), kept.reshape(ids.shape)


@torch.library.custom_op("greenprune::remapped_embedding", mutates_args=())
def _remapped_embedding_op(
    ids: torch.Tensor, id_map: torch.Tensor, weight: torch.Tensor, fallback: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_remapped_embedding(ids, id_map, weight, fallback)


@_remapped_embedding_op.register_fake
def _(ids, id_map, weight, fallback):
    return weight.new_empty(*ids.shape, weight.shape[1]), ids.new_empty(ids.shape, dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------------
# LM head over kept rows: argmax and top-k without logits
# ----------------------------------------------------------------------------------------------------------


@lazy_jit
def _lm_head_argmax_kernel(
    h_ptr, w_ptr, best_ptr, arg_ptr,  # h[T, H], w[K, H], best[S, T] f32, arg[S, T] i32
    T, H, K, stride_h, stride_w, k_per_split,
    UPCAST: tl.constexpr, PREC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_t, pid_s = tl.program_id(0), tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = offs_t < T
    h_desc = tl.make_tensor_descriptor(h_ptr, shape=[T, H], strides=[stride_h, 1], block_shape=[BLOCK_T, BLOCK_H])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[K, H], strides=[stride_w, 1], block_shape=[BLOCK_V, BLOCK_H])
    best = tl.full([BLOCK_T], float("-inf"), tl.float32)
    arg = tl.zeros([BLOCK_T], tl.int32)
    k_lo = pid_s * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    for v0 in range(0, k_per_split, BLOCK_V):
        ids = k_lo + v0 + tl.arange(0, BLOCK_V)  # kept ids [BLOCK_V]
        vmask = ids < k_hi
        acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        for h0 in range(0, H, BLOCK_H):
            x = h_desc.load([pid_t * BLOCK_T, h0])  # [BLOCK_T, BLOCK_H], zeros past T and H
            w = w_desc.load([k_lo + v0, h0])  # [BLOCK_V, BLOCK_H], zeros past K
            if UPCAST:
                x, w = x.to(tl.float32), w.to(tl.float32)
            acc = tl.dot(x, w.T, acc, input_precision=PREC)
        logits = tl.where(vmask[None, :], acc, float("-inf"))  # [BLOCK_T, BLOCK_V]
        tmax = tl.max(logits, axis=1)
        up = tmax > best  # strict: the earliest id wins ties
        arg = tl.where(up, tl.argmax(logits, axis=1) + k_lo + v0, arg)
        best = tl.where(up, tmax, best)
    tl.store(best_ptr + pid_s * T + offs_t, best, mask=tmask)
    tl.store(arg_ptr + pid_s * T + offs_t, arg, mask=tmask)


@lazy_jit
def _lm_head_topk_kernel(
    h_ptr, w_ptr, val_ptr, idx_ptr,  # h[T, H], w[K, H], val[S, T, TOPK] f32, idx[S, T, TOPK] i32
    T, H, K, stride_h, stride_w, k_per_split,
    UPCAST: tl.constexpr, PREC: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_t, pid_s = tl.program_id(0), tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_v = tl.arange(0, BLOCK_V)
    slots = tl.arange(0, KP)  # KP = next power of two >= TOPK; slots >= TOPK hold +inf, never replaced
    tmask = offs_t < T
    h_desc = tl.make_tensor_descriptor(h_ptr, shape=[T, H], strides=[stride_h, 1], block_shape=[BLOCK_T, BLOCK_H])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[K, H], strides=[stride_w, 1], block_shape=[BLOCK_V, BLOCK_H])
    run_v = tl.where(slots[None, :] < TOPK, tl.full([BLOCK_T, KP], float("-inf"), tl.float32), float("inf"))
    run_i = tl.zeros([BLOCK_T, KP], tl.int32)
    k_lo = pid_s * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    for v0 in range(0, k_per_split, BLOCK_V):
        ids = k_lo + v0 + offs_v
        vmask = ids < k_hi
        acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        for h0 in range(0, H, BLOCK_H):
            x = h_desc.load([pid_t * BLOCK_T, h0])
            w = w_desc.load([k_lo + v0, h0])
            if UPCAST:
                x, w = x.to(tl.float32), w.to(tl.float32)
            acc = tl.dot(x, w.T, acc, input_precision=PREC)
        logits = tl.where(vmask[None, :], acc, float("-inf"))  # [BLOCK_T, BLOCK_V]
        for _ in tl.static_range(TOPK):  # move the block's best into the running list's worst slot, k times
            cmax = tl.max(logits, axis=1)
            carg = tl.argmax(logits, axis=1)
            slot = tl.argmin(run_v, axis=1)
            hit = (slots[None, :] == slot[:, None]) & (cmax > tl.min(run_v, axis=1))[:, None]
            run_v = tl.where(hit, cmax[:, None], run_v)
            run_i = tl.where(hit, (carg + k_lo + v0)[:, None], run_i)
            logits = tl.where(offs_v[None, :] == carg[:, None], float("-inf"), logits)
    o = (pid_s * T + offs_t)[:, None] * TOPK + slots[None, :]
    om = tmask[:, None] & (slots[None, :] < TOPK)
    tl.store(val_ptr + o, run_v, mask=om)
    tl.store(idx_ptr + o, run_i, mask=om)


def _head_configs():  # BLOCK_T 16 for decode (weight-read bound), 128 for prefill (tensor-core bound)
    return [
        triton.Config({"BLOCK_T": bt, "BLOCK_V": bv, "BLOCK_H": bh}, num_warps=w, num_stages=s)
        for bt, bv, bh, w, s in [(16, 128, 128, 4, 4), (16, 64, 256, 4, 3), (64, 128, 64, 4, 4),
                                 (128, 128, 64, 8, 3), (128, 64, 64, 4, 4)]
    ]


_V_GRANULE = 128  # vocab splits are multiples of this (every config's BLOCK_V divides it)
_INTERP_META = dict(BLOCK_T=16, BLOCK_V=32, BLOCK_H=32)


def _launch_head(kernel, h: torch.Tensor, w_kept: torch.Tensor, outs: list, k_per_split: int, split: int, **meta):
    T, H = h.shape
    args = (h, w_kept, *outs, T, H, w_kept.shape[0], h.stride(0), w_kept.stride(0), k_per_split)
    meta.update(dot_modes(h.dtype))
    if h.is_cuda:
        ensure_tma_allocator()
    if use_autotune(h, w_kept):
        grid = lambda m: (cdiv(T, m["BLOCK_T"]), split)  # noqa: E731
        kernel.tuned(_head_configs, key=["T", "H", "K"])[grid](*args, **meta)
    else:
        kernel[(cdiv(T, _INTERP_META["BLOCK_T"]), split)](*args, **meta, **_INTERP_META)


def _tma_ok(op: str, *tensors: torch.Tensor) -> bool:
    if tma_compatible(*tensors):
        return True
    note_fallback(op, "operands are not 16-byte aligned for TMA (H must be a multiple of 8 for 16-bit inputs)")
    return False


def _prepare_head(h: torch.Tensor, w_kept: torch.Tensor):
    if w_kept.dim() != 2 or w_kept.shape[1] != h.shape[-1]:
        raise ValueError(f"w_kept {tuple(w_kept.shape)} must be [K, {h.shape[-1]}]")
    h2 = h.reshape(-1, h.shape[-1])  # [T, H]
    h2 = h2 if h2.stride(-1) == 1 else h2.contiguous()
    w = w_kept.to(h.dtype)
    w = w if w.stride(-1) == 1 else w.contiguous()
    tuned = use_autotune(h2, w)
    granule = _V_GRANULE if tuned else _INTERP_META["BLOCK_V"]
    split, per_split = vocab_split(h2, cdiv(h2.shape[0], 64 if tuned else 16), w.shape[0], granule)
    return h2, w, split, per_split


def _launch_lm_head_argmax(h, w_kept, kept_ids):
    h2, w, split, per_split = _prepare_head(h, w_kept)
    T = h2.shape[0]
    if T == 0 or w.shape[0] == 0 or not _tma_ok("lm_head_argmax", h2, w):
        return ref.lm_head_argmax(h, w_kept, kept_ids)
    best = torch.empty(split, T, device=h2.device, dtype=torch.float32)  # [S, T]
    arg = torch.empty(split, T, device=h2.device, dtype=torch.int32)
    _launch_head(_lm_head_argmax_kernel, h2, w, [best, arg], per_split, split)
    idx = arg.gather(0, best.argmax(0, keepdim=True))[0]  # first split holding the max: lowest id wins ties
    return to_original_ids(idx, kept_ids).reshape(h.shape[:-1])


def _launch_lm_head_topk(h, w_kept, kept_ids, k: int):
    if not 1 <= k <= w_kept.shape[0]:
        raise ValueError(f"k={k} must be in [1, {w_kept.shape[0]}] (the kept vocabulary)")
    h2, w, split, per_split = _prepare_head(h, w_kept)
    T = h2.shape[0]
    if k > _MAX_TOPK:
        note_fallback("lm_head_topk", f"k={k} is above the kernel's largest top-k ({_MAX_TOPK})")
    if T == 0 or k > _MAX_TOPK or not _tma_ok("lm_head_topk", h2, w):
        return ref.lm_head_topk(h, w_kept, kept_ids, k)
    val = torch.empty(split, T, k, device=h2.device, dtype=torch.float32)  # [S, T, k] per-split top-k
    idx = torch.empty(split, T, k, device=h2.device, dtype=torch.int32)
    _launch_head(_lm_head_topk_kernel, h2, w, [val, idx], per_split, split, TOPK=k, KP=triton.next_power_of_2(k))
    cand_v = val.permute(1, 0, 2).reshape(T, split * k)  # [T, S k]
    cand_i = idx.permute(1, 0, 2).reshape(T, split * k)
    top_v, pos = cand_v.topk(k, dim=1)  # sorted, descending
    top_i = to_original_ids(cand_i.gather(1, pos), kept_ids)
    return top_v.reshape(*h.shape[:-1], k), top_i.reshape(*h.shape[:-1], k)


@torch.library.custom_op("greenprune::lm_head_argmax", mutates_args=())
def _lm_head_argmax_op(h: torch.Tensor, w_kept: torch.Tensor, kept_ids: Optional[torch.Tensor]) -> torch.Tensor:
    return _launch_lm_head_argmax(h, w_kept, kept_ids)


@_lm_head_argmax_op.register_fake
def _(h, w_kept, kept_ids):
    return h.new_empty(h.shape[:-1], dtype=torch.int64)


@torch.library.custom_op("greenprune::lm_head_topk", mutates_args=())
def _lm_head_topk_op(
    h: torch.Tensor, w_kept: torch.Tensor, kept_ids: Optional[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_lm_head_topk(h, w_kept, kept_ids, k)


@_lm_head_topk_op.register_fake
def _(h, w_kept, kept_ids, k):
    shape = (*h.shape[:-1], k)
    return h.new_empty(shape, dtype=torch.float32), h.new_empty(shape, dtype=torch.int64)


register("remapped_embedding", torch_impl=ref.remapped_embedding,
         triton_impl=lambda ids, id_map, weight, fallback=-1: torch.ops.greenprune.remapped_embedding(
             ids, id_map, weight, fallback))
register("lm_head_argmax", torch_impl=ref.lm_head_argmax,
         triton_impl=lambda h, w, kept_ids=None: torch.ops.greenprune.lm_head_argmax(h, w, kept_ids))
register("lm_head_topk", torch_impl=ref.lm_head_topk,
         triton_impl=lambda h, w, kept_ids=None, k=8: torch.ops.greenprune.lm_head_topk(h, w, kept_ids, k))

# ----------------------------------------------------------------------------------------------------------
# Public (dispatched) API
# ----------------------------------------------------------------------------------------------------------


def remapped_embedding(
    ids: torch.Tensor, id_map: torch.Tensor, weight: torch.Tensor, on_missing: str = "raise", fallback: int = 0
) -> torch.Tensor:
    """Embeddings [..., H] of ORIGINAL token ids[...] from the pruned table weight[K, H] via id_map[V_orig]
    (build_id_map; -1 = dropped). An id that was dropped, or lies outside [0, V_orig):
      on_missing="raise" (default): ValueError naming the ids (costs one device sync to check);
      on_missing="clamp": gets row `fallback` (a kept id, e.g. the pruned unk token), no sync."""
    if on_missing not in ("raise", "clamp"):
        raise ValueError(f"on_missing={on_missing!r}; choose 'raise' or 'clamp'")
    out, kept = call("remapped_embedding", ids, id_map, weight, fallback if on_missing == "clamp" else -1)
    if on_missing == "raise":
        missing = kept < 0
        if bool(missing.any()):
            bad = ids[missing].unique()[:8].tolist()
            raise ValueError(f"{int(missing.sum())} token ids are not in the pruned vocabulary, e.g. {bad}")
    return out


def lm_head_argmax(h: torch.Tensor, w_kept: torch.Tensor, kept_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Greedy next tokens as ORIGINAL ids [...] (int64) from h[..., H] and the kept LM-head rows w_kept[K, H]
    (kept_ids[K]: original id of each row; None: ids are row numbers). No logits are written."""
    return call("lm_head_argmax", h, w_kept, kept_ids)


def lm_head_topk(
    h: torch.Tensor, w_kept: torch.Tensor, kept_ids: Optional[torch.Tensor] = None, k: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over the kept rows: (logits [..., k] fp32 descending, ORIGINAL ids [..., k] int64). Meant for
    small k (<= 64 in the kernel; larger k falls back to full compact logits + torch.topk)."""
    return call("lm_head_topk", h, w_kept, kept_ids, k)
