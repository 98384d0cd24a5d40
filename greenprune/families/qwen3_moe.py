"""Qwen3-MoE (Qwen3-30B-A3B and its kind): Qwen3 attention (per-head q/k RMSNorms) with routed experts in every
layer (families/moe.py); num_experts experts of moe_intermediate_size channels, top num_experts_per_tok per
token, the top-k weights renormalised when norm_topk_prob. No shared expert. Layers with a dense MLP instead
(mlp_only_layers, decoder_sparse_step > 1) are refused: a uniform plan could not describe both kinds."""
from .moe import MoeFamily, check_every_layer_sparse


class Qwen3MoeFamily(MoeFamily):
    name = "qwen3_moe"
    model_types = ("qwen3_moe",)
    description = "Qwen3-MoE (experts and their channels)"
    qk_norm = True
    ffn_width_field = "moe_intermediate_size"
    experts_field = "num_experts"
    decoder_layer_class = "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeDecoderLayer"
    rotary_class = "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeRotaryEmbedding"

    def check(self, config, where: str) -> None:
        super().check(config, where)
        check_every_layer_sparse(config, where, "Qwen3-MoE")


FAMILY = Qwen3MoeFamily()
