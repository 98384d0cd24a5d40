"""Per-layer widths for any transformers decoder family: model type `greenprune_<base>` (e.g. greenprune_qwen2).

This file imports only torch and transformers, so a per-layer save carries a copy of it and loads with plain
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` (config.json `auto_map` names its classes,
the convention of custom layouts on the Hub); `import greenprune` registers the same classes without remote code.

The config is the base family's own config class plus per-layer lists (`layer_intermediate_sizes`,
`layer_num_attention_heads`, `layer_num_key_value_heads`); the model is the family's own ForCausalLM whose
decoder layer i is the family's own decoder-layer class built from a copy of the config holding layer i's widths.
So every family feature its modeling code has (sliding windows, q/k/v biases, q/k norms, soft-capping, layer
types) is the family's code, not a copy of it. Global width fields hold the widest layer.
Why not transformers' `per_layer_config`: 5.17's Llama modeling reads `num_key_value_heads` and
`intermediate_size` globally and raises AmbiguousGlobalPerLayerAttributeError for heterogeneous values
(tests/pruning/test_prune.py pins that finding).
"""
from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

PREFIX = "greenprune_"
PER_LAYER = {  # config field -> the per-layer list that holds it
    "intermediate_size": "layer_intermediate_sizes",
    "num_attention_heads": "layer_num_attention_heads",
    "num_key_value_heads": "layer_num_key_value_heads",
}
CODE_FILE = "modeling_greenprune.py"
_CLASSES: dict[str, tuple[type, type]] = {}


def _stem(base_config_cls) -> str:
    return base_config_cls.__name__[: -len("Config")]


def per_layer_classes(base_model_type: str) -> tuple[type, type]:
    """(config class, causal-LM class) of model type greenprune_<base_model_type>, made once per process."""
    if base_model_type in _CLASSES:
        return _CLASSES[base_model_type]
    base_cfg = CONFIG_MAPPING[base_model_type]
    base_lm = MODEL_FOR_CAUSAL_LM_MAPPING[base_cfg]
    stem = _stem(base_cfg)
    cfg_name, lm_name = f"Greenprune{stem}Config", f"Greenprune{stem}ForCausalLM"

    def cfg_init(self, layer_intermediate_sizes=None, layer_num_attention_heads=None, layer_num_key_value_heads=None,
                 down_proj_bias=False, o_proj_bias=False, **kwargs):
        self.layer_intermediate_sizes = layer_intermediate_sizes
        self.layer_num_attention_heads = layer_num_attention_heads
        self.layer_num_key_value_heads = layer_num_key_value_heads
        # output biases of down_proj / o_proj only (bias compensation of pruned channels)
        self.down_proj_bias = bool(down_proj_bias)
        self.o_proj_bias = bool(o_proj_bias)
        kwargs.setdefault("auto_map", {"AutoConfig": f"{Path(CODE_FILE).stem}.{cfg_name}",
                                       "AutoModelForCausalLM": f"{Path(CODE_FILE).stem}.{lm_name}"})
        base_cfg.__init__(self, **kwargs)

    def layer_config(self, i: int):
        """A copy of the config with layer i's widths (head_dim and everything else stay global)."""
        c = copy.copy(self)
        for field, lst in PER_LAYER.items():
            values = getattr(self, lst, None)
            if values is not None:
                object.__setattr__(c, field, int(values[i]))
        return c

    def save_pretrained(self, save_directory, *args, **kwargs):
        base_cfg.save_pretrained(self, save_directory, *args, **kwargs)
        dest = Path(save_directory) / CODE_FILE
        if Path(__file__).resolve() != dest.resolve():
            shutil.copyfile(__file__, dest)  # the modeling code travels with the weights (auto_map names it)

    cfg_cls = type(cfg_name, (base_cfg,), {"model_type": PREFIX + base_model_type, "__init__": cfg_init,
                                           "layer_config": layer_config, "save_pretrained": save_pretrained,
                                           "base_model_type": base_model_type, "__module__": __name__})

    def lm_init(self, config):
        base_lm.__init__(self, config)
        layers = self.model.layers
        layer_cls = type(layers[0])
        for i in range(config.num_hidden_layers):
            layer = layer_cls(config.layer_config(i), i)
            add_output_biases_(layer, config.down_proj_bias, config.o_proj_bias)
            layers[i] = layer
        self.post_init()

    lm_cls = type(lm_name, (base_lm,), {"config_class": cfg_cls, "__init__": lm_init, "__module__": __name__})
    _CLASSES[base_model_type] = (cfg_cls, lm_cls)
    return cfg_cls, lm_cls


def add_output_biases_(layer, down: bool, o: bool) -> None:
    """Give a decoder layer's mlp.down_proj / self_attn.o_proj a bias (zero-initialised; weights kept) where asked."""
    for parent, name, want in ((getattr(layer, "mlp", None), "down_proj", down),
                               (getattr(layer, "self_attn", None), "o_proj", o)):
        if not want:
            continue
        lin = getattr(parent, name, None)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"{type(layer).__name__} has no {name} to give a bias")
        if lin.bias is None:
            new = nn.Linear(lin.in_features, lin.out_features, bias=True, device=lin.weight.device, dtype=lin.weight.dtype)
            new.weight = lin.weight
            if new.bias.device.type != "meta":
                nn.init.zeros_(new.bias)
            setattr(parent, name, new)


def __getattr__(name: str):
    """GreenpruneQwen2Config / GreenpruneQwen2ForCausalLM ...: the classes auto_map names, made on first use."""
    m = re.fullmatch(r"Greenprune(\w+?)(Config|ForCausalLM)", name)
    if m:
        for mt, cfg_name in CONFIG_MAPPING_NAMES.items():  # names only: importing every config module is slow
            if cfg_name == f"{m.group(1)}Config" and CONFIG_MAPPING[mt] in MODEL_FOR_CAUSAL_LM_MAPPING:
                return per_layer_classes(mt)[0 if m.group(2) == "Config" else 1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
