"""`greenprune prune`, and the data and evaluation options `greenprune eval` shares with it."""
from __future__ import annotations

from ..errors import GreenpruneError
from ..evaluation.tasks import TaskOptions, parse_tasks
from ..jobs.options import JobOptions
from ..jobs.prune import run_prune
from ..planning.options import METHODS, PlanOptions
from ..precision import DTYPES
from ..scoring.scorers import SCORERS
from .args import option, switch, tri_state
from .common import J, job_args, job_common, task_args
from .recover import add_recover_args, recover_options
from .tables import print_prune

P = PlanOptions()


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model (default: SmolLM2-135M-Instruct by 22%%) and evaluate it")
    p.add_argument("--model", default=None, help="HF model directory, .gguf file, or hub id (default: the embedded SmolLM2-135M)")
    option(p, "--ratio", P.ratio, "fraction of all parameters to remove", type=float)
    option(p, "--align", P.align, "FFN widths are multiples of this", type=int)
    option(p, "--method", P.method, "unified (KL-guided) | uniform | layers", choices=METHODS)
    option(p, "--scorer", J.scorer, "channel / KV-group importance; auto: output-error where its Gram matrices fit "
           "in 4 GiB, else flap", choices=["auto", *SCORERS])
    tri_state(p, "vocab", "vocab", "prune the vocabulary", "on for the unified method, off for the baselines")
    option(p, "--vocab-extra", J.vocab_extra,
           "also keep the N unused tokens the dense model expects most on calibration text (none: the unified "
           "per-layer planner chooses N by its measured cost against FFN channels and layers; others keep 2048)",
           type=int)
    option(p, "--vocab-probe-tokens", J.vocab_probe_tokens, "held-out calibration tokens each vocabulary size is "
           "scored on when the planner chooses it", type=int)
    switch(p, "--uniform", "the unified method (KL tables, vocabulary) restricted to one FFN width / KV count for "
           "all kept layers; --method uniform is the baseline: one width from the budget alone, no KL tables")
    option(p, "--max-ffn-prune", P.max_ffn_prune, "largest fraction of one layer's FFN removed", type=float)
    switch(p, "--no-layer-drop", "never remove whole layers")
    switch(p, "--kv", "also consider removing KV groups (a key/value head with its query heads); off by default: "
           "on SmolLM2 at 22%% the plan with KV groups generalised worse out of corpus (rich 1.163x vs 1.119x bits/byte)")
    option(p, "--stats-dtype", J.stats_dtype, "precision of the activation-statistics pass (auto: bfloat16 where its "
           "matrix products are measured faster here, else float32; statistics accumulate in fp32)",
           choices=list(DTYPES))
    option(p, "--kl-tokens", J.kl_tokens, "calibration tokens for the KL tables", type=int)
    option(p, "--kl-depth", P.kl_depth, "KL tables: layers re-run above each change (0: all, exact; N: a proxy whose "
           "cost grows linearly with depth)", type=int)
    option(p, "--kl-dtype", P.kl_dtype, "precision of the KL tables' layer replays (auto: bfloat16 where its matrix "
           "products are measured faster here, else float32)", choices=list(DTYPES))
    option(p, "--drop-check-tokens", J.drop_check_tokens,
           "calibration tokens of the whole-plan KL that decides whether removing layers pays", type=int)
    tri_state(p, "reconstruct", "reconstruct", "training-free least-squares refit of the projections that consume "
              "pruned channels", "on where the scorer collected the Gram statistics, i.e. output-error")
    tri_state(p, "bias-compensation", "bias_compensation", "fold the mean output of removed channels into "
              "down_proj/o_proj biases", "on for per-layer plans, off for uniform ones")
    switch(p, "--recover", "LoRA self-distillation toward the dense model before eval")
    add_recover_args(p, prefix="recover-")
    p.add_argument("--plan", default=None, help="apply this plan.json instead of planning (default: none, plan here)")
    option(p, "--out", "out/pruned", "output directory")
    switch(p, "--overwrite", "replace the output directory if it exists")
    switch(p, "--no-eval", "skip evaluation")
    option(p, "--eval-tasks", None, "downstream tasks to run on the dense and the pruned model, side by side in the "
           "report: humaneval and/or lm-eval:TASK[,TASK] (the dense model's results are cached)")
    task_args(p, prefix="eval-")
    job_args(p)


def prune_options(a) -> JobOptions:
    plan = PlanOptions(ratio=a.ratio, align=a.align, method=a.method, max_ffn_prune=a.max_ffn_prune, kv=a.kv,
                       drop_layers=not a.no_layer_drop, uniform=a.uniform, kl_depth=a.kl_depth,
                       kl_dtype=a.kl_dtype)
    recover = recover_options(a, "recover_", progress=not a.no_progress, seq_len=a.seq_len) if a.recover else None
    return JobOptions(plan=plan, scorer=a.scorer, vocab=a.vocab, vocab_extra=a.vocab_extra,
                      vocab_probe_tokens=a.vocab_probe_tokens, kl_tokens=a.kl_tokens,
                      stats_dtype=a.stats_dtype, drop_check_tokens=a.drop_check_tokens, plan_file=a.plan, reconstruct=a.reconstruct,
                      bias_compensation=a.bias_compensation, recover=recover, out=a.out, overwrite=a.overwrite,
                      evaluate=not a.no_eval, eval_tasks=eval_task_options(a), **job_common(a))


def eval_task_options(a):
    if not a.eval_tasks:
        return None
    tasks = TaskOptions(tasks=(a.eval_tasks,), limit=a.eval_limit, unsafe_exec=a.unsafe_exec)
    own, _ = parse_tasks(tasks.tasks)
    if "bpb" in own:
        raise GreenpruneError("--eval-tasks: bpb is prune's own evaluation (on unless --no-eval); name only "
                              "downstream tasks (humaneval, lm-eval:TASK)")
    tasks.validate()
    return tasks


def run_prune_cmd(a) -> int:
    opts = prune_options(a)
    report = run_prune(opts)
    print_prune(report, opts.out)
    return 0
