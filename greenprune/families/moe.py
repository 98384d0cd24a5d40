"""Mixture-of-experts layers (the shared base of the Qwen3-MoE and Mixtral families).

transformers 5.x keeps a layer's routed experts fused, one 3-D parameter per projection (read from
models/qwen3_moe/modeling_qwen3_moe.py and models/mixtral/modeling_mixtral.py, 5.17):

    mlp.gate.weight               [E, H]       router: logits = x W^T, softmax, top-k (num_experts_per_tok)
    mlp.experts.gate_up_proj      [E, 2I, H]   rows 0..I-1 gate, I..2I-1 up (the forward chunks the output in two)
    mlp.experts.down_proj         [E, H, I]    columns = the expert's channels

Pruning units: a whole expert (its router row and its slices of both fused parameters) and, inside each kept
expert, FFN channels (its rows j and I + j of gate_up_proj, its column j of down_proj); each kept expert keeps
its own channels. A plan's layer names them in `experts_keep` (original expert ids) and `expert_ffn_keep`
(per kept expert, in that order); the router's rows are sliced in the same order, so remaining expert i is
original expert experts_keep[i] in the router and in the experts alike. The softmax then runs over the kept
experts only and top-k is unchanged, so a layer must keep at least num_experts_per_tok experts.

The dense-FFN machinery (activation hooks on the FFN output projection, masked replay, bias compensation,
LoRA) needs an nn.Linear per FFN and is not available for these families: `ffn_out` / `ffn_in` refuse.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import GreenpruneError
from .base import Family
from .shape import ModelShape

ROUTER = "mlp.gate.weight"
GATE_UP = "mlp.experts.gate_up_proj"
DOWN = "mlp.experts.down_proj"


class MoeFamily(Family):
    moe = True
    llama_layers = False
    streamable = False
    ffn_rows = ()  # the experts are sliced by slice_planned, not by the dense rules
    ffn_cols = ()
    experts_field = "num_experts"  # the config field of the expert count

    # --- the config ---------------------------------------------------------------------------------------
    def shape(self, c) -> ModelShape:
        return replace(super().shape(c), intermediate_size=getattr(c, self.ffn_width_field),
                       num_experts=int(getattr(c, self.experts_field)), experts_per_tok=int(c.num_experts_per_tok))

    def layer_widths(self, c) -> list[tuple[int, int]]:
        return [(getattr(c, self.ffn_width_field), c.num_key_value_heads)] * c.num_hidden_layers

    def check(self, config, where: str) -> None:
        e, k = getattr(config, self.experts_field, 0) or 0, getattr(config, "num_experts_per_tok", 0) or 0
        if not 1 <= k <= e:
            raise GreenpruneError(f"{where}: {self.name} config routes each token to {k} of {e} experts")

    def set_widths(self, cfg, ffn_width: int, experts: int) -> None:
        """Write a uniform plan's expert width and count into a copy of the dense config."""
        setattr(cfg, self.ffn_width_field, ffn_width)
        setattr(cfg, self.experts_field, experts)

    # --- modules --------------------------------------------------------------------------------------------
    def router(self, layer) -> torch.nn.Module:
        return layer.mlp.gate

    def experts(self, layer) -> torch.nn.Module:
        return layer.mlp.experts

    def ffn_out(self, layer):
        raise GreenpruneError(f"{self.name}: the experts are fused 3-D parameters; this step needs a dense FFN "
                              "(MoE models are pruned by router statistics: greenprune/planning/moe.py)")

    ffn_in = ffn_out

    def lora_targets(self):
        raise GreenpruneError(f"{self.name}: LoRA recovery of mixture-of-experts models is not supported yet")

    # --- slicing by tensor name ----------------------------------------------------------------------------------
    def slice_planned(self, name: str, t: torch.Tensor, lp, shape: ModelShape) -> torch.Tensor:
        if name in (ROUTER, GATE_UP, DOWN):
            if lp.experts_keep is None or lp.expert_ffn_keep is None:
                raise GreenpruneError(f"layer {lp.index}: the plan names no kept experts / expert channels")
            keep = [torch.as_tensor(k, dtype=torch.long) for k in lp.expert_ffn_keep]
            if name == ROUTER:  # [E, H]: row i of the pruned router is original expert experts_keep[i]
                return t.index_select(0, torch.as_tensor(lp.experts_keep, dtype=torch.long))
            if name == GATE_UP:  # [E, 2I, H]: the expert's gate rows k and up rows I + k
                return torch.stack([t[e].index_select(0, torch.cat([k, k + shape.intermediate_size]))
                                    for e, k in zip(lp.experts_keep, keep)])
            return torch.stack([t[e].index_select(1, k) for e, k in zip(lp.experts_keep, keep)])  # [E, H, I]
        return super().slice_planned(name, t, lp, shape)


def expert_channels(experts: torch.nn.Module, x: torch.Tensor, e: int) -> torch.Tensor:
    """Expert e's channel activations act(gate(x)) * up(x) [T, I] for tokens x [T, H], as the experts' forward
    computes them."""
    gate, up = torch.nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
    return experts.act_fn(gate) * up


def check_every_layer_sparse(config, where: str, name: str) -> None:
    """Qwen-style MoE configs can make some layers dense MLPs (mlp_only_layers / decoder_sparse_step); the MoE
    families prune expert layers only, so such configs are refused."""
    if getattr(config, "mlp_only_layers", None) or getattr(config, "decoder_sparse_step", 1) != 1:
        raise GreenpruneError(f"{where}: {name} with dense-MLP layers (mlp_only_layers / decoder_sparse_step) "
                              "is not supported; every layer must be a mixture of experts")
