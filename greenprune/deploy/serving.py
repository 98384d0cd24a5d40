"""Serving a (pruned) model through greenprune's fused ops instead of eager torch.

`fuse_for_serving(model)` swaps every decoder layer's Llama MLP for `FusedSwiGLU`, which calls
greenprune.kernels.swiglu_ffn (gate and up as one GEMM with the SiLU product in the epilogue, then the down
GEMM) on a gate/up weight concatenated once at load time. The widths can be anything a plan produced,
aligned or not. `greedy_step` takes the next tokens with kernels.lm_head_argmax, which never writes the
[batch, vocab] logits. Both go through the kernels' dispatcher: Triton (or the CUDA extension) on a GPU, the
torch reference elsewhere, so a fused model computes the same function on every machine.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import GreenpruneError
from ..families import FAMILIES, family_for
from ..kernels import fuse_gate_up, lm_head_argmax, swiglu_ffn


class FusedSwiGLU(nn.Module):
    """A Llama MLP (down(silu(gate(x)) * up(x)), optional down bias) on the fused swiglu_ffn op."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        act = type(getattr(mlp, "act_fn", None)).__name__
        if act not in ("SiLU", "SiLUActivation"):
            raise GreenpruneError(f"fused serving needs a SiLU-gated MLP, this one uses {act}")
        if mlp.gate_proj.bias is not None or mlp.up_proj.bias is not None:
            raise GreenpruneError("fused serving needs gate/up projections without bias (mlp_bias=False)")
        self.w_gate_up = nn.Parameter(fuse_gate_up(mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()),
                                      requires_grad=False)
        self.down_proj = mlp.down_proj  # weight and the bias that bias compensation may have added

    @property
    def intermediate_size(self) -> int:
        return self.w_gate_up.shape[0] // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = swiglu_ffn(x, self.w_gate_up, self.down_proj.weight)
        return y if self.down_proj.bias is None else y + self.down_proj.bias


def fuse_for_serving(model) -> int:
    """Replace every decoder layer's MLP of `model` in place by FusedSwiGLU; returns how many were replaced.
    The gate/up weights are concatenated once (the model then holds that copy instead of the two matrices)."""
    fam, n = family_for(model), 0
    if not fam.swiglu_mlp(model.config):
        ok = sorted({f.description or f.name for f in FAMILIES.values() if f.ffn_rows == ("mlp.gate_proj", "mlp.up_proj")})
        raise GreenpruneError(f"the fused SwiGLU op needs a SiLU-gated MLP with gate_proj / up_proj ({', '.join(ok)} "
                              f"with hidden_act silu); {fam.description or fam.name} with hidden_act "
                              f"'{getattr(model.config, 'hidden_act', None)}' runs eager only")
    for layer in fam.layers(model):
        if isinstance(fam.mlp(layer), FusedSwiGLU):
            continue
        fam.set_mlp(layer, FusedSwiGLU(fam.mlp(layer)))
        n += 1
    return n


@torch.no_grad()
def greedy_step(model, input_ids: torch.Tensor, **forward_kwargs) -> tuple[torch.Tensor, object]:
    """One greedy decoding step: the decoder's last hidden state through lm_head_argmax (no logits tensor).
    Returns (next token ids [batch, 1], the model output carrying past_key_values)."""
    fam = family_for(model)
    out = fam.backbone(model)(input_ids=input_ids, **forward_kwargs)
    h = out.last_hidden_state[:, -1]
    return lm_head_argmax(h, fam.lm_head(model).weight).unsqueeze(-1), out
