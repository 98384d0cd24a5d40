"""What one forward step of a (pruned) Llama-family model must move and compute: the floors speed is judged by.

A step runs `new` tokens for each of `batch` sequences after `context` tokens already in the KV cache.
- Weight bytes: every kept layer's parameters read once, plus the final norm and the LM head if the step runs
  the head (the embedding contributes only the rows it gathers, one per token).
- KV bytes: the cache attention reads, `batch x (context + new)` positions x (K, V) x kv_heads x head_dim per
  layer (writing the new positions once more is ignored).
- FLOPs: 2 per multiply-add of every linear map on every token; attention 4 x head_dim per (query head, key)
  pair over the causal pairs (QK^T and PV); the LM head on `head_tokens` tokens per sequence (all `new` for a
  transformers forward, which returns every position's logits; 1 for a server that wants the next token).
Decode is bound by bytes and prefill by FLOPs, so `ideal_speedup` compares two models by the one that binds.
tests/test_cost.py checks the linear FLOPs against torch's FLOP counter on real layers and the bytes against
real parameter counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..families import ModelShape, family_for


@dataclass(frozen=True)
class StepCost:
    weight_bytes: int
    kv_bytes: int
    flops: int

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes


def layer_widths(config) -> list[tuple[int, int]]:
    """(FFN width, KV heads) of every decoder layer of a config, dense or saved per layer (its family's rule)."""
    return family_for(config).layer_widths(config)


def step_cost(shape: ModelShape, layers: Sequence[tuple[int, int]], batch: int, new: int, context: int = 0,
              head_tokens: Optional[int] = None, vocab: Optional[int] = None, dtype_bytes: int = 2) -> StepCost:
    """layers: (FFN width, KV heads) of each kept layer. head_tokens: LM-head positions per sequence (None: no
    head, e.g. a slice of decoder layers); vocab: the head's rows (default the shape's)."""
    h, d = shape.hidden_size, shape.head_dim
    weights = sum(shape.layer_params(w, kv) for w, kv in layers)
    kv_elems = sum(batch * (context + new) * 2 * kv * d for _, kv in layers)
    # linear maps only: norms and biases are additions; per token each weight is one multiply-add
    linear = sum(shape.layer_params(w, kv) - shape.layer_norm_params - shape.attention_biases(kv) - shape.ffn_biases(w) for w, kv in layers)
    pairs = new * context + new * (new + 1) // 2  # causal (query, key) pairs per sequence and head
    attn = sum(4 * batch * kv * shape.heads_per_group * d * pairs for _, kv in layers)
    flops = 2 * batch * new * linear + attn
    if head_tokens is not None:
        v = shape.vocab_size if vocab is None else vocab
        weights += v * h + h + batch * new * h  # the head's rows, the final norm, the embedding rows gathered
        flops += 2 * batch * head_tokens * h * v
    return StepCost(weights * dtype_bytes, kv_elems * dtype_bytes, flops)


def ideal_speedup(dense: StepCost, pruned: StepCost, mode: str) -> float:
    """Dense over pruned work by what binds the step: FLOPs at prefill, bytes at decode."""
    if mode not in ("prefill", "decode"):
        raise ValueError(f"mode must be prefill or decode, got {mode!r}")
    return dense.flops / pruned.flops if mode == "prefill" else dense.bytes / pruned.bytes
