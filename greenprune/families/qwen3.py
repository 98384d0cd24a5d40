"""Qwen3: the Llama layout with per-head q and k RMSNorms over head_dim (self_attn.q_norm / k_norm).

The norms are shared by every head, so removing KV groups leaves them whole; head_dim is its own setting (not
hidden / heads). Optional sliding layers come from config.layer_types, as the Qwen3 model masks them."""
from .base import Family


class Qwen3Family(Family):
    name = "qwen3"
    model_types = ("qwen3",)
    description = "Qwen3"
    llama_layers = False  # q/k norms: not exported as Llama / DeciLM
    qk_norm = True
    decoder_layer_class = "transformers.models.qwen3.modeling_qwen3.Qwen3DecoderLayer"
    rotary_class = "transformers.models.qwen3.modeling_qwen3.Qwen3RotaryEmbedding"


FAMILY = Qwen3Family()
