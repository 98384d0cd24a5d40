// greenprune._C: registers the CUDA ops under torch.ops.greenprune_cuda with the same schemas as the
// torch.ops.greenprune custom ops of kernels/ (kernels/dispatch.py prefers them on CUDA tensors), plus Meta
// kernels (output shapes only, symbolic-size aware) for FakeTensor / torch.compile / torch.library.opcheck.
#include <torch/extension.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include "ops.h"

namespace greenprune {
namespace {

c10::SymDimVector with_last(c10::SymIntArrayRef sizes, std::optional<c10::SymInt> last, bool drop_last) {
  c10::SymDimVector out(sizes.begin(), sizes.end());
  if (drop_last) out.pop_back();
  if (last.has_value()) out.push_back(*last);
  return out;
}

std::tuple<at::Tensor, at::Tensor> remapped_embedding_meta(const at::Tensor& ids, const at::Tensor& id_map,
                                                           const at::Tensor& weight, int64_t fallback) {
  return {at::empty_symint(with_last(ids.sym_sizes(), weight.sym_size(1), false), weight.options()),
          at::empty_symint(ids.sym_sizes(), ids.options().dtype(at::kLong))};
}

at::Tensor lm_head_argmax_meta(const at::Tensor& h, const at::Tensor& w_kept,
                               const std::optional<at::Tensor>& kept_ids) {
  return at::empty_symint(with_last(h.sym_sizes(), std::nullopt, true), h.options().dtype(at::kLong));
}

std::tuple<at::Tensor, at::Tensor> lm_head_topk_meta(const at::Tensor& h, const at::Tensor& w_kept,
                                                     const std::optional<at::Tensor>& kept_ids, int64_t k) {
  auto shape = with_last(h.sym_sizes(), c10::SymInt(k), true);
  return {at::empty_symint(shape, h.options().dtype(at::kFloat)),
          at::empty_symint(shape, h.options().dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_moments_meta(const at::Tensor& x,
                                                                    const std::optional<at::Tensor>& shift) {
  const c10::SymDimVector c{x.sym_size(-1)};
  const auto opts = x.options().dtype(at::kFloat);
  return {at::empty_symint(c, opts), at::empty_symint(c, opts), at::empty_symint(c, opts)};
}

}  // namespace
}  // namespace greenprune

TORCH_LIBRARY(greenprune_cuda, m) {
  m.def("remapped_embedding(Tensor ids, Tensor id_map, Tensor weight, int fallback) -> (Tensor, Tensor)");
  m.def("lm_head_argmax(Tensor h, Tensor w_kept, Tensor? kept_ids) -> Tensor");
  m.def("lm_head_topk(Tensor h, Tensor w_kept, Tensor? kept_ids, int k) -> (Tensor, Tensor)");
  m.def("channel_moments(Tensor x, Tensor? shift) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(greenprune_cuda, CUDA, m) {
  m.impl("remapped_embedding", &greenprune::remapped_embedding_cuda);
  m.impl("lm_head_argmax", &greenprune::lm_head_argmax_cuda);
  m.impl("lm_head_topk", &greenprune::lm_head_topk_cuda);
  m.impl("channel_moments", &greenprune::channel_moments_cuda);
}

TORCH_LIBRARY_IMPL(greenprune_cuda, Meta, m) {
  m.impl("remapped_embedding", &greenprune::remapped_embedding_meta);
  m.impl("lm_head_argmax", &greenprune::lm_head_argmax_meta);
  m.impl("lm_head_topk", &greenprune::lm_head_topk_meta);
  m.impl("channel_moments", &greenprune::channel_moments_meta);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "greenprune's CUDA ops; call them through greenprune.kernels (torch.ops.greenprune_cuda.*)";
  m.attr("ops") = pybind11::make_tuple("remapped_embedding", "lm_head_argmax", "lm_head_topk", "channel_moments");
  m.attr("cuda_runtime_version") = CUDART_VERSION;  // the CUDA toolkit the extension was compiled with
  m.attr("torch_version") = TORCH_VERSION;          // the torch headers it was compiled against
}
