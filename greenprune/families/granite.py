"""Granite: the Llama layout with scalar multipliers (embedding_multiplier, residual_multiplier,
attention_multiplier, logits_scaling) in the config, which the Granite modeling code applies and pruning keeps."""
from .base import Family


class GraniteFamily(Family):
    name = "granite"
    model_types = ("granite",)
    description = "Granite"
    llama_layers = False  # the multipliers have no place in a Llama / DeciLM export
    streamable = False  # the embedding multiplier: not in the streamed pass
    decoder_layer_class = "transformers.models.granite.modeling_granite.GraniteDecoderLayer"
    rotary_class = "transformers.models.granite.modeling_granite.GraniteRotaryEmbedding"


FAMILY = GraniteFamily()
