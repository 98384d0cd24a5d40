"""Options of the prune and eval jobs; every default lives here once (the command line reads them from here)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

from ..evaluation.tasks import TaskOptions
from ..planning.options import PlanOptions
from ..planning.plan import PruningPlan
from ..recovery.options import RecoverOptions


# unused tokens kept beyond the calibration corpus's when the vocabulary's size is not traded, and the fewest the
# traded sizes keep (SmolLM2, stdlib, vocabulary alone: rich 1.046x -> 1.032x bits/byte with 2048 by dense output
# mass, pruning.vocab; the default job with none: rich 1.125x, with 2048: 1.087x, benches/PIPELINE.md)
VOCAB_EXTRA = 2048


@dataclass(frozen=True)
class JobOptions:
    model: Optional[str] = None  # None: the embedded default (SmolLM2-135M-Instruct)
    data: str = "stdlib"
    suffixes: tuple[str, ...] = ()  # file suffixes read from a data directory beyond corpus.CODE_SUFFIXES
    eval_data: tuple[str, ...] = ("pypkg:rich",)  # code outside the calibration corpus, besides the held-out split
    plan: PlanOptions = field(default_factory=PlanOptions)
    scorer: str = "auto"  # output-error where its Gram matrices fit, else flap (scoring.scorers.resolve_scorer_name)
    vocab: Optional[bool] = None  # None: on for the unified method, off for the baselines
    vocab_min_count: int = 1
    # also keep the N unused tokens the dense model expects most (pruning.vocab.VocabularyRanking). None: the unified
    # per-layer planner chooses N by measured cost against FFN channels and layers (planning/vocab_options.py); the
    # other plans keep VOCAB_EXTRA
    vocab_extra: Optional[int] = None
    vocab_probe_tokens: int = 4096  # held-out calibration tokens each vocabulary option is scored on
    # activation statistics, Gram matrices, dense token mass. Measured on SmolLM2 at the 22% widths (output-error,
    # FFN only, bits/byte x dense stdlib / rich): 4096 tokens 1.085 / 1.084, 16384 tokens 1.073 / 1.081; the
    # vocabulary from the 16384-token mass costs 1.037x on rich, from 4096 tokens 1.048x
    calib_tokens: int = 16384
    # precision of the activation-statistics pass ("auto": as for the KL tables, greenprune.precision.resolve_dtype);
    # the statistics are accumulated in fp32 and the scores use the model's own weights
    stats_dtype: str = "auto"
    kl_tokens: int = 512  # KL tables of the unified planner
    drop_check_tokens: int = 2048  # whole-plan KL that decides whether removing layers pays (check_layer_drops)
    seq_len: int = 256
    eval_tokens: int = 8192
    nextline_samples: int = 32
    # training-free least-squares refit of down_proj / o_proj (pruning/compensation.py). None: on wherever the scorer
    # already collected the Gram statistics it needs (the output-error scorer, chosen by --scorer auto where they
    # fit), so it costs seconds. Measured on the unified plans with bias compensation, dense bits/byte x held-out
    # stdlib / rich, without -> with the refit: 22% 1.065/1.113 -> 1.041/1.097, 30% 1.160/1.234 -> 1.112/1.183,
    # 50% 2.107/1.905 -> 1.956/1.808 (README quality table)
    reconstruct: Optional[bool] = None
    reconstruct_ridge: float = 1.0
    # fold removed channels' mean output into down_proj/o_proj biases (compensation.compensate_). None: on for
    # per-layer plans, which are saved as greenprune_llama anyway (measured on the unified 22% plan: 1.093x ->
    # 1.072x dense bits/byte held-out stdlib, 1.119x -> 1.103x rich); off for uniform plans, which then stay a
    # plain llama config that any Llama loader reads (--bias-compensation turns it on there too)
    bias_compensation: Optional[bool] = None
    recover: Optional[RecoverOptions] = None  # LoRA self-distillation after pruning (greenprune.recovery)
    plan_file: Optional[str] = None
    out: Optional[str] = None
    overwrite: bool = False
    evaluate: bool = True
    eval_tasks: Optional[TaskOptions] = None  # downstream tasks (HumanEval, lm-eval) beside the closeness metrics
    progress: bool = True

    def use_reconstruct(self, stats) -> bool:
        if self.reconstruct is not None:
            return self.reconstruct
        return all(st.ffn_gram is not None for st in stats)

    def use_bias_compensation(self, plan: PruningPlan) -> bool:
        return (not plan.is_uniform) if self.bias_compensation is None else self.bias_compensation

    def could_use_bias_compensation(self) -> bool:
        """Whether the plan to be made may get bias compensation (its budget then leaves room for the biases)."""
        return bool(self.bias_compensation) or (self.bias_compensation is None and self.plan.method == "unified"
                                                and not self.plan.uniform)

    @property
    def use_vocab(self) -> bool:
        return self.plan.method == "unified" if self.vocab is None else self.vocab

    @property
    def trades_vocab(self) -> bool:
        """Whether the planner chooses the vocabulary's size by measured cost (vocab_options.py)."""
        return (self.use_vocab and self.vocab_extra is None and self.plan.method == "unified"
                and not self.plan.uniform and self.plan_file is None)

    @property
    def fixed_vocab_extra(self) -> int:
        """The unused tokens kept when the size is not traded."""
        return VOCAB_EXTRA if self.vocab_extra is None else self.vocab_extra

    def vocab_floor(self, base_ids: int = 1) -> Optional[int]:
        """The fewest tokens the vocabulary may keep, for the reachability check (None: the vocabulary stays);
        base_ids: the tokens every pruned vocabulary keeps (pruning.vocab.TokenizerSpec.base_ids)."""
        if not self.use_vocab:
            return None
        return max(1, base_ids) if self.trades_vocab else max(1, base_ids, self.fixed_vocab_extra)


class Timer:
    """Wall seconds of each named stage of a job (the report's timings_s)."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t, 2)
