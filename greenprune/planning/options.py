"""What a plan is asked to be: the budget and the constraints every planner (prune, search, stream) honours.

Every default lives here once; the command line reads it from this dataclass (greenprune.cli.args).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..errors import GreenpruneError
from ..families import ModelShape
from ..precision import DTYPES
from .widths import ffn_widths

METHODS = ("unified", "uniform", "layers")


@dataclass(frozen=True)
class PlanOptions:
    ratio: float = 0.22  # fraction of all parameters removed (Flab-Pruner's headline budget)
    align: int = 64  # FFN widths are multiples of this (GEMM-friendly; 256 for the DeciLM export)
    method: str = "unified"
    max_ffn_prune: float = 0.75  # at most this fraction of a layer's FFN channels goes
    kl_levels: int = 6  # FFN widths measured per layer (others interpolated)
    # KL tables: 0 re-runs every layer above a change (exact, O(layers^2 x candidates) layer passes); N > 0 re-runs
    # N layers and carries their change to the output (O(layers x candidates); agreement in benches/PIPELINE.md)
    kl_depth: int = 0
    # KL tables' replay precision: "auto" = bfloat16 where its matrix products are measured faster (GPUs; CPUs with
    # native bf16), else float32. On SmolLM2-135M bf16 moved table entries by 0.8% (median), 100x less than
    # another 512 calibration tokens moved them (benches/PIPELINE.md); the head and the KL sums stay fp32/fp64
    kl_dtype: str = "auto"
    # Removing KV groups: off by default. On SmolLM2 / stdlib at 22% the KL tables rated late-layer KV groups
    # cheap, but the plan generalised worse out of corpus (rich: 1.163x bpb with KV groups, 1.119x without).
    kv: bool = False
    drop_layers: bool = True  # allow removing whole layers
    uniform: bool = False  # unified method restricted to one width for all kept layers

    def validate(self, shape: Optional[ModelShape] = None) -> None:
        if not (isinstance(self.ratio, (int, float)) and 0.0 < self.ratio < 1.0):
            raise GreenpruneError(f"--ratio must be in (0, 1), got {self.ratio}")
        if self.align < 1:
            raise GreenpruneError(f"--align must be >= 1, got {self.align}")
        if self.method not in METHODS:
            raise GreenpruneError(f"unknown method '{self.method}'; choose from {', '.join(METHODS)}")
        if not (isinstance(self.max_ffn_prune, (int, float)) and 0.0 <= self.max_ffn_prune <= 1.0):  # nan fails
            raise GreenpruneError(f"--max-ffn-prune must be in [0, 1], got {self.max_ffn_prune}")
        if shape is not None and self.align > shape.intermediate_size and self.method != "layers":
            raise GreenpruneError(f"--align {self.align} is larger than the FFN width {shape.intermediate_size}: no "
                                  f"FFN channel could be removed; use an --align of at most {shape.intermediate_size}")
        if self.kl_dtype not in DTYPES:
            raise GreenpruneError(f"--kl-dtype must be one of {', '.join(DTYPES)}, got {self.kl_dtype!r}")
        if not isinstance(self.kl_depth, int) or self.kl_depth < 0:
            raise GreenpruneError(f"--kl-depth must be 0 (exact) or a positive number of layers, got {self.kl_depth}")

    def max_removable(self, shape: ModelShape, vocab_floor: Optional[int] = None) -> float:
        """An upper bound on the fraction of parameters a plan under these constraints can remove, from the shape
        alone (vocab_floor: the fewest tokens the vocabulary may keep; None: the vocabulary stays whole)."""
        F, G, L = shape.intermediate_size, shape.num_key_value_heads, shape.num_hidden_layers
        full = shape.layer_params(F, G)
        least = shape.layer_params(min(self.widths(shape)), min(self.kv_counts(shape)))
        if self.method == "layers":
            layers = (L - 1) * full
        elif self.method == "uniform" or self.uniform or not self.drop_layers:
            layers = L * (full - least)
        else:  # every layer narrowed to the floor or removed, one kept
            layers = (L - 1) * full + (full - least)
        vocab = 0 if vocab_floor is None else shape.vocab_params(shape.vocab_size) - shape.vocab_params(
            min(shape.vocab_size, max(1, vocab_floor)))
        return (layers + vocab) / shape.dense_params

    def check_reachable(self, shape: ModelShape, vocab_floor: Optional[int] = None) -> None:
        """Refuse, before any scoring, a --ratio no plan under these constraints can reach."""
        most = self.max_removable(shape, vocab_floor)
        if self.ratio > most:
            raise GreenpruneError(
                f"--ratio {self.ratio} is unreachable for this model with method '{self.method}': at most "
                f"{most:.1%} of its parameters can go (align {self.align}, at most {self.max_ffn_prune:.0%} of FFN "
                f"channels per layer{'' if self.drop_layers else ', no layer removal'}"
                f"{'' if vocab_floor is None else f', vocabulary down to {vocab_floor} tokens'}); lower --ratio "
                "or relax the constraints")

    def widths(self, shape: ModelShape) -> list[int]:
        """The FFN widths a layer may take, widest first."""
        return ffn_widths(shape.intermediate_size, self.align, self.max_ffn_prune)

    def kv_counts(self, shape: ModelShape) -> list[int]:
        """The KV-group counts a layer may keep, most first."""
        G = shape.num_key_value_heads
        return list(range(G, 0, -1)) if self.kv else [G]

    def max_params(self, shape: ModelShape, reserve: int = 0) -> int:
        """The most parameters a plan may keep: the budget, less `reserve` kept free for what pruning adds."""
        return shape.dense_params - math.ceil(self.ratio * shape.dense_params) - reserve
