// Shared device helpers of greenprune's CUDA extension: torch's (value, index) order, warp reductions,
// vector widths. Header-only; every kernel file includes it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace greenprune {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// torch.argmax / torch.topk order: NaN ranks above every number (torch treats NaN as the maximum), then larger
// values; equal values (or two NaNs) go to the lower index, so argmax returns the FIRST maximal index.
__device__ __forceinline__ bool ranks_before(float va, int ia, float vb, int ib) {
  const bool na = isnan(va), nb = isnan(vb);
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return ia < ib;
}

// max that propagates NaN, as torch.amax does (fmaxf would drop it).
__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || isnan(a)) ? a : b; }

// Argmax of (value, index) pairs across a warp; every lane ends with the winner.
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, v, off);
    const int oi = __shfl_xor_sync(kFullMask, i, off);
    if (ranks_before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

// Block-wide argmax (blockDim.x a multiple of 32, <= 1024); every thread gets the winner. Uses 2 x 32 words of
// shared memory and two barriers, so it may be called repeatedly.
__device__ __forceinline__ void block_argmax(float& v, int& i, float* s_v, int* s_i) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, n_warps = blockDim.x / kWarp;
  warp_argmax(v, i);
  if (lane == 0) {
    s_v[warp] = v;
    s_i[warp] = i;
  }
  __syncthreads();
  v = lane < n_warps ? s_v[lane] : -INFINITY;
  i = lane < n_warps ? s_i[lane] : INT32_MAX;
  warp_argmax(v, i);  // every warp reduces the same values: all threads hold the result
  __syncthreads();    // s_v / s_i may be rewritten by the next call
}

// Widest power-of-two byte count (<= 16) dividing every given byte offset/size: the vector width usable for
// loads and stores at all of them.
inline int vector_bytes(std::initializer_list<int64_t> byte_quantities) {
  int v = 16;
  for (int64_t q : byte_quantities) {
    while (v > 1 && (q % v) != 0) v >>= 1;
  }
  return v;
}

}  // namespace greenprune
