"""The family seam: where a model family keeps its parts and how each is sliced.

Everything in greenprune that touches weights (importance, pruning, compensation, masked fitness, streaming,
export, serving) reaches a model's parts through its `Family`, never by attribute names of its own. The base
class describes the Llama layout, which most families share:

    model.model.embed_tokens  [V, H]          model.lm_head [V, H] (tied or not)     model.model.norm
    model.model.layers[i]:
        self_attn.q_proj [heads*d, H]  k_proj, v_proj [kv*d, H]  o_proj [H, heads*d]   (biases per family)
        mlp.gate_proj, mlp.up_proj [F, H]  (rows = FFN channels)   mlp.down_proj [H, F]  (columns = channels)
        input_layernorm, post_attention_layernorm

Pruning units: an FFN channel is a row of every `ffn_rows` projection (weight and bias) and a column of every
`ffn_cols` one; a KV group is its rows of `kv_rows`, its query heads' rows of `q_rows` and their columns of
`o_cols` (the consumer). A family file subclasses Family and overrides what differs; greenprune.families
finds it by the module-level `FAMILY` object (adding a family is one new file plus its tests).
"""
from __future__ import annotations

import copy
import re
from typing import Optional

import torch
from torch import nn

from .shape import ModelShape

PER_LAYER_PREFIX = "greenprune_"  # per-layer saves: model type greenprune_<type> (modelio/modeling_greenprune.py)
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")  # a decoder layer's tensor in the state dict


