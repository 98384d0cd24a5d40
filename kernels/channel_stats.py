"""Streaming per-channel statistics of activations, and Wanda-sp channel / KV-group scores.

Ops (one name each across kernel, custom op, test and bench):
  channel_moments(x[..., C], shift[C]=None) -> (sum[C], sumsq[C], absmax[C])   fp32, one read of x
  wanda_scores(weight[O, C], act_l2[C], group_size=1) -> [C // group_size]     sum_o |W[o, c]| * ||x_c||
  taylor_scores(weight[O, C], grad[O, C], dim, group_size=1, signed=False)     sum over dim of |W * dL/dW|
      -> [C // group_size] (dim 0: per column) or [O // group_size] (dim 1: per row), fp32

Column reductions (all but taylor_scores with dim 1) reduce over the leading (row) axis of a row-major matrix:
programs own BLOCK_C contiguous channels (coalesced loads along C) and a contiguous slice of rows, keep
[BLOCK_N, BLOCK_C] fp32 accumulators in registers and write one partial row each; torch sums the [SPLIT, C]
partials (deterministic, no atomics). The row reduction (taylor_scores, dim 1: gate/up projections, whose
output channels are rows) gives each program BLOCK_R whole rows, read along them in BLOCK_K steps.
ChannelStats merges chunks exactly (Chan et al.'s parallel formula) and is what activation hooks use.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference as ref
from .dispatch import call, cdiv, lazy_jit, num_programs_target, register, round_up, tl, triton, use_autotune

# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------


@lazy_jit
def _channel_moments_kernel(
    x_ptr, shift_ptr, part_ptr,  # x[N, C] (unit stride along C), shift[C] fp32, part[3, SPLIT, C] fp32
    N, C, stride_xn, rows_per_split, SPLIT,
    HAS_SHIFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, pid_s = tl.program_id(0), tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    cmask = cols < C
    if HAS_SHIFT:
        shift = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    else:
        shift = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_s = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    acc_q = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    acc_a = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    row0 = pid_s * rows_per_split
    row_end = tl.minimum(row0 + rows_per_split, N)
    for r in range(0, rows_per_split, BLOCK_N):
        rows = row0 + r + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        m = (rows < row_end)[:, None] & cmask[None, :]
        ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_xn + cols[None, :]
        x = tl.load(ptrs, mask=m, other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_C]
        d = tl.where(m, x - shift[None, :], 0.0)
        acc_s += d
        acc_q += d * d
        acc_a = tl.maximum(acc_a, tl.abs(x))
    out = part_ptr + pid_s * C + cols
    tl.store(out, tl.sum(acc_s, axis=0), mask=cmask)
    tl.store(out + SPLIT * C, tl.sum(acc_q, axis=0), mask=cmask)
    tl.store(out + 2 * SPLIT * C, tl.max(acc_a, axis=0), mask=cmask)


@lazy_jit
def _column_sums_kernel(
    w_ptr, g_ptr, scale_ptr, part_ptr,  # w[O, C], g[O, C] (unit stride along C), scale[C] fp32, part[SPLIT, C] fp32
    O, C, stride_wo, stride_go, rows_per_split,
    HAS_G: tl.constexpr, SIGNED: tl.constexpr, HAS_SCALE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per column: sum over rows of |w| (HAS_G: of |w * g|; SIGNED: without the abs), times scale[c] if HAS_SCALE.
    wanda_scores is |w| with the activation norms as scale; taylor_scores per column is |w * g|."""
    pid_c, pid_s = tl.program_id(0), tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    row0 = pid_s * rows_per_split
    row_end = tl.minimum(row0 + rows_per_split, O)
    for r in range(0, rows_per_split, BLOCK_N):
        rows = (row0 + r + tl.arange(0, BLOCK_N)).to(tl.int64)
        m = (rows < row_end)[:, None] & cmask[None, :]
        v = tl.load(w_ptr + rows[:, None] * stride_wo + cols[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_G:
            v = v * tl.load(g_ptr + rows[:, None] * stride_go + cols[None, :], mask=m, other=0.0).to(tl.float32)
        acc += v if SIGNED else tl.abs(v)
    out = tl.sum(acc, axis=0)
    if HAS_SCALE:
        out = out * tl.load(scale_ptr + cols, mask=cmask, other=0.0)
    tl.store(part_ptr + pid_s * C + cols, out, mask=cmask)


@lazy_jit
def _taylor_rows_kernel(
    w_ptr, g_ptr, out_ptr,  # w[O, C], g[O, C] (unit stride along C), out[O] fp32
    O, C, stride_wo, stride_go,
    SIGNED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    rmask = rows < O
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    for k in range(0, C, BLOCK_K):
        cols = k + tl.arange(0, BLOCK_K)
        m = rmask[:, None] & (cols < C)[None, :]
        w = tl.load(w_ptr + rows[:, None] * stride_wo + cols[None, :], mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + rows[:, None] * stride_go + cols[None, :], mask=m, other=0.0).to(tl.float32)
        acc += w * g if SIGNED else tl.abs(w * g)
    tl.store(out_ptr + rows, tl.sum(acc, axis=1), mask=rmask)


def _row_configs():  # whole rows per program, long coalesced reads along them
    return [
        triton.Config({"BLOCK_R": br, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for br, bk, w, s in [(4, 512, 4, 3), (8, 256, 4, 3), (8, 512, 8, 3), (16, 256, 8, 3), (2, 1024, 4, 4)]
    ]


_ROW_INTERP_META = dict(BLOCK_R=4, BLOCK_K=32)


def _reduce_configs():  # bandwidth-bound column reductions on Hopper: wide coalesced rows, several in flight
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_C": bc}, num_warps=w, num_stages=s)
        for bn, bc, w, s in [(32, 128, 4, 3), (64, 128, 8, 3), (32, 256, 8, 3), (16, 128, 4, 4), (64, 64, 4, 4)]
    ]


_ROW_GRANULE = 64  # rows_per_split is a multiple of this (every config's BLOCK_N divides it)
_INTERP_META = dict(BLOCK_N=16, BLOCK_C=32)  # tiny tiles under the interpreter (still exercise the masks)


def _row_split(t: torch.Tensor, n_rows: int, n_cols: int) -> tuple[int, int]:
    """(SPLIT, rows_per_split): enough programs to fill the device, each a contiguous slice of rows."""
    granule = _ROW_GRANULE if use_autotune(t) else _INTERP_META["BLOCK_N"]
    col_blocks = cdiv(n_cols, 128 if use_autotune(t) else _INTERP_META["BLOCK_C"])
    split = max(1, min(cdiv(num_programs_target(t), col_blocks), cdiv(n_rows, granule)))
    rows_per_split = round_up(cdiv(n_rows, split), granule)
    return cdiv(n_rows, rows_per_split), rows_per_split


def _launch(kernel, t: torch.Tensor, n_cols: int, split: int, args: tuple, **meta):
    if use_autotune(t):
        grid = lambda m: (cdiv(n_cols, m["BLOCK_C"]), split)  # noqa: E731
        kernel.tuned(_reduce_configs, key=["C"])[grid](*args, **meta)
    else:
        kernel[(cdiv(n_cols, _INTERP_META["BLOCK_C"]), split)](*args, **meta, **_INTERP_META)


# ----------------------------------------------------------------------------------------------------------
# Launchers and torch.library custom ops
# ----------------------------------------------------------------------------------------------------------


def _launch_channel_moments(x: torch.Tensor, shift: Optional[torch.Tensor]):
    C = x.shape[-1]
    x2 = x.reshape(-1, C)  # [N, C]
    if x2.shape[0] == 0 or C == 0 or x2.stride(-1) != 1:
        x2 = x2.contiguous()
    N = x2.shape[0]
    if shift is not None and shift.shape != (C,):
        raise ValueError(f"shift {tuple(shift.shape)} must be [{C}]")
    if N == 0 or C == 0:
        return ref.channel_moments(x2, shift)
    split, rows_per_split = _row_split(x2, N, C)
    part = torch.empty(3, split, C, device=x.device, dtype=torch.float32)  # [3, SPLIT, C]
    sh = shift.to(device=x.device, dtype=torch.float32).contiguous() if shift is not None else part
    args = (x2, sh, part, N, C, x2.stride(0), rows_per_split, split)
    _launch(_channel_moments_kernel, x2, C, split, args, HAS_SHIFT=shift is not None)
    return part[0].sum(0), part[1].sum(0), part[2].amax(0)


@torch.library.custom_op("greenprune::channel_moments", mutates_args=())
def _channel_moments_op(x: torch.Tensor, shift: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_channel_moments(x, shift)


@_channel_moments_op.register_fake
def _(x, shift):
    c = x.shape[-1]
    return tuple(x.new_empty(c, dtype=torch.float32) for _ in range(3))


def _launch_wanda_scores(weight: torch.Tensor, act_l2: torch.Tensor, group_size: int) -> torch.Tensor:
    O, C = weight.shape
    if act_l2.shape != (C,):
        raise ValueError(f"act_l2 {tuple(act_l2.shape)} must be [{C}]")
    if group_size < 1 or C % group_size:
        raise ValueError(f"group_size {group_size} does not divide {C} channels")
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    if O == 0 or C == 0:
        return ref.wanda_scores(w, act_l2, group_size)
    split, rows_per_split = _row_split(w, O, C)
    part = torch.empty(split, C, device=w.device, dtype=torch.float32)  # [SPLIT, C]
    l2 = act_l2.to(device=w.device, dtype=torch.float32).contiguous()
    _launch(_column_sums_kernel, w, C, split, (w, w, l2, part, O, C, w.stride(0), w.stride(0), rows_per_split),
            HAS_G=False, SIGNED=False, HAS_SCALE=True)
    return ref.group_sum(part.sum(0), group_size)


@torch.library.custom_op("greenprune::wanda_scores", mutates_args=())
def _wanda_scores_op(weight: torch.Tensor, act_l2: torch.Tensor, group_size: int) -> torch.Tensor:
    return _launch_wanda_scores(weight, act_l2, group_size)


@_wanda_scores_op.register_fake
def _(weight, act_l2, group_size):
    return weight.new_empty(weight.shape[1] // group_size, dtype=torch.float32)


def _launch_taylor_scores(weight: torch.Tensor, grad: torch.Tensor, dim: int, group_size: int, signed: bool) -> torch.Tensor:
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (per column) or 1 (per row), got {dim}")
    if weight.shape != grad.shape or weight.dim() != 2:
        raise ValueError(f"weight {tuple(weight.shape)} and grad {tuple(grad.shape)} must be the same 2-D shape")
    O, C = weight.shape
    n_out = C if dim == 0 else O
    if group_size < 1 or n_out % group_size:
        raise ValueError(f"group_size {group_size} does not divide {n_out} channels")
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    g = grad if grad.stride(-1) == 1 else grad.contiguous()
    if O == 0 or C == 0:
        return ref.taylor_scores(w, g, dim, group_size, signed)
    if dim == 0:
        split, rows_per_split = _row_split(w, O, C)
        part = torch.empty(split, C, device=w.device, dtype=torch.float32)
        _launch(_column_sums_kernel, w, C, split, (w, g, part, part, O, C, w.stride(0), g.stride(0), rows_per_split),
                HAS_G=True, SIGNED=signed, HAS_SCALE=False)
        return ref.group_sum(part.sum(0), group_size)
    out = torch.empty(O, device=w.device, dtype=torch.float32)
    args = (w, g, out, O, C, w.stride(0), g.stride(0))
    if use_autotune(w, g):
        _taylor_rows_kernel.tuned(_row_configs, key=["C"])[lambda m: (cdiv(O, m["BLOCK_R"]),)](*args, SIGNED=signed)
    else:
        _taylor_rows_kernel[(cdiv(O, _ROW_INTERP_META["BLOCK_R"]),)](*args, SIGNED=signed, **_ROW_INTERP_META)
    return ref.group_sum(out, group_size)


@torch.library.custom_op("greenprune::taylor_scores", mutates_args=())
def _taylor_scores_op(weight: torch.Tensor, grad: torch.Tensor, dim: int, group_size: int, signed: bool) -> torch.Tensor:
    return _launch_taylor_scores(weight, grad, dim, group_size, signed)


@_taylor_scores_op.register_fake
def _(weight, grad, dim, group_size, signed):
    return weight.new_empty(weight.shape[1 - dim] // group_size, dtype=torch.float32)


register("channel_moments", torch_impl=ref.channel_moments,
         triton_impl=lambda x, shift=None: torch.ops.greenprune.channel_moments(x, shift))
register("wanda_scores", torch_impl=ref.wanda_scores,
         triton_impl=lambda w, l2, group_size=1: torch.ops.greenprune.wanda_scores(w, l2, group_size))
register("taylor_scores", torch_impl=ref.taylor_scores,
         triton_impl=lambda w, g, dim, group_size=1, signed=False: torch.ops.greenprune.taylor_scores(w, g, dim, group_size, signed))

# ----------------------------------------------------------------------------------------------------------
# Public (dispatched) API
# ----------------------------------------------------------------------------------------------------------


def channel_moments(x: torch.Tensor, shift: Optional[torch.Tensor] = None):
    """Per-channel (sum, sum of squares, abs-max) of x[..., C] over all leading dims, fp32 (see reference)."""
    if shift is not None and shift.shape != (x.shape[-1],):
        raise ValueError(f"shift {tuple(shift.shape)} must be [{x.shape[-1]}] (one value per channel)")
    return call("channel_moments", x, shift)


def wanda_scores(weight: torch.Tensor, act_l2: torch.Tensor, group_size: int = 1) -> torch.Tensor:
    """Wanda-sp scores of weight[O, C]'s input channels: sum_o |W[o, c]| * act_l2[c], per group of
    `group_size` contiguous channels (1: per channel; head_dim * heads_per_group: per KV group)."""
    return call("wanda_scores", weight, act_l2, group_size)


def taylor_scores(weight: torch.Tensor, grad: torch.Tensor, dim: int, group_size: int = 1,
                  signed: bool = False) -> torch.Tensor:
    """First-order Taylor scores of weight[O, C]'s channels: sum over `dim` of |W * dL/dW| (signed=True: of
    W * dL/dW), per group of `group_size` contiguous channels; dim 0 scores columns (input channels, e.g. a
    down_proj's), dim 1 rows (output channels, e.g. a gate_proj's). fp32, one read of each matrix."""
    return call("taylor_scores", weight, grad, dim, group_size, signed)


group_sum = ref.group_sum


class ChannelStats:
    """Streaming per-channel count / mean / M2 / abs-max over activation chunks x[..., C].

    Each chunk's moments come from one channel_moments pass (shifted by the running mean, so M2 does not
    suffer from cancellation); chunks merge with Chan et al.'s parallel formula in float64, so the result
    does not depend on how the tokens were chunked (up to fp32 rounding inside a chunk). State lives on the
    device of the first chunk. Use as a forward hook: `stats.update(activation)`.
    """

    def __init__(self):
        self.count = 0
        self._mean: Optional[torch.Tensor] = None  # [C] float64
        self._m2: Optional[torch.Tensor] = None  # [C] float64, sum of squared deviations from the mean
        self._absmax: Optional[torch.Tensor] = None  # [C] fp32

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> "ChannelStats":
        x = x.detach()
        c = x.shape[-1]
        n = x.numel() // c if c else 0
        if n == 0:
            return self
        if self.count and c != self._mean.numel():
            raise ValueError(f"channel count changed: {self._mean.numel()} -> {c}")
        shift = self._mean.float() if self.count else x.reshape(-1, c)[0].float()
        s, q, a = channel_moments(x, shift)
        s, q = s.double(), q.double()
        mean = shift.double() + s / n
        m2 = (q - s * s / n).clamp_min(0.0)
        return self._merge(n, mean, m2, a)

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        """Fold another accumulator (e.g. another worker's) into this one, exactly."""
        if other.count:
            self._merge(other.count, other._mean, other._m2, other._absmax)
        return self

    def _merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor, absmax: torch.Tensor) -> "ChannelStats":
        if self.count == 0:
            self.count, self._mean, self._m2, self._absmax = n, mean.clone(), m2.clone(), absmax.float().clone()
            return self
        if mean.shape != self._mean.shape:
            raise ValueError(f"channel count changed: {self._mean.shape[0]} -> {mean.shape[0]}")
        mean, m2, absmax = (t.to(self._mean.device) for t in (mean, m2, absmax))
        tot = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / tot)
        self._m2 = self._m2 + m2 + delta * delta * (self.count * n / tot)
        self._absmax = torch.maximum(self._absmax, absmax.float())
        self.count = tot
        return self

    def _need(self) -> None:
        if self._mean is None:
            raise ValueError("ChannelStats is empty: update() it with at least one token first")

    @property
    def n_channels(self) -> int:
        self._need()
        return self._mean.numel()

    @property
    def mean(self) -> torch.Tensor:  # [C] fp32
        self._need()
        return self._mean.float()

    @property
    def variance(self) -> torch.Tensor:
        """Population variance M2 / count, [C] fp32."""
        self._need()
        return (self._m2 / self.count).float()

    @property
    def sum(self) -> torch.Tensor:
        self._need()
        return (self._mean * self.count).float()

    @property
    def sumsq(self) -> torch.Tensor:
        self._need()
        return (self._m2 + self._mean * self._mean * self.count).float()

    @property
    def l2_norm(self) -> torch.Tensor:
        """sqrt(sum of squares) per channel, [C] fp32 (Wanda's ||x_c||_2)."""
        self._need()
        return (self._m2 + self._mean * self._mean * self.count).sqrt().float()

    @property
    def absmax(self) -> torch.Tensor:
        self._need()
        return self._absmax

    def __repr__(self) -> str:
        c = self._mean.numel() if self._mean is not None else 0
        return f"ChannelStats(count={self.count}, channels={c})"
