"""Options `greenprune prune` and `greenprune eval` share: data, token budgets, downstream-task limits."""
from __future__ import annotations

from ..errors import GreenpruneError
from ..evaluation.tasks import TaskOptions
from ..jobs.options import JobOptions
from .args import option, switch

J, T = JobOptions(), TaskOptions()


def job_args(p) -> None:
    option(p, "--data", J.data, "calibration data: stdlib | DIR | FILE.jsonl | FILE.json | datasets:PATH | pypkg:NAME "
           "(README: data formats)")
    option(p, "--suffixes", ",".join(J.suffixes), "comma list of more file suffixes read from a data directory "
           "(e.g. .fsx,.vb) beyond the built-in list (README: data formats)")
    p.add_argument("--eval-data", action="append", default=None,
                   help="extra evaluation corpus (repeatable; default: "
                        f"{', '.join(J.eval_data)}, code outside the calibration corpus)")
    option(p, "--calib-tokens", J.calib_tokens, "tokens for activation statistics, Gram matrices and the dense token mass",
           type=int)
    option(p, "--eval-tokens", J.eval_tokens, "tokens per evaluation corpus", type=int)
    option(p, "--seq-len", J.seq_len, "sequence length of calibration blocks / eval windows", type=int)
    option(p, "--nextline-samples", J.nextline_samples, "next-line completion samples (0: no generation: no next-line score, no sample completion)", type=int)
    switch(p, "--no-progress", "no progress bars")


def task_args(p, prefix: str = "") -> None:
    """Downstream-task options both commands take (prefix 'eval-' on prune, where --limit alone is ambiguous)."""
    option(p, f"--{prefix}limit", T.limit, "evaluate the first N problems / examples of each task", type=int)
    switch(p, "--unsafe-exec", "run generated code without isolation where no sandbox can be set up "
           "(the code is untrusted: only on a machine you can lose)")


def job_common(a) -> dict:
    for name in ("calib_tokens", "eval_tokens", "seq_len"):
        if getattr(a, name) < 2:
            raise GreenpruneError(f"--{name.replace('_', '-')} must be >= 2")
    return dict(model=a.model, data=a.data, suffixes=tuple(x.strip() for x in a.suffixes.split(",") if x.strip()), eval_data=tuple(a.eval_data) if a.eval_data is not None else J.eval_data,
                calib_tokens=a.calib_tokens, seq_len=a.seq_len, eval_tokens=a.eval_tokens,
                nextline_samples=a.nextline_samples, progress=not a.no_progress)
