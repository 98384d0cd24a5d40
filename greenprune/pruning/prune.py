"""Physical pruning: slice the weights a plan keeps, derive the config from the plan, build the smaller model.

The config is never patched by hand after the fact: `derive_config` computes it from the dense config and the
plan, the pruned model is constructed from it, and the sliced state dict is loaded with strict=True, so any
disagreement between plan, config and weights is an error, not a silent mismatch.
"""
from __future__ import annotations

import copy

import torch

from ..errors import GreenpruneError
from ..families import family_for, layer_of, shape_of
from ..modelio.per_layer import heterogeneous_config, is_per_layer
from ..planning.plan import PruningPlan

_TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def derive_config(config, plan: PruningPlan):
    """The pruned model's config: a plain config of the dense type for uniform plans, else greenprune_<type>."""
    fam = family_for(config)
    if is_per_layer(config):
        raise GreenpruneError("this model is already pruned per layer; prune the dense model instead")
    shape = plan.shape
    widths = [lp.ffn_width for lp in plan.layers]
    kv = [lp.kv_heads for lp in plan.layers]
    heads = [k * shape.heads_per_group for k in kv]
    if fam.moe:
        # modeling_greenprune's per-layer configs hold per-layer intermediate_size and head counts, not expert
        # counts or moe_intermediate_size: a MoE plan must be uniform to be saved (as the family's own type)
        if not plan.is_uniform:
            raise GreenpruneError(f"{fam.name}: per-layer mixture-of-experts plans cannot be saved (widths "
                                  f"{sorted({lp.widths for lp in plan.layers})}); use a uniform plan")
        cfg = copy.deepcopy(config)
        fam.set_widths(cfg, widths[0], plan.layers[0].experts)
        cfg.num_key_value_heads = kv[0]
        cfg.num_attention_heads = heads[0]
    elif plan.is_uniform:
        cfg = copy.deepcopy(config)
        cfg.intermediate_size = widths[0]
        cfg.num_key_value_heads = kv[0]
        cfg.num_attention_heads = heads[0]
    else:
        cfg = heterogeneous_config(config, widths, heads, kv)
    cfg.head_dim = shape.head_dim  # explicit: heads change, head size does not
    cfg.num_hidden_layers = len(plan.layers)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [config.layer_types[lp.index] for lp in plan.layers]
    if plan.vocab_keep is not None:
        cfg.vocab_size = len(plan.vocab_keep)
        remap_token_ids_(cfg, plan.vocab_keep)
    return cfg


def remap_token_ids_(cfg, vocab_keep) -> None:
    """Rewrite a config's (or generation_config's) bos/eos/pad/unk ids, int or list, to the kept vocabulary's
    ids. A dropped eos would silently stop generation from stopping there: that is an error, not a None."""
    remap = {old: new for new, old in enumerate(vocab_keep)}

    def new_id(f, i):
        if i not in remap and f == "eos_token_id":
            raise GreenpruneError(f"the plan's vocabulary drops eos token id {i}: keep every eos id "
                                  "(vocabulary_for keeps model_token_ids(model))")
        return remap.get(i)

    for f in _TOKEN_ID_FIELDS:
        old = getattr(cfg, f, None)
        if isinstance(old, int):
            setattr(cfg, f, new_id(f, old))
        elif isinstance(old, (list, tuple)):
            setattr(cfg, f, [n for n in (new_id(f, o) for o in old) if n is not None] or None)


def pruned_state_dict(model, plan: PruningPlan) -> dict[str, torch.Tensor]:
    if not plan.is_resolved:
        raise GreenpruneError("plan has layers without explicit channels; resolve it with importance scores first")
    fam = family_for(model)
    by_index = {lp.index: (new, lp) for new, lp in enumerate(plan.layers)}
    vocab = torch.tensor(plan.vocab_keep) if plan.vocab_keep is not None else None
    out = {}
    for key, t in model.state_dict().items():
        where = layer_of(key)
        if where:
            old, name = where
            if old not in by_index:
                continue
            new, lp = by_index[old]
            out[f"model.layers.{new}.{name}"] = fam.slice_planned(name, t, lp, plan.shape).contiguous()
        elif vocab is not None and key in fam.vocab_keys:
            out[key] = t.index_select(0, vocab).contiguous()
        else:
            out[key] = t
    return out


def check_plan_matches(model, plan: PruningPlan) -> None:
    got = shape_of(model)
    if is_per_layer(model.config):
        raise GreenpruneError("this model is already pruned per layer; prune the dense model instead")
    if got != plan.shape:
        raise GreenpruneError(f"plan was made for a different model shape: plan {plan.shape}, model {got}")


@torch.no_grad()
def prune_model(model, plan: PruningPlan):
    """A new, smaller model built from `plan`; `model` is left unchanged."""
    from transformers import AutoModelForCausalLM

    if not isinstance(plan, PruningPlan):
        raise GreenpruneError(f"prune_model needs a PruningPlan, got {type(plan).__name__} (a plan.json as a dict: "
                              "PruningPlan.from_dict(d); a file: PruningPlan.load(path))")
    check_plan_matches(model, plan)
    plan.validate()
    cfg = derive_config(model.config, plan)
    sd = pruned_state_dict(model, plan)
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        pruned = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    if getattr(cfg, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    missing, unexpected = pruned.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise GreenpruneError(f"pruned weights do not match the derived config: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        pruned.tie_weights()
    family_for(model).carry_buffers_(model, pruned)  # buffers are not in the state dict
    if getattr(model, "generation_config", None) is not None:
        pruned.generation_config = copy.deepcopy(model.generation_config)
        if plan.vocab_keep is not None:  # its own ids (Llama 3: several eos ids where the config names one)
            remap_token_ids_(pruned.generation_config, plan.vocab_keep)
    return pruned.eval()
