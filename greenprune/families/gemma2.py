"""Gemma 2: four RMSNorms per layer, embeddings scaled by sqrt(hidden), attention-logit and final-logit
soft-capping (config fields the Gemma 2 modeling code applies), alternating sliding/global layers
(config.layer_types), head_dim unlike hidden / heads, tied embeddings. Pruning slices only the projections."""
from .base import Family


class Gemma2Family(Family):
    name = "gemma2"
    model_types = ("gemma2",)
    description = "Gemma 2"
    llama_layers = False
    streamable = False  # scaled embeddings: not in the streamed pass
    norms_per_layer = 4
    decoder_layer_class = "transformers.models.gemma2.modeling_gemma2.Gemma2DecoderLayer"
    rotary_class = "transformers.models.gemma2.modeling_gemma2.Gemma2RotaryEmbedding"


FAMILY = Gemma2Family()
