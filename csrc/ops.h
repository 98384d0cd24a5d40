// CUDA implementations of greenprune's ops (registered as torch.ops.greenprune_cuda.* in bindings.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace greenprune {

std::tuple<at::Tensor, at::Tensor> remapped_embedding_cuda(const at::Tensor& ids, const at::Tensor& id_map,
                                                           const at::Tensor& weight, int64_t fallback);
at::Tensor lm_head_argmax_cuda(const at::Tensor& h, const at::Tensor& w_kept,
                               const std::optional<at::Tensor>& kept_ids);
std::tuple<at::Tensor, at::Tensor> lm_head_topk_cuda(const at::Tensor& h, const at::Tensor& w_kept,
                                                     const std::optional<at::Tensor>& kept_ids, int64_t k);
std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_moments_cuda(const at::Tensor& x,
                                                                    const std::optional<at::Tensor>& shift);

}  // namespace greenprune
