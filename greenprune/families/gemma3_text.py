"""Gemma 3 (text): four RMSNorms per layer (before and after attention and FFN, weights as 1 + w), per-head q/k
norms, embeddings scaled by sqrt(hidden) (a buffer, carried over), a sliding/global layer pattern
(config.layer_types, kept per kept layer) with its own rotary base per kind, head_dim unlike hidden / heads, and
tied embeddings. All of it is the Gemma modeling code's, read from the config; pruning slices only the
projections (the Llama layout's names)."""
from .base import Family


class Gemma3TextFamily(Family):
    name = "gemma3_text"
    model_types = ("gemma3_text",)
    description = "Gemma 3 (text)"
    llama_layers = False
    streamable = False  # scaled embeddings and per-kind rotary bases: not in the streamed pass
    norms_per_layer = 4
    qk_norm = True
    decoder_layer_class = "transformers.models.gemma3.modeling_gemma3.Gemma3DecoderLayer"
    rotary_class = "transformers.models.gemma3.modeling_gemma3.Gemma3RotaryEmbedding"


FAMILY = Gemma3TextFamily()
