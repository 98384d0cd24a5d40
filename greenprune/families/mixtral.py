"""Mixtral: Mistral attention with routed experts in every layer (families/moe.py); num_local_experts experts of
intermediate_size channels, top num_experts_per_tok per token, the top-k weights always renormalised. No shared
expert. Attention may be limited to a sliding window (config.sliding_window), kept as configured."""
from .moe import MoeFamily


class MixtralFamily(MoeFamily):
    name = "mixtral"
    model_types = ("mixtral",)
    description = "Mixtral (experts and their channels)"
    ffn_width_field = "intermediate_size"
    experts_field = "num_local_experts"
    decoder_layer_class = "transformers.models.mixtral.modeling_mixtral.MixtralDecoderLayer"
    rotary_class = "transformers.models.mixtral.modeling_mixtral.MixtralRotaryEmbedding"

    def layer_attention(self, config, index: int) -> str:
        # MixtralModel masks every layer alike: by the window when the config has one (modeling_mixtral.py)
        return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"


FAMILY = MixtralFamily()
