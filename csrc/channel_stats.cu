// Per-channel moments of activations x[N, C]: sum and sum of squares of (x - shift), abs-max of x, fp32
// accumulation for fp32/fp16/bf16 inputs. Semantics: kernels/reference.py channel_moments.
//
// Layout: a block (8 warps) owns a tile of 32 * VEC channels and a chunk of rows. Each lane loads VEC
// contiguous channels at once (16-byte loads where alignment allows) and accumulates its rows in registers;
// the 8 warps' partials then meet in shared memory and are reduced by warp shuffles within groups of 8 lanes.
// Every (row chunk, channel tile) writes its own partial [3, S, C]; partials merge exactly like the Triton
// path's (sum, sum, amax over S), so chunking over tokens never changes the semantics.
#include "common.cuh"
#include "ops.h"

#include <cmath>

namespace greenprune {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarp;

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

template <typename scalar_t, int VEC, bool HAS_SHIFT>
__global__ void __launch_bounds__(kThreads)
    channel_moments_kernel(const scalar_t* __restrict__ x, const float* __restrict__ shift,
                           float* __restrict__ part, int64_t N, int64_t C, int64_t stride_row,
                           int64_t rows_per_split) {
  constexpr int TILE = kWarp * VEC;
  __shared__ float red[3][kWarps][TILE + 1];  // +1: groups of 8 lanes read 8 warps' rows without bank conflicts
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * TILE + lane * VEC;  // this lane's first channel
  const int64_t r_lo = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r_hi = std::min<int64_t>(N, r_lo + rows_per_split);
  const bool active = c0 < C;  // with VEC > 1, C % VEC == 0: a lane's channels are all in or all out

  float s[VEC], q[VEC], a[VEC], sh[VEC];
#pragma unroll
  for (int u = 0; u < VEC; ++u) {
    s[u] = q[u] = a[u] = 0.f;
    sh[u] = (HAS_SHIFT && active) ? shift[c0 + u] : 0.f;
  }
  auto accumulate = [&](const Pack<scalar_t, VEC>& p) {
#pragma unroll
    for (int u = 0; u < VEC; ++u) {
      const float v = static_cast<float>(p.v[u]);
      const float d = HAS_SHIFT ? v - sh[u] : v;
      s[u] += d;
      q[u] += d * d;
      a[u] = nan_max(a[u], fabsf(v));
    }
  };
  if (active) {
    const scalar_t* base = x + c0;
    int64_t r = r_lo + warp;
    for (; r + 3 * kWarps < r_hi; r += 4 * kWarps) {  // four rows in flight per lane
      Pack<scalar_t, VEC> p[4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        p[j] = *reinterpret_cast<const Pack<scalar_t, VEC>*>(base + (r + j * kWarps) * stride_row);
#pragma unroll
      for (int j = 0; j < 4; ++j) accumulate(p[j]);
    }
    for (; r < r_hi; r += kWarps) accumulate(*reinterpret_cast<const Pack<scalar_t, VEC>*>(base + r * stride_row));
  }
#pragma unroll
  for (int u = 0; u < VEC; ++u) {
    red[0][warp][lane * VEC + u] = s[u];
    red[1][warp][lane * VEC + u] = q[u];
    red[2][warp][lane * VEC + u] = a[u];
  }
  __syncthreads();
  // (channel, warp) pairs: 8 consecutive threads hold one channel's 8 warp partials; shuffle within the 8.
  const int64_t S = gridDim.y;
  for (int pair = threadIdx.x; pair < TILE * kWarps; pair += kThreads) {
    const int c = pair / kWarps, j = pair % kWarps;
    float vs = red[0][j][c], vq = red[1][j][c], va = red[2][j][c];
#pragma unroll
    for (int off = kWarps / 2; off > 0; off >>= 1) {
      vs += __shfl_xor_sync(kFullMask, vs, off, kWarps);
      vq += __shfl_xor_sync(kFullMask, vq, off, kWarps);
      va = nan_max(va, __shfl_xor_sync(kFullMask, va, off, kWarps));
    }
    const int64_t cg = static_cast<int64_t>(blockIdx.x) * TILE + c;
    if (j == 0 && cg < C) {
      part[(0 * S + blockIdx.y) * C + cg] = vs;
      part[(1 * S + blockIdx.y) * C + cg] = vq;
      part[(2 * S + blockIdx.y) * C + cg] = va;
    }
  }
}

template <typename scalar_t, int VEC>
void launch(const at::Tensor& x2, const at::Tensor& shift, at::Tensor& part, int64_t rows_per_split, dim3 grid) {
  const int64_t N = x2.size(0), C = x2.size(1);
  auto stream = at::cuda::getCurrentCUDAStream();
  const scalar_t* xp = x2.data_ptr<scalar_t>();
  if (shift.defined())
    channel_moments_kernel<scalar_t, VEC, true><<<grid, kThreads, 0, stream>>>(
        xp, shift.data_ptr<float>(), part.data_ptr<float>(), N, C, x2.stride(0), rows_per_split);
  else
    channel_moments_kernel<scalar_t, VEC, false><<<grid, kThreads, 0, stream>>>(
        xp, nullptr, part.data_ptr<float>(), N, C, x2.stride(0), rows_per_split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_moments_cuda(const at::Tensor& x,
                                                                    const std::optional<at::Tensor>& shift) {
  TORCH_CHECK(x.is_cuda(), "channel_moments: x must be a CUDA tensor");
  TORCH_CHECK_VALUE(x.dim() >= 1, "channel_moments: x must have a channel dimension");
  const int64_t C = x.size(-1);
  const c10::cuda::CUDAGuard guard(x.device());
  if (C == 0) {
    at::Tensor e = at::empty({0}, x.options().dtype(at::kFloat));
    return {e, e.clone(), e.clone()};
  }
  at::Tensor sh;
  if (shift.has_value() && shift->defined()) {
    TORCH_CHECK_VALUE(shift->dim() == 1 && shift->size(0) == C, "channel_moments: shift ", shift->sizes(),
                      " must be [", C, "]");
    sh = shift->to(x.device(), at::kFloat).contiguous();
  }
  at::Tensor x2 = x.reshape({-1, C});
  if (x2.stride(1) != 1) x2 = x2.contiguous();
  const int64_t N = x2.size(0);
  if (N == 0) {
    at::Tensor z = at::zeros({C}, x.options().dtype(at::kFloat));
    return {z, z.clone(), z.clone()};
  }
  const int64_t es = x2.element_size();
  const int vb = vector_bytes({C * es, x2.stride(0) * es, reinterpret_cast<int64_t>(x2.data_ptr())});
  const int vec = std::max<int>(1, vb / static_cast<int>(es));  // channels per lane-load
  const int64_t tile = kWarp * vec;
  const int64_t tiles = cdiv(C, tile);
  // Row chunks: about four resident blocks per SM in all, each warp taking >= 16 rows of its chunk.
  const int64_t want = std::max<int64_t>(1, cdiv(4 * sm_count(), tiles));
  const int64_t S = std::min<int64_t>({want, cdiv(N, 16 * kWarps), 65535});
  const int64_t rows_per_split = cdiv(cdiv(N, S), kWarps) * kWarps;
  const int64_t splits = cdiv(N, rows_per_split);
  at::Tensor part = at::empty({3, splits, C}, x.options().dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x2.scalar_type(), "channel_moments_cuda", [&] {
    constexpr int kMaxVec = 16 / sizeof(scalar_t);
    if (vec >= kMaxVec) launch<scalar_t, kMaxVec>(x2, sh, part, rows_per_split, grid);
    else if (vec >= 2 && kMaxVec >= 2) launch<scalar_t, (kMaxVec >= 2 ? 2 : 1)>(x2, sh, part, rows_per_split, grid);
    else launch<scalar_t, 1>(x2, sh, part, rows_per_split, grid);
  });
  // Fresh tensors (never views of one buffer): the outputs must not alias each other.
  return {part[0].sum(0), part[1].sum(0), part[2].amax(0)};
}

}  // namespace greenprune
