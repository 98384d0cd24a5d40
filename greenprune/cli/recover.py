"""`greenprune recover` and the recovery options `greenprune prune --recover` shares with it."""
from __future__ import annotations

from ..recovery.job import run_recover
from ..recovery.options import RecoverOptions
from .args import option, switch

R = RecoverOptions()


def add_recover_args(p, prefix: str = "") -> None:
    """Recovery options on a parser (prefix 'recover-' for `greenprune prune --recover`)."""
    option(p, f"--{prefix}steps", R.steps, "training steps", type=int)
    option(p, f"--{prefix}lr", R.lr, "peak learning rate", type=float)
    option(p, f"--{prefix}rank", R.rank, "LoRA rank", type=int)
    option(p, f"--{prefix}batch-tokens", R.batch_tokens, "tokens per step", type=int)
    option(p, f"--{prefix}ce-weight", R.ce_weight,
           "add this x cross-entropy on the data to the KL (0: pure self-distillation)", type=float)
    option(p, f"--{prefix}checkpoint-every", R.checkpoint_every,
           "checkpoint every N steps; a rerun of the same command resumes from the last", type=int)
    option(p, f"--{prefix}seed", R.seed, "seed (same seed, same result)", type=int)


def recover_options(a, prefix: str = "", **over) -> RecoverOptions:
    g = lambda name: getattr(a, prefix + name)  # noqa: E731
    return RecoverOptions(steps=g("steps"), lr=g("lr"), rank=g("rank"), batch_tokens=g("batch_tokens"),
                          ce_weight=g("ce_weight"), checkpoint_every=g("checkpoint_every"), seed=g("seed"), **over)


def add_parser(sub) -> None:
    r = sub.add_parser("recover", help="recover a pruned model: LoRA self-distillation toward its dense model")
    r.add_argument("--model", required=True, help="the pruned model directory")
    r.add_argument("--reference", default=None, help="dense reference (default: the one in the model's report)")
    r.add_argument("--data", action="append", default=None,
                   help="stdlib | DIR | pypkg:NAME (documented functions mined from its calibration split) | "
                        f"FILE.jsonl (instruction/response rows); repeatable (default: {', '.join(R.data)})")
    add_recover_args(r)
    option(r, "--seq-len", R.seq_len, "tokens per training block", type=int)
    option(r, "--eval-tokens", R.eval_tokens, "held-out tokens for the KL before/after (0: skip)", type=int)
    r.add_argument("--out", required=True, help="output directory of the recovered model")
    switch(r, "--overwrite", "replace the output directory if it exists")
    switch(r, "--no-progress", "no progress bars")


def run(a) -> int:
    ro = recover_options(a, model=a.model, reference=a.reference, data=tuple(a.data or R.data), seq_len=a.seq_len,
                         eval_tokens=a.eval_tokens, out=a.out, overwrite=a.overwrite, progress=not a.no_progress)
    rep = run_recover(ro)
    kl = rep["heldout_kl"]
    print(f"recovered {a.model} -> {a.out}: {rep['steps']} steps, {rep['train_tokens']:,} tokens, "
          f"{rep['wall_s']['train']} s; held-out KL to dense {kl['before']} -> {kl['after']}")
    return 0
