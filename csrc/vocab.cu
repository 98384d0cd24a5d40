// Serving a vocabulary-pruned model: remapped embedding gather, LM-head argmax / top-k over kept rows.
// Semantics are those of kernels/reference.py (remapped_embedding, lm_head_argmax, lm_head_topk).
#include "common.cuh"
#include "ops.h"

#include <cmath>

namespace greenprune {
namespace {

// ---------------------------------------------------------------------------------------------------------
// remapped_embedding: one warp per token row; each lane copies vec_t words (up to 16 bytes) of the row.
// ---------------------------------------------------------------------------------------------------------
constexpr int kEmbWarps = 8;




template <typename id_t, typename map_t, typename vec_t>
__global__ void remapped_embedding_kernel(const id_t* __restrict__ ids, const map_t* __restrict__ id_map,
                                          const vec_t* __restrict__ w, vec_t* __restrict__ out,
                                          int64_t* __restrict__ kept_out, int64_t N, int64_t V, int64_t K,
                                          int64_t row_vecs, int64_t w_stride_vecs, int64_t fallback) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kEmbWarps + threadIdx.y;
  if (t >= N) return;
  const int lane = threadIdx.x;
  const int64_t id = static_cast<int64_t>(ids[t]);
  const int64_t kept = (id >= 0 && id < V) ? static_cast<int64_t>(id_map[id]) : -1;
  if (lane == 0) kept_out[t] = kept;
  // A missing id takes row `fallback` (-1: zeros). A map entry past the table is never read (zeros): the
  // reference would fail its bounds check there; build_id_map never produces one.
  const int64_t row = kept >= 0 ? kept : fallback;
  vec_t* o = out + t * row_vecs;
  if (row < 0 || row >= K) {
    vec_t zero;
    memset(&zero, 0, sizeof(vec_t));
    for (int64_t i = lane; i < row_vecs; i += kWarp) o[i] = zero;
    return;
  }
  const vec_t* src = w + row * w_stride_vecs;
#pragma unroll 4
  for (int64_t i = lane; i < row_vecs; i += kWarp) o[i] = src[i];
}

template <typename id_t, typename map_t, typename vec_t>
void launch_embedding(const at::Tensor& ids, const at::Tensor& id_map, const at::Tensor& w, at::Tensor& out,
                      at::Tensor& kept, int64_t fallback) {
  const int64_t N = ids.numel(), K = w.size(0);
  const int64_t row_bytes = w.size(1) * w.element_size();
  const int64_t vb = sizeof(vec_t);
  const dim3 block(kWarp, kEmbWarps), grid(static_cast<unsigned>(cdiv(N, kEmbWarps)));
  remapped_embedding_kernel<id_t, map_t, vec_t><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
      ids.data_ptr<id_t>(), id_map.data_ptr<map_t>(), reinterpret_cast<const vec_t*>(w.data_ptr()),
      reinterpret_cast<vec_t*>(out.data_ptr()), kept.data_ptr<int64_t>(), N, id_map.numel(), K, row_bytes / vb,
      w.stride(0) * w.element_size() / vb, fallback);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename id_t, typename map_t>
void dispatch_embedding_vec(const at::Tensor& ids, const at::Tensor& id_map, const at::Tensor& w, at::Tensor& out,
                            at::Tensor& kept, int64_t fallback) {
  const int64_t es = w.element_size();
  const int vb = vector_bytes({w.size(1) * es, w.stride(0) * es, reinterpret_cast<int64_t>(w.data_ptr()),
                               reinterpret_cast<int64_t>(out.data_ptr())});
  switch (vb) {
    case 16: return launch_embedding<id_t, map_t, uint4>(ids, id_map, w, out, kept, fallback);
    case 8: return launch_embedding<id_t, map_t, uint2>(ids, id_map, w, out, kept, fallback);
    case 4: return launch_embedding<id_t, map_t, uint32_t>(ids, id_map, w, out, kept, fallback);
    case 2: return launch_embedding<id_t, map_t, uint16_t>(ids, id_map, w, out, kept, fallback);
    default: return launch_embedding<id_t, map_t, uint8_t>(ids, id_map, w, out, kept, fallback);
  }
}

template <typename id_t>
void dispatch_embedding_map(const at::Tensor& ids, const at::Tensor& id_map, const at::Tensor& w, at::Tensor& out,
                            at::Tensor& kept, int64_t fallback) {
  if (id_map.scalar_type() == at::kInt) return dispatch_embedding_vec<id_t, int32_t>(ids, id_map, w, out, kept, fallback);
  return dispatch_embedding_vec<id_t, int64_t>(ids, id_map, w, out, kept, fallback);
}

// ---------------------------------------------------------------------------------------------------------
// LM-head row reductions over fp32 logits [T, K] (one block per token row), with the kept -> original remap
// fused in: the logits are read once and only ids / values are written.
// ---------------------------------------------------------------------------------------------------------
constexpr int kArgmaxThreads = 256;
constexpr int kTopkThreads = 128;

template <typename kid_t>
__device__ __forceinline__ int64_t to_original(int idx, const kid_t* kept_ids) {
  return kept_ids == nullptr ? static_cast<int64_t>(idx) : static_cast<int64_t>(kept_ids[idx]);
}

template <typename kid_t, bool VEC4>
__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_rows_kernel(const float* __restrict__ logits, const kid_t* __restrict__ kept_ids,
                       int64_t* __restrict__ out, int K) {
  __shared__ float s_v[kWarp];
  __shared__ int s_i[kWarp];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * K;
  float best = -INFINITY;
  int arg = INT32_MAX;  // loses to every real element, including -inf ones (by index)
  if (VEC4) {  // K % 4 == 0 and the rows are 16-byte aligned
    const float4* row4 = reinterpret_cast<const float4*>(row);
    for (int j = threadIdx.x; j < K / 4; j += kArgmaxThreads) {
      const float4 q = row4[j];
      const float e[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (ranks_before(e[u], 4 * j + u, best, arg)) best = e[u], arg = 4 * j + u;
    }
  } else {
    for (int j = threadIdx.x; j < K; j += kArgmaxThreads)
      if (ranks_before(row[j], j, best, arg)) best = row[j], arg = j;
  }
  block_argmax(best, arg, s_v, s_i);
  if (threadIdx.x == 0) out[blockIdx.x] = to_original(arg, kept_ids);
}

// Each thread keeps its own top-k (sorted, in local memory) of a strided slice of the row; then k rounds of a
// block-wide argmax over the threads' list heads pick the row's top-k in order, the winner popping its head.
template <typename kid_t, int KMAX>
__global__ void __launch_bounds__(kTopkThreads)
    topk_rows_kernel(const float* __restrict__ logits, const kid_t* __restrict__ kept_ids,
                     float* __restrict__ val_out, int64_t* __restrict__ id_out, int K, int k) {
  __shared__ float s_v[kWarp];
  __shared__ int s_i[kWarp];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * K;
  float lv[KMAX];
  int li[KMAX];
#pragma unroll
  for (int s = 0; s < KMAX; ++s) lv[s] = -INFINITY, li[s] = INT32_MAX;
  for (int j = threadIdx.x; j < K; j += kTopkThreads) {
    const float v = row[j];
    if (!ranks_before(v, j, lv[k - 1], li[k - 1])) continue;
    int s = k - 1;  // insertion: shift the worse entries down one slot
    while (s > 0 && ranks_before(v, j, lv[s - 1], li[s - 1])) {
      lv[s] = lv[s - 1];
      li[s] = li[s - 1];
      --s;
    }
    lv[s] = v;
    li[s] = j;
  }
  int head = 0;
  for (int r = 0; r < k; ++r) {
    float v = head < k ? lv[head] : -INFINITY;
    int i = head < k ? li[head] : INT32_MAX;
    block_argmax(v, i, s_v, s_i);
    if (head < k && li[head] == i) ++head;  // indices are unique: exactly one thread owns the winner
    if (threadIdx.x == 0) {
      const int64_t o = static_cast<int64_t>(blockIdx.x) * k + r;
      val_out[o] = v;
      id_out[o] = to_original(i, kept_ids);
    }
  }
}

// fp32 logits of h2[T, H] against w[K, H] as the reference computes them: 16-bit operands go through cuBLAS
// with fp32 output (products exact, fp32 accumulation), other combinations through an fp32 GEMM.
at::Tensor logits_fp32(const at::Tensor& h2, const at::Tensor& w) {
  const auto dt = h2.scalar_type();
  if (dt == w.scalar_type() && (dt == at::kHalf || dt == at::kBFloat16)) return at::mm(h2, w.t(), at::kFloat);
  return at::mm(h2.to(at::kFloat), w.to(at::kFloat).t());
}

// Tokens per GEMM chunk: logits of at most ~2^26 floats (256 MiB) exist at a time.
int64_t token_chunk(int64_t T, int64_t K) { return std::max<int64_t>(1, std::min<int64_t>(T, (int64_t{1} << 26) / K)); }

struct Head {
  at::Tensor h2, w, kept;  // h2 [T, H], w [K, H], kept [K] int32/int64 or undefined
};

Head prepare_head(const at::Tensor& h, const at::Tensor& w_kept, const std::optional<at::Tensor>& kept_ids,
                  const char* op) {
  TORCH_CHECK(h.is_cuda() && w_kept.is_cuda(), op, ": h and w_kept must be CUDA tensors");
  TORCH_CHECK(h.dim() >= 1, op, ": h must have a hidden dimension");
  TORCH_CHECK_VALUE(w_kept.dim() == 2 && w_kept.size(1) == h.size(-1), op, ": w_kept ", w_kept.sizes(),
                    " must be [K, ", h.size(-1), "]");
  TORCH_CHECK_VALUE(w_kept.size(0) > 0, op, ": the kept vocabulary is empty");
  TORCH_CHECK(w_kept.size(0) < INT32_MAX, op, ": more than 2^31 kept rows");
  Head hd;
  hd.h2 = h.reshape({-1, h.size(-1)});
  hd.w = w_kept;
  if (kept_ids.has_value() && kept_ids->defined()) {
    const at::Tensor& k = *kept_ids;
    TORCH_CHECK_VALUE(k.numel() == w_kept.size(0), op, ": kept_ids has ", k.numel(), " entries for ",
                      w_kept.size(0), " rows");
    TORCH_CHECK(k.device() == h.device(), op, ": kept_ids must be on ", h.device());
    hd.kept = (k.scalar_type() == at::kInt || k.scalar_type() == at::kLong) ? k.reshape({-1}).contiguous()
                                                                             : k.reshape({-1}).to(at::kLong);
  }
  return hd;
}

template <typename Fn>
void with_kept_ptr(const at::Tensor& kept, Fn&& fn) {
  if (!kept.defined()) return fn(static_cast<const int64_t*>(nullptr));
  if (kept.scalar_type() == at::kInt) return fn(kept.data_ptr<int32_t>());
  return fn(kept.data_ptr<int64_t>());
}

template <typename kid_t>
void launch_topk(const at::Tensor& logits, const kid_t* kept, float* vals, int64_t* ids, int k) {
  const int rows = static_cast<int>(logits.size(0)), K = static_cast<int>(logits.size(1));
  auto stream = at::cuda::getCurrentCUDAStream();
  const float* lp = logits.data_ptr<float>();
  if (k <= 8) topk_rows_kernel<kid_t, 8><<<rows, kTopkThreads, 0, stream>>>(lp, kept, vals, ids, K, k);
  else if (k <= 16) topk_rows_kernel<kid_t, 16><<<rows, kTopkThreads, 0, stream>>>(lp, kept, vals, ids, K, k);
  else if (k <= 32) topk_rows_kernel<kid_t, 32><<<rows, kTopkThreads, 0, stream>>>(lp, kept, vals, ids, K, k);
  else topk_rows_kernel<kid_t, 64><<<rows, kTopkThreads, 0, stream>>>(lp, kept, vals, ids, K, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

constexpr int kMaxRegisterTopk = 64;  // larger k: torch.topk on the logits chunk, then the remap

std::tuple<at::Tensor, at::Tensor> remapped_embedding_cuda(const at::Tensor& ids, const at::Tensor& id_map,
                                                           const at::Tensor& weight, int64_t fallback) {
  TORCH_CHECK(ids.is_cuda() && id_map.is_cuda() && weight.is_cuda(),
              "remapped_embedding: ids, id_map and weight must be CUDA tensors");
  TORCH_CHECK(ids.device() == weight.device() && id_map.device() == weight.device(),
              "remapped_embedding: ids, id_map and weight must be on one device");
  TORCH_CHECK_VALUE(weight.dim() == 2, "remapped_embedding: weight must be [K, H], got ", weight.sizes());
  TORCH_CHECK_VALUE(id_map.dim() == 1, "remapped_embedding: id_map must be [V_orig], got ", id_map.sizes());
  const int64_t K = weight.size(0), H = weight.size(1);
  TORCH_CHECK_VALUE(-1 <= fallback && fallback < K, "remapped_embedding: fallback ", fallback,
                    " is not a kept id (0 <= fallback < ", K, ") or -1 (zeros)");
  TORCH_CHECK_VALUE(!at::isFloatingType(ids.scalar_type()) && !at::isComplexType(ids.scalar_type()) &&
                        ids.scalar_type() != at::kBool,
                    "remapped_embedding: ids must be integers, got ", ids.scalar_type());
  const c10::cuda::CUDAGuard guard(weight.device());
  auto out_shape = ids.sizes().vec();
  out_shape.push_back(H);
  at::Tensor out = at::empty(out_shape, weight.options());
  at::Tensor kept = at::empty(ids.sizes(), ids.options().dtype(at::kLong));
  if (ids.numel() == 0 || H == 0) return {out, kept};
  const at::Tensor flat = (ids.scalar_type() == at::kInt || ids.scalar_type() == at::kLong)
                              ? ids.reshape({-1}).contiguous()
                              : ids.reshape({-1}).to(at::kLong);
  const at::Tensor map = (id_map.scalar_type() == at::kInt || id_map.scalar_type() == at::kLong)
                             ? id_map.contiguous()
                             : id_map.to(at::kLong);
  const at::Tensor w = weight.stride(1) == 1 ? weight : weight.contiguous();
  at::Tensor out2 = out.view({-1, H}), kept1 = kept.view({-1});
  if (flat.scalar_type() == at::kInt) dispatch_embedding_map<int32_t>(flat, map, w, out2, kept1, fallback);
  else dispatch_embedding_map<int64_t>(flat, map, w, out2, kept1, fallback);
  return {out, kept};
}

at::Tensor lm_head_argmax_cuda(const at::Tensor& h, const at::Tensor& w_kept,
                               const std::optional<at::Tensor>& kept_ids) {
  Head hd = prepare_head(h, w_kept, kept_ids, "lm_head_argmax");
  const c10::cuda::CUDAGuard guard(h.device());
  const int64_t T = hd.h2.size(0), K = hd.w.size(0);
  at::Tensor out = at::empty({T}, h.options().dtype(at::kLong));
  const int64_t chunk = token_chunk(T, K);
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t t1 = std::min(T, t0 + chunk);
    const at::Tensor logits = logits_fp32(hd.h2.slice(0, t0, t1), hd.w).contiguous();  // [t, K] fp32
    const bool vec4 = K % 4 == 0 && reinterpret_cast<uintptr_t>(logits.data_ptr()) % 16 == 0;
    int64_t* o = out.data_ptr<int64_t>() + t0;
    with_kept_ptr(hd.kept, [&](auto kept) {
      using kid_t = std::remove_const_t<std::remove_pointer_t<decltype(kept)>>;
      auto stream = at::cuda::getCurrentCUDAStream();
      const unsigned rows = static_cast<unsigned>(t1 - t0);
      if (vec4) argmax_rows_kernel<kid_t, true><<<rows, kArgmaxThreads, 0, stream>>>(logits.data_ptr<float>(), kept, o, K);
      else argmax_rows_kernel<kid_t, false><<<rows, kArgmaxThreads, 0, stream>>>(logits.data_ptr<float>(), kept, o, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  auto shape = h.sizes().vec();
  shape.pop_back();
  return out.view(shape);
}

std::tuple<at::Tensor, at::Tensor> lm_head_topk_cuda(const at::Tensor& h, const at::Tensor& w_kept,
                                                     const std::optional<at::Tensor>& kept_ids, int64_t k) {
  Head hd = prepare_head(h, w_kept, kept_ids, "lm_head_topk");
  const int64_t T = hd.h2.size(0), K = hd.w.size(0);
  TORCH_CHECK_VALUE(1 <= k && k <= K, "lm_head_topk: k=", k, " must be in [1, ", K, "] (the kept vocabulary)");
  const c10::cuda::CUDAGuard guard(h.device());
  at::Tensor vals = at::empty({T, k}, h.options().dtype(at::kFloat));
  at::Tensor ids = at::empty({T, k}, h.options().dtype(at::kLong));
  const int64_t chunk = token_chunk(T, K);
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t t1 = std::min(T, t0 + chunk);
    const at::Tensor logits = logits_fp32(hd.h2.slice(0, t0, t1), hd.w).contiguous();  // [t, K] fp32
    if (k > kMaxRegisterTopk) {
      auto [v, i] = at::topk(logits, k, 1);
      vals.slice(0, t0, t1).copy_(v);
      ids.slice(0, t0, t1).copy_(hd.kept.defined() ? hd.kept.to(at::kLong).index_select(0, i.reshape({-1})).view_as(i) : i);
      continue;
    }
    float* vp = vals.data_ptr<float>() + t0 * k;
    int64_t* ip = ids.data_ptr<int64_t>() + t0 * k;
    with_kept_ptr(hd.kept, [&](auto kept) { launch_topk(logits, kept, vp, ip, static_cast<int>(k)); });
  }
  auto shape = h.sizes().vec();
  shape.back() = k;
  return {vals.view(shape), ids.view(shape)};
}

}  // namespace greenprune
