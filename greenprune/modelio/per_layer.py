"""A Llama model type with per-layer widths, registered with the transformers Auto classes.

Why not `per_layer_config`: transformers 5.17's Llama modeling reads `config.num_key_value_heads` and
`config.intermediate_size` globally, and a heterogeneous config raises AmbiguousGlobalPerLayerAttributeError
there (checked with a 3-layer model; tests/pruning/test_prune.py pins that finding). So greenprune saves per-layer
plans as `model_type: greenprune_llama`: a LlamaConfig plus three per-layer lists. `import greenprune` makes
`AutoConfig` / `AutoModelForCausalLM` load it; uniform plans stay plain `llama` and need nothing.
"""
from __future__ import annotations

import copy
from typing import Optional

from torch import nn

from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

PER_LAYER_FIELDS = ("intermediate_size", "num_attention_heads", "num_key_value_heads")


class GreenpruneLlamaConfig(LlamaConfig):
    model_type = "greenprune_llama"

    def __init__(
        self,
        layer_intermediate_sizes: Optional[list] = None,
        layer_num_attention_heads: Optional[list] = None,
        layer_num_key_value_heads: Optional[list] = None,
        down_proj_bias: bool = False,
        o_proj_bias: bool = False,
        **kwargs,
    ):
        self.layer_intermediate_sizes = layer_intermediate_sizes
        self.layer_num_attention_heads = layer_num_attention_heads
        self.layer_num_key_value_heads = layer_num_key_value_heads
        # Output biases of down_proj / o_proj only (bias compensation of pruned channels, pruning/compensation.py);
        # Llama's mlp_bias / attention_bias would add zero biases to gate/up and q/k/v as well.
        self.down_proj_bias = bool(down_proj_bias)
        self.o_proj_bias = bool(o_proj_bias)
        super().__init__(**kwargs)

    def layer_config(self, i: int) -> LlamaConfig:
        """A plain LlamaConfig with layer i's widths (head_dim stays global)."""
        c = LlamaConfig(**{k: v for k, v in self.to_dict().items() if not k.startswith("layer_")})
        c.model_type = "llama"
        for field in PER_LAYER_FIELDS:
            values = getattr(self, f"layer_{field}s" if field == "intermediate_size" else f"layer_{field}")
            if values is not None:
                setattr(c, field, int(values[i]))
        c.head_dim = self.head_dim
        c._attn_implementation = self._attn_implementation
        return c


class GreenpruneLlamaForCausalLM(LlamaForCausalLM):
    config_class = GreenpruneLlamaConfig

    def __init__(self, config: GreenpruneLlamaConfig):
        super().__init__(config)
        for i in range(config.num_hidden_layers):
            layer = LlamaDecoderLayer(config.layer_config(i), i)
            add_output_biases_(layer, config.down_proj_bias, config.o_proj_bias)
            self.model.layers[i] = layer
        self.post_init()


def add_output_biases_(layer, down: bool, o: bool) -> None:
    """Give a decoder layer's down_proj / o_proj a bias (zero-initialised; weights kept) where asked."""
    for parent, name, want in ((layer.mlp, "down_proj", down), (layer.self_attn, "o_proj", o)):
        lin = getattr(parent, name)
        if want and lin.bias is None:
            new = nn.Linear(lin.in_features, lin.out_features, bias=True, device=lin.weight.device, dtype=lin.weight.dtype)
            new.weight = lin.weight
            if new.bias.device.type != "meta":
                nn.init.zeros_(new.bias)
            setattr(parent, name, new)


def heterogeneous_config(base: LlamaConfig, intermediate: list, heads: list, kv_heads: list) -> GreenpruneLlamaConfig:
    d = copy.deepcopy(base.to_dict())
    d.pop("model_type", None)
    d.pop("architectures", None)
    d.pop("per_layer_config", None)
    d["head_dim"] = getattr(base, "head_dim", None) or base.hidden_size // base.num_attention_heads
    cfg = GreenpruneLlamaConfig(
        layer_intermediate_sizes=[int(x) for x in intermediate],
        layer_num_attention_heads=[int(x) for x in heads],
        layer_num_key_value_heads=[int(x) for x in kv_heads],
        **d,
    )
    # Global fields hold the widest layer so code that reads them sizes buffers safely.
    cfg.intermediate_size = max(intermediate)
    cfg.num_attention_heads = max(heads)
    cfg.num_key_value_heads = max(kv_heads)
    cfg.architectures = ["GreenpruneLlamaForCausalLM"]
    return cfg


AutoConfig.register("greenprune_llama", GreenpruneLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(GreenpruneLlamaConfig, GreenpruneLlamaForCausalLM, exist_ok=True)
