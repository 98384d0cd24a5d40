"""Mistral: the Llama layout; attention may be limited to a sliding window (config.sliding_window)."""
import logging

from .base import Family

log = logging.getLogger(__name__)


class MistralFamily(Family):
    name = "mistral"
    model_types = ("mistral",)
    description = "Mistral"
    decoder_layer_class = "transformers.models.mistral.modeling_mistral.MistralDecoderLayer"
    rotary_class = "transformers.models.mistral.modeling_mistral.MistralRotaryEmbedding"

    def check(self, config, where: str) -> None:
        if getattr(config, "sliding_window", None) not in (None, 0):
            log.warning("%s: Mistral sliding-window attention is kept as configured", where)

    def layer_attention(self, config, index: int) -> str:
        # MistralModel masks every layer alike: by the window when the config has one
        return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"


FAMILY = MistralFamily()