class Family:
    name = "llama"
    model_types: tuple[str, ...] = ()
    description = ""  # shown in the list of supported families
    # tensor names relative to a decoder layer (without ".weight" / ".bias")
    ffn_rows: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")
    ffn_cols: tuple[str, ...] = ("mlp.down_proj",)
    q_rows: tuple[str, ...] = ("self_attn.q_proj",)
    kv_rows: tuple[str, ...] = ("self_attn.k_proj", "self_attn.v_proj")
    o_cols: tuple[str, ...] = ("self_attn.o_proj",)
    vocab_keys: tuple[str, ...] = ("model.embed_tokens.weight", "lm_head.weight")  # rows = token ids
    # whether its decoder layers compute exactly what Llama layers compute, so that a save can be exported as a
    # plain Llama / DeciLM checkpoint (deploy/export.py); per-layer saves of every family are greenprune_<type>
    llama_layers = True
    # whether `greenprune stream` handles it: the streamed pass embeds and runs layers itself, so families whose
    # embedding or residual stream is scaled (Gemma, Granite) are refused there until it does
    streamable = True
    # parameter-count features (families/shape.py)
    norms_per_layer = 2
    norm_bias = False
    qk_norm = False
    gated_mlp = True
    # mixture of experts (families/moe.py): routed experts in every decoder layer instead of one FFN
    moe = False
    ffn_width_field = "intermediate_size"  # the config field of the width `shape().intermediate_size` reads
    # transformers classes of one decoder layer and of the rotary embedding (layer streaming builds them)
    decoder_layer_class = "transformers.models.llama.modeling_llama.LlamaDecoderLayer"
    rotary_class = "transformers.models.llama.modeling_llama.LlamaRotaryEmbedding"

    # --- the config ---------------------------------------------------------------------------------------
    def shape(self, c) -> ModelShape:
        return ModelShape(
            num_hidden_layers=c.num_hidden_layers,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
            vocab_size=c.vocab_size,
            tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(c, "attention_bias", False)),
            qkv_bias_only=False,
            mlp_bias=bool(getattr(c, "mlp_bias", False)),
            norms_per_layer=self.norms_per_layer,
            norm_bias=self.norm_bias,
            qk_norm=self.qk_norm,
            gated_mlp=self.gated_mlp,
        )

    def layer_widths(self, c) -> list[tuple[int, int]]:
        """(FFN width, KV heads) of every decoder layer of a config (dense, or saved per layer)."""
        n = c.num_hidden_layers
        ffn = getattr(c, "layer_intermediate_sizes", None) or [c.intermediate_size] * n
        kv = getattr(c, "layer_num_key_value_heads", None) or [c.num_key_value_heads] * n
        return list(zip(ffn, kv))

    def check(self, config, where: str) -> None:
        """Refuse or warn about configurations this family's code cannot handle (default: none)."""

    # --- modules --------------------------------------------------------------------------------------------
    def backbone(self, model) -> nn.Module:
        """The decoder stack without the LM head (its forward returns last_hidden_state, normed)."""
        return model.model

    def layers(self, model) -> nn.ModuleList:
        return model.model.layers

    def final_norm(self, model) -> nn.Module:
        return model.model.norm

    def lm_head(self, model) -> nn.Linear:
        return model.lm_head

    def logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        """The model's next-token logits (fp32) from its final normed hidden states: the LM head, then what the
        modeling code applies after it (Granite's logits_scaling, Gemma 2/3's final soft-capping), so that a
        metric computed from hidden states is the model's own."""
        return self.transform_logits(model, self.lm_head(model)(hidden).float())

    def transform_logits(self, model, z: torch.Tensor) -> torch.Tensor:
        """The LM head's output z turned into the model's logits (see logits())."""
        scale = _logits_scaling(model)
        if scale != 1:
            z = z / scale
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            z = torch.tanh(z / cap) * cap
        return z

    def head_weight(self, model) -> torch.Tensor:
        """The LM head as the linear map to the logits that the KL kernels take (hidden states x weight): Granite's
        logits_scaling folded in. A final soft-capping (Gemma 2) is not linear and is left out, so the planner's
        and the distillation's KL there are those of the uncapped logits; the evaluation applies it (logits())."""
        w, scale = self.lm_head(model).weight, _logits_scaling(model)
        return w if scale == 1 else w / scale

    def ffn_out(self, layer) -> nn.Linear:
        """The projection that consumes the FFN channels: its input is the channel activations."""
        return layer.mlp.down_proj

    def attn_out(self, layer) -> nn.Linear:
        """The projection that consumes the attention heads: its input is heads x head_dim."""
        return layer.self_attn.o_proj

    def ffn_in(self, layer) -> list[nn.Linear]:
        """The projections whose output rows are the FFN channels."""
        return [layer.mlp.gate_proj, layer.mlp.up_proj]

    def mlp(self, layer) -> nn.Module:
        return layer.mlp

    def set_mlp(self, layer, module: nn.Module) -> None:
        layer.mlp = module

    def lora_targets(self) -> tuple[str, ...]:
        """Module names LoRA adapts (every projection of a decoder layer)."""
        return tuple(p.rsplit(".", 1)[-1] for p in (*self.q_rows, *self.kv_rows, *self.o_cols, *self.ffn_rows, *self.ffn_cols))

    def swiglu_mlp(self, config) -> bool:
        """Whether its MLP is down(silu(gate(x)) * up(x)) with separate gate_proj / up_proj (greenprune's fused
        SwiGLU serving op computes exactly that and nothing else)."""
        return self.ffn_rows == ("mlp.gate_proj", "mlp.up_proj") and getattr(config, "hidden_act", None) == "silu"

    def fold_ffn_rows(self, per_row: torch.Tensor) -> torch.Tensor:
        """Per-row values of one `ffn_in` projection as per-channel values [F] (fused projections override)."""
        return per_row

    def carry_buffers_(self, dense, pruned) -> None:
        """Copy what the state dict does not hold from dense to pruned: the backbone's parameterless modules
        (rotary embeddings, whose tensors are non-persistent) whole, then every other buffer by name (Gemma's
        embedding scale); a buffer left unset (on the meta device) is an error."""
        src, dst = self.backbone(dense), self.backbone(pruned)
        for name, child in src.named_children():
            if next(child.parameters(), None) is None and next(child.buffers(), None) is not None:
                setattr(dst, name, copy.deepcopy(child))
        have = dict(dense.named_buffers())
        for name, buf in list(pruned.named_buffers()):
            if buf.device.type == "meta":
                if name not in have:
                    raise RuntimeError(f"buffer {name} of the pruned model has no counterpart in the dense one")
                owner, _, leaf = name.rpartition(".")
                mod = pruned.get_submodule(owner)
                persistent = leaf not in mod._non_persistent_buffers_set
                mod.register_buffer(leaf, have[name].clone(), persistent=persistent)

    # --- slicing by tensor name (state dicts, shards) -----------------------------------------------------------
    def slice_layer_tensor(self, name: str, t: torch.Tensor, ffn_keep, kv_keep, shape: ModelShape) -> torch.Tensor:
        """One tensor of a decoder layer (`name` relative to the layer) sliced to the kept FFN channels and KV
        groups; tensors no unit owns (norms, output biases) are returned as they are."""
        part, _, kind = name.rpartition(".")
        if part in self.ffn_rows:
            return t.index_select(0, torch.as_tensor(ffn_keep, dtype=torch.long))
        if part in self.ffn_cols and kind == "weight":
            return t.index_select(1, torch.as_tensor(ffn_keep, dtype=torch.long))
        if part in self.q_rows:
            return t.index_select(0, shape.query_channels(kv_keep))
        if part in self.kv_rows:
            return t.index_select(0, shape.kv_channels(kv_keep))
        if part in self.o_cols and kind == "weight":
            return t.index_select(1, shape.query_channels(kv_keep))
        return t

    def slice_planned(self, name: str, t: torch.Tensor, lp, shape: ModelShape) -> torch.Tensor:
        """One tensor of a decoder layer sliced as its LayerPlan `lp` says (MoE families also slice experts)."""
        return self.slice_layer_tensor(name, t, lp.ffn_keep, lp.kv_keep, shape)

    # --- layer streaming --------------------------------------------------------------------------------------
    def decoder_layer(self, config, index: int) -> nn.Module:
        """An empty decoder layer (on the current default device) of this family."""
        return _import(self.decoder_layer_class)(config, index)

    def rotary_embedding(self, config) -> nn.Module:
        return _import(self.rotary_class)(config)

    def layer_attention(self, config, index: int) -> str:
        """The attention kind of layer `index`: 'full_attention' or 'sliding_attention'."""
        types = getattr(config, "layer_types", None)
        return types[index] if types else "full_attention"

    def attention_masks(self, config, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> dict:
        """The masks the model's own forward passes its layers, by attention kind."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kw = dict(config=config, inputs_embeds=inputs_embeds, attention_mask=None, past_key_values=None,
                  position_ids=position_ids)
        kinds = {self.layer_attention(config, i) for i in range(config.num_hidden_layers)}
        masks = {"full_attention": create_causal_mask(**kw)}
        if "sliding_attention" in kinds:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        return masks


def _logits_scaling(model) -> float:
    """What the modeling code divides the head's output by (Granite's logits_scaling; 1 elsewhere)."""
    scale = getattr(model.config, "logits_scaling", None)
    return 1.0 if scale is None else scale


def _import(path: str):
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def layer_of(key: str) -> Optional[tuple[int, str]]:
    """(layer index, name within the layer) of a decoder layer's state-dict key, None for other keys."""
    m = LAYER_KEY.match(key)
    return (int(m.group(1)), m.group(2)) if m else None
