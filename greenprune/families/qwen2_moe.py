"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2 attention (q/k/v biases, config.qkv_bias) with routed experts in
every layer (families/moe.py) plus a dense shared expert (mlp.shared_expert: gate/up/down_proj of
shared_expert_intermediate_size, scaled by sigmoid(mlp.shared_expert_gate(x))). Routed experts and their channels
are pruned; the shared expert is kept whole. Dense-MLP layers (mlp_only_layers, decoder_sparse_step > 1) are
refused: a uniform plan could not describe both kinds."""
from dataclasses import replace

from .moe import MoeFamily, check_every_layer_sparse


class Qwen2MoeFamily(MoeFamily):
    name = "qwen2_moe"
    model_types = ("qwen2_moe",)
    description = "Qwen2-MoE (routed experts and their channels; shared expert kept)"
    ffn_width_field = "moe_intermediate_size"
    experts_field = "num_experts"
    decoder_layer_class = "transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeDecoderLayer"
    rotary_class = "transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeRotaryEmbedding"

    def shape(self, c):
        return replace(super().shape(c), attention_bias=False, qkv_bias_only=bool(getattr(c, "qkv_bias", True)),
                       shared_expert_size=int(c.shared_expert_intermediate_size))

    def check(self, config, where: str) -> None:
        super().check(config, where)
        check_every_layer_sparse(config, where, "Qwen2-MoE")


FAMILY = Qwen2MoeFamily()
