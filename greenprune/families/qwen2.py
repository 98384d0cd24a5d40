"""Qwen2 (Qwen2 / Qwen2.5, CodeQwen1.5): the Llama layout with q, k, v biases (no o bias)."""
from dataclasses import replace

from .base import Family


class Qwen2Family(Family):
    name = "qwen2"
    model_types = ("qwen2",)
    description = "Qwen2, Qwen2.5, CodeQwen1.5"
    llama_layers = False  # Llama layers have no q/k/v-only biases: not exported as Llama / DeciLM
    decoder_layer_class = "transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer"
    rotary_class = "transformers.models.qwen2.modeling_qwen2.Qwen2RotaryEmbedding"

    def shape(self, c):
        return replace(super().shape(c), attention_bias=False, qkv_bias_only=True)


FAMILY = Qwen2Family()
