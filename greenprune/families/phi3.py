"""Phi-3: fused projections. self_attn.qkv_proj stacks q [heads*d], k [kv*d], v [kv*d] rows; mlp.gate_up_proj
stacks gate [F] and up [F] rows (Phi3MLP chunks it in two). A KV group is its rows in each of the three
blocks; an FFN channel is its row in each of the two."""
import torch

from .base import Family


class Phi3Family(Family):
    name = "phi3"
    model_types = ("phi3",)
    description = "Phi-3"
    llama_layers = False
    streamable = False
    ffn_rows = ()
    q_rows = ()
    kv_rows = ()
    decoder_layer_class = "transformers.models.phi3.modeling_phi3.Phi3DecoderLayer"
    rotary_class = "transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding"

    def ffn_in(self, layer):
        return [layer.mlp.gate_up_proj]

    def fold_ffn_rows(self, per_row):
        return per_row.view(2, -1).sum(0)  # gate row j + up row j

    def lora_targets(self):
        return ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")

    def slice_layer_tensor(self, name, t, ffn_keep, kv_keep, shape):
        part = name.rpartition(".")[0]
        if part == "mlp.gate_up_proj":
            keep = torch.as_tensor(ffn_keep, dtype=torch.long)
            return t.index_select(0, torch.cat([keep, keep + shape.intermediate_size]))
        if part == "self_attn.qkv_proj":
            q = shape.num_attention_heads * shape.head_dim
            kv = shape.num_key_value_heads * shape.head_dim
            k = shape.kv_channels(kv_keep)
            return t.index_select(0, torch.cat([shape.query_channels(kv_keep), q + k, q + kv + k]))
        return super().slice_layer_tensor(name, t, ffn_keep, kv_keep, shape)


FAMILY = Phi3Family()
