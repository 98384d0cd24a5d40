"""The recover job: load a pruned model and its dense reference, recover it (train.py), save it atomically with
the pruned tokenizer, plan, reports and loss curve; and the same after `greenprune prune --recover`."""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from ..data import corpus
from ..data.instructions import build_examples, example_blocks
from ..errors import GreenpruneError
from ..evaluation.metrics import agreement
from ..modelio.load import load_model, num_params
from ..modelio.reports import REPORT_NAME, read_report, reference_spec, source_spec
from ..modelio.save import save_model_dir
from ..pruning.vocab_map import plan_of, vocab_mapping
from .options import RecoverOptions
from .plots import plot_loss
from .train import recover_model


def recovery_blocks(tokenizer, opts: RecoverOptions) -> tuple[torch.Tensor, list]:
    """Token blocks of the recovery data (pruned tokenizer) and a summary of each data spec."""
    examples, summary = [], []
    for spec in opts.data:
        ex, s = build_examples(spec, opts.eval_data)
        examples += ex
        summary.append(s)
    return example_blocks(tokenizer, examples, opts.seq_len, opts.max_data_tokens), summary


def heldout_kl(dense, pruned, ptok, keep, tokens: int, seq_len: int) -> Optional[float]:
    if tokens <= 0:
        return None
    dtok_texts = corpus.eval_snippets(ptok, corpus.calibration_and_heldout("stdlib")[1], tokens)
    return agreement(dense, pruned, ptok, dtok_texts, None if keep is None else keep.tolist(), seq_len, False)["kl"]


def checkpoint_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def run_recover(opts: RecoverOptions) -> dict:
    """Load the pruned model and its reference, recover, save to opts.out; returns the recovery report."""
    opts.validate()
    if not opts.model:
        raise GreenpruneError("recover needs the pruned model directory (--model)")
    if not opts.out:
        raise GreenpruneError("recover needs an output directory (--out)")
    src, out = Path(opts.model), Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise GreenpruneError(f"output directory {out} exists (use --overwrite to replace it)")
    if out.resolve() == src.resolve():
        raise GreenpruneError("--out must differ from --model: the source model is never modified")
    ref = reference_spec(src, opts.reference)
    pruned, ptok = load_model(str(src))
    dense, dtok = load_model(ref)
    plan = plan_of(src)
    keep = vocab_mapping(pruned, ptok, dense, dtok, plan)
    t0 = time.time()
    blocks, data_summary = recovery_blocks(ptok, opts)
    kl_before = heldout_kl(dense, pruned, ptok, keep, opts.eval_tokens, opts.seq_len)
    ckpt = checkpoint_dir_for(out)
    t1 = time.time()
    merged, history = recover_model(pruned, dense, keep, blocks, opts, ckpt)
    train_s = time.time() - t1
    kl_after = heldout_kl(dense, merged, ptok, keep, opts.eval_tokens, opts.seq_len)
    report = {
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()},
        "reference": source_spec(ref),
        "data": data_summary, "data_blocks": int(blocks.shape[0]),
        "train_tokens": history["tokens_per_step"] * opts.steps, "steps": opts.steps,
        "loss": history["loss"], "kl": history["kl"], "params": num_params(merged),
        "heldout_kl": {"before": kl_before, "after": kl_after, "tokens": opts.eval_tokens},
        "wall_s": {"train": round(train_s, 1), "total": round(time.time() - t0, 1)},
        "threads": torch.get_num_threads(),
    }
    save_recovered(merged, ptok, src, out, report, history, opts.overwrite)
    shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: nothing left to resume
    return report


def save_recovered(model, tokenizer, src: Optional[Path], out: Path, report: dict, history: dict, overwrite: bool) -> None:
    """Atomic save of the recovered model with the pruned tokenizer, plan, reports and loss curve."""
    base = (read_report(src) if src is not None else None) or {}
    copies = [src / f for f in ("plan.json", "plan.png") if src is not None and (src / f).exists()]
    summary = {k: v for k, v in report.items() if k not in ("loss", "kl")}
    base.setdefault("source_model", report.get("reference"))
    save_model_dir(out, model=model, tokenizer=tokenizer, copy_files=copies, overwrite=overwrite,
                   writers=[lambda d: plot_loss(history, d / "loss.png")],
                   json_files={REPORT_NAME: {**base, "recovery": summary}, "recovery_report.json": report})


def recover_after_prune(pruned, ptok, dense, dtok, vocab_keep, opts: RecoverOptions, out: Optional[Path], data: str,
                        eval_data: tuple[str, ...]):
    """`greenprune prune --recover`: recover the freshly pruned model in memory (checkpoints beside out)."""
    keep = None if vocab_keep is None else torch.tensor(list(vocab_keep))
    opts = RecoverOptions(**{**asdict(opts), "data": (data,), "eval_data": tuple(eval_data)})
    blocks, summary = recovery_blocks(ptok, opts)
    ckpt = checkpoint_dir_for(Path(out)) if out is not None else None
    t = time.time()
    merged, history = recover_model(pruned, dense, keep, blocks, opts, ckpt)
    info = {"data": summary, "steps": opts.steps, "train_tokens": history["tokens_per_step"] * opts.steps,
            "final_loss": history["loss"][-1] if history["loss"] else None, "wall_s": round(time.time() - t, 1),
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()}}
    return merged, history, info
