"""Per-layer widths of any family, saved as model type `greenprune_<base>` (modeling_greenprune.py, which travels
with the save as remote code); `import greenprune` registers every family's per-layer type with the transformers
Auto classes, so such saves load with or without trust_remote_code. Uniform plans stay the family's own type.
"""
from __future__ import annotations

import copy

from transformers import AutoConfig, AutoModelForCausalLM

from ..errors import GreenpruneError
from ..families import FAMILIES
from .modeling_greenprune import PREFIX, add_output_biases_, per_layer_classes

__all__ = ["PREFIX", "add_output_biases_", "heterogeneous_config", "is_per_layer", "per_layer_classes"]


def is_per_layer(config_or_type) -> bool:
    mt = config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", "")
    return bool(mt) and mt.startswith(PREFIX)


def heterogeneous_config(base, intermediate: list, heads: list, kv_heads: list):
    """A greenprune_<base> config: `base`'s settings with per-layer widths (global fields hold the widest)."""
    base_type = getattr(base, "base_model_type", None) or base.model_type
    if base_type not in FAMILIES or is_per_layer(base_type):
        raise GreenpruneError(f"no per-layer model type for '{base_type}'")
    if FAMILIES[base_type].moe:  # its per-layer lists hold no expert counts / expert widths
        raise GreenpruneError(f"{base_type}: mixture-of-experts models have no per-layer save; use a uniform plan")
    cfg_cls, _ = per_layer_classes(base_type)
    d = copy.deepcopy(base.to_dict())
    for k in ("model_type", "architectures", "per_layer_config", "auto_map", "transformers_version"):
        d.pop(k, None)
    for k in ("layer_intermediate_sizes", "layer_num_attention_heads", "layer_num_key_value_heads"):
        d.pop(k, None)
    d["head_dim"] = getattr(base, "head_dim", None) or base.hidden_size // base.num_attention_heads
    cfg = cfg_cls(layer_intermediate_sizes=[int(x) for x in intermediate],
                  layer_num_attention_heads=[int(x) for x in heads],
                  layer_num_key_value_heads=[int(x) for x in kv_heads], **d)
    cfg.intermediate_size = max(intermediate)
    cfg.num_attention_heads = max(heads)
    cfg.num_key_value_heads = max(kv_heads)
    cfg.architectures = [per_layer_classes(base_type)[1].__name__]
    return cfg


def _register() -> None:
    for mt in {m for fam in FAMILIES.values() for m in fam.model_types if not is_per_layer(m)}:
        cfg_cls, lm_cls = per_layer_classes(mt)
        AutoConfig.register(cfg_cls.model_type, cfg_cls, exist_ok=True)
        AutoModelForCausalLM.register(cfg_cls, lm_cls, exist_ok=True)


_register()
