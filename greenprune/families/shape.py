"""The dense model's dimensions that pruning changes or depends on, and the parameter arithmetic.

A family (greenprune.families) derives a ModelShape from its config (`shape_of(config)`); plans carry it
(`plan.json` "shape"), so the fields and their meaning are part of the plan format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass(frozen=True)
class ModelShape:
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False  # q, k, v, o biases (Llama attention_bias)
    qkv_bias_only: bool = False  # Qwen2: q, k, v biases, no o bias
    mlp_bias: bool = False
    # family features that change the parameter count (defaults: the Llama layout)
    norms_per_layer: int = 2  # hidden-size norms in a decoder layer (Gemma 2/3: 4)
    norm_bias: bool = False  # LayerNorm with a bias (StarCoder2), the final norm too
    qk_norm: bool = False  # per-head q and k norms over head_dim (Qwen3, Gemma 3)
    gated_mlp: bool = True  # gate and up projections (False: one input projection, StarCoder2)
    # mixture of experts (families/moe.py): experts per layer (0: a dense FFN) and experts each token is routed to;
    # intermediate_size is then one expert's width (Qwen3-MoE moe_intermediate_size, Mixtral intermediate_size)
    num_experts: int = 0
    experts_per_tok: int = 0
    shared_expert_size: int = 0  # a dense shared expert's width beside the routed ones (Qwen2-MoE), kept whole

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def group_channels(self) -> int:
        """Attention-output channels of one KV group: its query heads x head_dim."""
        return self.head_dim * self.heads_per_group

    # --- which rows / columns a set of kept KV groups keeps (each group with its query heads) ---
    def query_channels(self, kv_keep: Sequence[int]) -> torch.Tensor:
        """Rows of q_proj (= columns of o_proj) of the kept groups' query heads, in order."""
        d, r = self.head_dim, self.heads_per_group
        return torch.tensor([(k * r + h) * d + j for k in kv_keep for h in range(r) for j in range(d)], dtype=torch.long)

    def kv_channels(self, kv_keep: Sequence[int]) -> torch.Tensor:
        """Rows of k_proj / v_proj of the kept KV heads, in order."""
        d = self.head_dim
        return torch.tensor([k * d + j for k in kv_keep for j in range(d)], dtype=torch.long)

    # --- parameter arithmetic (tests check it against real pruned models) ---
    def attention_biases(self, kv_heads: int) -> int:
        q, kv, h = kv_heads * self.heads_per_group * self.head_dim, kv_heads * self.head_dim, self.hidden_size
        if self.attention_bias:
            return q + 2 * kv + h
        if self.qkv_bias_only:
            return q + 2 * kv
        return 0

    def ffn_biases(self, width: int) -> int:
        return ((2 if self.gated_mlp else 1) * width + self.hidden_size) if self.mlp_bias else 0

    def attention_params(self, kv_heads: int) -> int:
        q_heads = kv_heads * self.heads_per_group
        h, d = self.hidden_size, self.head_dim
        return h * q_heads * d * 2 + h * kv_heads * d * 2 + self.attention_biases(kv_heads)  # q, o ; k, v

    def ffn_params(self, width: int, experts: Optional[int] = None) -> int:
        """One FFN of `width` channels; MoE: `experts` experts of that width (default all) and the router's rows."""
        one = (3 if self.gated_mlp else 2) * self.hidden_size * width + self.ffn_biases(width)
        if not self.num_experts:
            return one
        e = self.num_experts if experts is None else experts
        shared = (3 * self.shared_expert_size + 1) * self.hidden_size if self.shared_expert_size else 0  # + its gate [1, H]
        return e * (one + self.hidden_size) + shared  # + one router row [H] per expert

    @property
    def norm_params(self) -> int:
        """One hidden-size norm."""
        return self.hidden_size * (2 if self.norm_bias else 1)

    @property
    def layer_norm_params(self) -> int:
        """A decoder layer's norms (they do not change with its widths)."""
        return self.norms_per_layer * self.norm_params + (2 * self.head_dim if self.qk_norm else 0)

    def layer_params(self, ffn_width: int, kv_heads: int, experts: Optional[int] = None) -> int:
        return self.attention_params(kv_heads) + self.ffn_params(ffn_width, experts) + self.layer_norm_params

    def vocab_params(self, vocab: int) -> int:
        return vocab * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def total_params(self, layers: Sequence[tuple], vocab: int) -> int:
        """layers: (ffn_width, kv_heads) of each kept layer, or (ffn_width, kv_heads, experts) for MoE layers."""
        return sum(self.layer_params(*lw) for lw in layers) + self.vocab_params(vocab) + self.norm_params

    @property
    def dense_params(self) -> int:
        full = [(self.intermediate_size, self.num_key_value_heads)] * self.num_hidden_layers
        return self.total_params(full, self.vocab_size)
