"""Recovery after pruning: LoRA self-distillation of the pruned model toward its dense reference (the loop).

The pruned model learns low-rank corrections (peft LoRA on every projection) that minimise
KL(dense || pruned) on code-instruction data mined from the calibration files (data/instructions.py), computed from
the two models' final hidden states and LM heads by greenprune.kernels.kl_loss, which never builds a
tokens x vocabulary tensor. A pruned vocabulary is compared over the ids it kept: the pruned model reads the
pruned tokenization, the dense model the same text mapped back to its original ids.

Runs are deterministic given the seed (the batch of step s is a function of seed and s; LoRA dropout is 0)
and resumable: checkpoints every `checkpoint_every` steps (checkpoint.py) hold the adapters, the AdamW state
and the loss history, so an interrupted run continues to the same adapters as an uninterrupted one. At the end
the adapters are merged (merge_and_unload) and the model is saved atomically with the pruned tokenizer, plan,
report, a loss curve (loss.png) and recovery_report.json.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from ..errors import GreenpruneError
from ..families import family_for
from ..kernels import kl_loss
from .checkpoint import check_resume, load_checkpoint, restore_optimizer, save_checkpoint
from .options import RecoverOptions

log = logging.getLogger(__name__)


def _lr_at(opts: RecoverOptions, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of lr (a function of the step alone: resumable)."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    frac = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return opts.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def _batch(blocks: torch.Tensor, opts: RecoverOptions, step: int) -> torch.Tensor:
    """The blocks of step `step`: consecutive slices of a per-epoch permutation seeded by (seed, epoch)."""
    b, n = max(1, opts.batch_tokens // opts.seq_len), blocks.shape[0]
    rows = []
    for j in range(step * b, (step + 1) * b):
        epoch, pos = divmod(j, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed * 1_000_003 + epoch))
        rows.append(int(perm[pos]))
    return blocks[rows]


def _loss(pruned, dense, keep, x: torch.Tensor, ce_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, its KL term) of one batch."""
    fd, fp = family_for(dense), family_for(pruned)
    with torch.no_grad():
        hd = fd.backbone(dense)(x if keep is None else keep[x], use_cache=False).last_hidden_state  # [B, L, H]
    hp = fp.backbone(pruned)(x, use_cache=False).last_hidden_state  # [B, L, Hp]: the LoRA layers sit inside pruned
    labels = None
    if ce_weight:
        labels = torch.full_like(x, -100)
        labels[:, :-1] = x[:, 1:]
        labels = labels.reshape(-1)
    return kl_loss(hd.reshape(-1, hd.shape[-1]), fd.head_weight(dense), hp.reshape(-1, hp.shape[-1]),
                   fp.head_weight(pruned), keep, labels=labels, ce_weight=ce_weight, parts=True)


def recover_model(pruned, dense, keep: Optional[torch.Tensor], blocks: torch.Tensor, opts: RecoverOptions,
                  ckpt_dir: Optional[Path] = None, on_step: Optional[Callable[[int, float], None]] = None):
    """Train LoRA adapters on `pruned` (modified in place, then merged) toward `dense`; returns
    (merged model, history). Resumes from `ckpt_dir` when it holds a checkpoint of the same options.
    on_step(step, loss) is called after every step (a KeyboardInterrupt there stops the run like Ctrl-C)."""
    from peft import LoraConfig, get_peft_model

    opts.validate()
    if blocks.ndim != 2 or blocks.shape[0] == 0:
        raise GreenpruneError("no recovery data blocks")
    for p in dense.parameters():
        p.requires_grad_(False)
    dense.eval()
    torch.manual_seed(opts.seed)  # LoRA A matrices are drawn from the global generator
    cfg = LoraConfig(r=opts.rank, lora_alpha=opts.alpha or 2 * opts.rank, lora_dropout=0.0, bias="none",
                     target_modules=list(family_for(pruned).lora_targets()))
    if opts.gradient_checkpointing:
        pruned.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(pruned, cfg)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(list(trainable.values()), lr=opts.lr, weight_decay=0.0)
    history = {"loss": [], "kl": [], "lr": [], "ce_weight": opts.ce_weight,
               "tokens_per_step": int(blocks.shape[1] * max(1, opts.batch_tokens // opts.seq_len))}
    start = 0
    if ckpt_dir is not None:
        ck = load_checkpoint(ckpt_dir)
        if ck is not None:
            state, tensors, opt_tensors = ck
            if state.get("fingerprint") != opts.fingerprint():
                raise GreenpruneError(f"checkpoint {ckpt_dir} was made with other recovery options "
                                      f"({state.get('fingerprint')}); remove it to start over")
            start = check_resume(ckpt_dir, state, tensors, trainable, opts.steps)
            with torch.no_grad():
                for n, p in trainable.items():
                    p.copy_(tensors[n])
            restore_optimizer(opt, opt_tensors)
            history["loss"], history["lr"], history["kl"] = state["loss"], state["lr"], state.get("kl", [])
            log.info("resuming recovery at step %d from %s", start, ckpt_dir)
    model.train()
    desc = f"recovery (KL to dense + {opts.ce_weight:g} CE)" if opts.ce_weight else "recovery (KL to dense)"
    bar = tqdm(total=opts.steps, initial=start, desc=desc, disable=not opts.progress)
    try:
        for step in range(start, opts.steps):
            lr = _lr_at(opts, step)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, kl = _loss(pruned, dense, keep, _batch(blocks, opts, step), opts.ce_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0)
            opt.step()
            loss_v = float(loss.detach())
            history["loss"].append(loss_v)
            history["kl"].append(float(kl))
            history["lr"].append(lr)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4f}")
            done = step + 1
            if ckpt_dir is not None and (done % opts.checkpoint_every == 0 or done == opts.steps):
                save_checkpoint(ckpt_dir, done, trainable, opt,
                                {"fingerprint": opts.fingerprint(), "loss": history["loss"], "kl": history["kl"],
                                 "lr": history["lr"]})
            if on_step is not None:
                on_step(done, loss_v)
    finally:
        bar.close()
    model.eval()
    merged = model.merge_and_unload()
    if opts.gradient_checkpointing:
        merged.gradient_checkpointing_disable()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged.eval(), history
