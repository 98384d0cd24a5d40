"""`greenprune prune` and `greenprune eval`."""
from __future__ import annotations

from pathlib import Path

from ..errors import GreenpruneError
from ..jobs.evaluate import run_eval
from ..jobs.options import JobOptions
from ..jobs.prune import run_prune
from ..modelio.reports import source_model
from ..modelio.save import write_json_atomic
from ..planning.options import METHODS, PlanOptions
from ..scoring.scorers import SCORERS
from .args import option, switch, tri_state
from .recover import add_recover_args, recover_options
from .tables import print_eval, print_prune

J, P = JobOptions(), PlanOptions()


def _job_args(p) -> None:
    option(p, "--data", J.data, "calibration data: stdlib | DIR | FILE.jsonl | datasets:PATH | pypkg:NAME")
    p.add_argument("--eval-data", action="append", default=None,
                   help="extra evaluation corpus (repeatable; default: "
                        f"{', '.join(J.eval_data)}, code outside the calibration corpus)")
    option(p, "--calib-tokens", J.calib_tokens, "tokens for activation statistics, Gram matrices and the dense token mass",
           type=int)
    option(p, "--eval-tokens", J.eval_tokens, "tokens per evaluation corpus", type=int)
    option(p, "--seq-len", J.seq_len, "sequence length of calibration blocks / eval windows", type=int)
    option(p, "--nextline-samples", J.nextline_samples, "next-line completion samples (0: skip)", type=int)
    switch(p, "--no-progress", "no progress bars")


def add_parsers(sub) -> None:
    p = sub.add_parser("prune", help="prune a model (default: SmolLM2-135M-Instruct by 22%%) and evaluate it")
    p.add_argument("--model", default=None, help="HF model directory, .gguf file, or hub id (default: the embedded SmolLM2-135M)")
    option(p, "--ratio", P.ratio, "fraction of all parameters to remove", type=float)
    option(p, "--align", P.align, "FFN widths are multiples of this", type=int)
    option(p, "--method", P.method, "unified (KL-guided) | uniform | layers", choices=METHODS)
    option(p, "--scorer", J.scorer, "channel / KV-group importance; auto: output-error where its Gram matrices fit "
           "in 4 GiB, else flap", choices=["auto", *SCORERS])
    tri_state(p, "vocab", "vocab", "prune the vocabulary", "on for the unified method, off for the baselines")
    option(p, "--vocab-extra", J.vocab_extra,
           "also keep the N unused tokens the dense model expects most on calibration text", type=int)
    switch(p, "--uniform", "unified method, one FFN width / KV count for all kept layers")
    option(p, "--max-ffn-prune", P.max_ffn_prune, "largest fraction of one layer's FFN removed", type=float)
    switch(p, "--no-layer-drop", "never remove whole layers")
    switch(p, "--kv", "also consider removing KV groups (off by default: out of corpus it generalised worse, README)")
    option(p, "--kl-tokens", J.kl_tokens, "calibration tokens for the KL tables", type=int)
    option(p, "--drop-check-tokens", J.drop_check_tokens,
           "calibration tokens of the whole-plan KL that decides whether removing layers pays", type=int)
    tri_state(p, "reconstruct", "reconstruct", "training-free least-squares refit of the projections that consume "
              "pruned channels", "on where the scorer collected the Gram statistics, i.e. output-error")
    tri_state(p, "bias-compensation", "bias_compensation", "fold the mean output of removed channels into "
              "down_proj/o_proj biases", "on for per-layer plans, off for uniform ones")
    switch(p, "--recover", "LoRA self-distillation toward the dense model before eval")
    add_recover_args(p, prefix="recover-")
    p.add_argument("--plan", default=None, help="apply this plan.json instead of planning")
    option(p, "--out", "out/pruned", "output directory")
    switch(p, "--overwrite", "replace the output directory if it exists")
    switch(p, "--no-eval", "skip evaluation")
    _job_args(p)

    e = sub.add_parser("eval", help="evaluate a model, or a pruned model against its dense reference")
    e.add_argument("--model", default=None, help="model to evaluate (default: the embedded SmolLM2-135M)")
    e.add_argument("--reference", default=None, help="dense reference model (default: the one in the model's report)")
    e.add_argument("--out", default=None, help="write the results as JSON here")
    _job_args(e)


def _common(a) -> dict:
    for name in ("calib_tokens", "eval_tokens", "seq_len"):
        if getattr(a, name) < 2:
            raise GreenpruneError(f"--{name.replace('_', '-')} must be >= 2")
    return dict(model=a.model, data=a.data, eval_data=tuple(a.eval_data) if a.eval_data is not None else J.eval_data,
                calib_tokens=a.calib_tokens, seq_len=a.seq_len, eval_tokens=a.eval_tokens,
                nextline_samples=a.nextline_samples, progress=not a.no_progress)


def prune_options(a) -> JobOptions:
    plan = PlanOptions(ratio=a.ratio, align=a.align, method=a.method, max_ffn_prune=a.max_ffn_prune, kv=a.kv,
                       drop_layers=not a.no_layer_drop, uniform=a.uniform)
    recover = recover_options(a, "recover_", progress=not a.no_progress, seq_len=a.seq_len) if a.recover else None
    return JobOptions(plan=plan, scorer=a.scorer, vocab=a.vocab, vocab_extra=a.vocab_extra, kl_tokens=a.kl_tokens,
                      drop_check_tokens=a.drop_check_tokens, plan_file=a.plan, reconstruct=a.reconstruct,
                      bias_compensation=a.bias_compensation, recover=recover, out=a.out, overwrite=a.overwrite,
                      evaluate=not a.no_eval, **_common(a))


def run_prune_cmd(a) -> int:
    opts = prune_options(a)
    report = run_prune(opts)
    print_prune(report, opts.out)
    return 0


def run_eval_cmd(a) -> int:
    opts = JobOptions(**_common(a))
    ref = a.reference or (source_model(a.model) if a.model else None)
    res = run_eval(a.model, ref, opts)
    print_eval(res)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(a.out), res)
    return 0
