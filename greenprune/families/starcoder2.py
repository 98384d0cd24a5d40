"""StarCoder2: a non-gated MLP (mlp.c_fc [F, H] -> activation -> mlp.c_proj [H, F], both with biases), q/k/v/o
biases (config.use_bias), LayerNorms with biases. An FFN channel is a row of c_fc (weight and bias) and a column
of c_proj; c_proj's and o_proj's own biases stay whole."""
from dataclasses import replace

from .base import Family


class Starcoder2Family(Family):
    name = "starcoder2"
    model_types = ("starcoder2",)
    description = "StarCoder2"
    llama_layers = False
    streamable = False
    ffn_rows = ("mlp.c_fc",)
    ffn_cols = ("mlp.c_proj",)
    norm_bias = True
    gated_mlp = False
    decoder_layer_class = "transformers.models.starcoder2.modeling_starcoder2.Starcoder2DecoderLayer"
    rotary_class = "transformers.models.starcoder2.modeling_starcoder2.Starcoder2RotaryEmbedding"

    def shape(self, c):
        bias = bool(getattr(c, "use_bias", True))
        return replace(super().shape(c), attention_bias=bias, mlp_bias=bias)

    def ffn_out(self, layer):
        return layer.mlp.c_proj

    def ffn_in(self, layer):
        return [layer.mlp.c_fc]


FAMILY = Starcoder2Family()
