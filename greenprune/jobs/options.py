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
    vocab_extra: int = 2048  # also keep the N unused tokens the dense model expects most (pruning.vocab.choose_vocabulary)
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


class Timer:
    """Wall seconds of each named stage of a job (the report's timings_s)."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t, 2)
