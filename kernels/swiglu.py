"""Fused SwiGLU FFN for serving a pruned model: any intermediate width F (pruned widths are unaligned).

Op (one name across kernel, custom op, test and bench):
  swiglu_ffn(x[..., H], w_gate_up[2F, H], w_down[H_out, F]) -> [..., H_out]
      = down(silu(x @ Wg.T) * (x @ Wu.T)),  w_gate_up = [Wg; Wu] (fuse_gate_up builds it once at load time)

Kernel: one GEMM over the concatenated weight. A program owns a [BLOCK_M tokens, BLOCK_N channels] tile and
keeps two fp32 accumulators, gate rows n and up rows F + n, sharing each loaded x tile (all tiles by TMA
descriptors: H must be a multiple of 8 for 16-bit inputs, else the torch reference runs); the epilogue writes
silu(g) * u once in the activation dtype. Eager torch instead writes g and u, reads them for silu, writes
silu(g), reads both again for the product and writes it: 5 T F element round trips saved. The down projection
is a plain GEMM and stays with cuBLAS (torch.nn.functional.linear), which is already at the ceiling.
Grouped launch order (GROUP_M row blocks per weight column block) keeps weight tiles in L2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference as ref
from .dispatch import (call, cdiv, dot_modes, ensure_tma_allocator, lazy_jit, note_fallback, register, tl, tma_compatible,
                       triton, use_autotune)

fuse_gate_up = ref.fuse_gate_up


@lazy_jit
def _swiglu_ffn_kernel(
    x_ptr, w_ptr, a_ptr,  # x[T, H], w[2F, H] (gate rows then up rows), a[T, F] out
    T, F, H, stride_x, stride_w, stride_a,
    UPCAST: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(T, BLOCK_M)
    num_n = tl.cdiv(F, BLOCK_N)
    per_group = GROUP_M * num_n  # programs that sweep GROUP_M row blocks across all column blocks
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    m0, n0 = pid_m * BLOCK_M, pid_n * BLOCK_N
    # TMA descriptors: tiles arrive in shared memory without per-thread address registers; rows or columns
    # past the end (T, F, H tails) read as zeros, so the loop needs no masks.
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[T, H], strides=[stride_x, 1], block_shape=[BLOCK_M, BLOCK_K])
    g_desc = tl.make_tensor_descriptor(w_ptr, shape=[F, H], strides=[stride_w, 1], block_shape=[BLOCK_N, BLOCK_K])
    u_desc = tl.make_tensor_descriptor(w_ptr + F * stride_w, shape=[F, H], strides=[stride_w, 1],
                                       block_shape=[BLOCK_N, BLOCK_K])
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        x = x_desc.load([m0, k0])  # [BLOCK_M, BLOCK_K]
        wg = g_desc.load([n0, k0])  # [BLOCK_N, BLOCK_K]
        wu = u_desc.load([n0, k0])
        if UPCAST:
            x, wg, wu = x.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
        acc_g = tl.dot(x, wg.T, acc_g, input_precision=PREC)
        acc_u = tl.dot(x, wu.T, acc_u, input_precision=PREC)
    offs_m = m0 + tl.arange(0, BLOCK_M)  # tokens [BLOCK_M]
    offs_n = n0 + tl.arange(0, BLOCK_N)  # channels [BLOCK_N]
    mmask = offs_m < T
    nmask = offs_n < F
    act = acc_g * tl.sigmoid(acc_g) * acc_u  # silu(g) * u in fp32
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_a + offs_n[None, :]
    tl.store(a_ptrs, act.to(a_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def _swiglu_configs():  # two accumulators: 128 x 128 needs 8 warps; smaller tiles for decode-ish T
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [
            (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
            (64, 64, 64, 4, 4), (16, 128, 128, 4, 4),
        ]
    ]


_INTERP_META = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2)


def _launch_swiglu_act(x2: torch.Tensor, w_gate_up: torch.Tensor) -> torch.Tensor:
    """a[T, F] = silu(x2 @ Wg.T) * (x2 @ Wu.T) in x2's dtype."""
    T, H = x2.shape
    Fdim = w_gate_up.shape[0] // 2
    a = torch.empty(T, Fdim, device=x2.device, dtype=x2.dtype)
    if T == 0 or Fdim == 0:
        return a
    args = (x2, w_gate_up, a, T, Fdim, H, x2.stride(0), w_gate_up.stride(0), a.stride(0))
    meta = dot_modes(x2.dtype)
    if x2.is_cuda:
        ensure_tma_allocator()
    if use_autotune(x2, w_gate_up):
        grid = lambda m: (cdiv(T, m["BLOCK_M"]) * cdiv(Fdim, m["BLOCK_N"]),)  # noqa: E731
        _swiglu_ffn_kernel.tuned(_swiglu_configs, key=["T", "F", "H"])[grid](*args, **meta)
    else:
        grid = (cdiv(T, _INTERP_META["BLOCK_M"]) * cdiv(Fdim, _INTERP_META["BLOCK_N"]),)
        _swiglu_ffn_kernel[grid](*args, **meta, **_INTERP_META)
    return a


def _check(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> None:
    if w_gate_up.dim() != 2 or w_gate_up.shape[0] % 2 or w_gate_up.shape[1] != x.shape[-1]:
        raise ValueError(f"w_gate_up {tuple(w_gate_up.shape)} must be [2F, {x.shape[-1]}]")
    if w_down.dim() != 2 or 2 * w_down.shape[1] != w_gate_up.shape[0]:
        raise ValueError(f"w_down {tuple(w_down.shape)} must be [H_out, {w_gate_up.shape[0] // 2}]")


def _launch_swiglu_ffn(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    _check(x, w_gate_up, w_down)
    x2 = x.reshape(-1, x.shape[-1])  # [T, H]
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    wgu = w_gate_up.to(x.dtype)
    wgu = wgu if wgu.stride(-1) == 1 else wgu.contiguous()
    if not tma_compatible(x2, wgu, wgu[wgu.shape[0] // 2 :]):
        note_fallback("swiglu_ffn", "operands are not 16-byte aligned for TMA")
        return ref.swiglu_ffn(x, w_gate_up.to(x.dtype), w_down.to(x.dtype))
    a = _launch_swiglu_act(x2, wgu)  # [T, F]
    return F.linear(a, w_down.to(x.dtype)).reshape(*x.shape[:-1], w_down.shape[0])


@torch.library.custom_op("greenprune::swiglu_ffn", mutates_args=())
def _swiglu_ffn_op(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    return _launch_swiglu_ffn(x, w_gate_up, w_down)


@_swiglu_ffn_op.register_fake
def _(x, w_gate_up, w_down):
    _check(x, w_gate_up, w_down)
    return x.new_empty(*x.shape[:-1], w_down.shape[0])


register("swiglu_ffn", torch_impl=ref.swiglu_ffn,
         triton_impl=lambda x, w_gate_up, w_down: torch.ops.greenprune.swiglu_ffn(x, w_gate_up, w_down))


def swiglu_ffn(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Llama FFN down(silu(x @ Wg.T) * (x @ Wu.T)) for x[..., H], w_gate_up[2F, H] = fuse_gate_up(Wg, Wu),
    w_down[H_out, F]; any F. Output [..., H_out] in x's dtype."""
    return call("swiglu_ffn", x, w_gate_up, w_down)
