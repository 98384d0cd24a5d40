"""Recovery after pruning: LoRA self-distillation of the pruned model toward its dense reference.

The pruned model learns low-rank corrections (peft LoRA on every projection) that minimise
KL(dense || pruned) on code-instruction data mined from the calibration files (instructions.py), computed from
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

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from . import data as data_mod
from .checkpoint import load_checkpoint, restore_optimizer, save_checkpoint
from .errors import GreenpruneError
from .evaluate import agreement
from .instructions import build_examples, example_blocks
from .models import atomic_dir, load_model, num_params, write_json_atomic
from .plan import ModelShape, PruningPlan

log = logging.getLogger(__name__)
REPORT_NAME = "greenprune_report.json"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class RecoverOptions:
    model: Optional[str] = None  # the pruned model directory (run_recover); unused by recover_model
    reference: Optional[str] = None  # None: the dense model named in the pruned model's report
    data: tuple[str, ...] = ("stdlib",)  # stdlib | DIR | pypkg:NAME (mined functions) | FILE.jsonl (instruction rows)
    # defaults = the measured runs (README): 512 tokens a step took 7-12 s on one contended CPU core
    steps: int = 160
    lr: float = 1e-3
    rank: int = 16
    alpha: Optional[float] = None  # LoRA scale alpha / rank; None: 2 x rank
    batch_tokens: int = 512  # tokens per step (batch_tokens // seq_len blocks)
    seq_len: int = 256
    # + ce_weight x cross-entropy on the data (0: pure self-distillation). 0.5 measured at 22% (README), 160 steps,
    # stdlib / rich bpb x dense: KL alone 1.026 / 1.058, KL + 0.5 CE 0.994 / 1.027 (part of that gain is adaptation
    # to the data, which the dense model gets from the same training too: the README's control row)
    ce_weight: float = 0.5
    warmup: int = 10
    max_data_tokens: int = 1_000_000
    checkpoint_every: int = 25
    seed: int = 0
    eval_tokens: int = 2048  # held-out KL to the dense model before / after (0: skip)
    eval_data: tuple[str, ...] = ("pypkg:rich",)  # mined pairs overlapping these corpora are dropped
    gradient_checkpointing: bool = True
    out: Optional[str] = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        for name in ("steps", "rank", "seq_len", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise GreenpruneError(f"recovery option {name} must be >= 1 (got {getattr(self, name)})")
        if self.batch_tokens < self.seq_len:
            raise GreenpruneError(f"batch_tokens ({self.batch_tokens}) must be >= seq_len ({self.seq_len})")
        if not self.lr > 0 or self.ce_weight < 0:
            raise GreenpruneError("recovery needs lr > 0 and ce_weight >= 0")

    def fingerprint(self) -> dict:
        """What determines the training trajectory: a checkpoint made with other values is not resumed."""
        keys = ("data", "steps", "lr", "rank", "alpha", "batch_tokens", "seq_len", "ce_weight", "warmup",
                "max_data_tokens", "seed")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in keys}


# --- the reference and its vocabulary ---------------------------------------------------------------------
def reference_spec(model_dir: Path, reference: Optional[str]) -> Optional[str]:
    """The dense reference: the given one, else the report's source model ('default:...' = the default model)."""
    if reference:
        return reference
    rp = Path(model_dir) / REPORT_NAME
    if not rp.exists():
        raise GreenpruneError(f"{model_dir} has no {REPORT_NAME} naming its dense model; pass --reference")
    src = json.loads(rp.read_text()).get("source_model")
    if not src:
        raise GreenpruneError(f"{rp} does not name a source model; pass --reference")
    return None if src.startswith("default:") else src


def vocab_mapping(pruned, ptok, dense, dtok, plan: Optional[PruningPlan]) -> Optional[torch.Tensor]:
    """Dense id of each pruned vocabulary row (None: same vocabulary), checked against both tokenizers."""
    hid_p, hid_d = pruned.config.hidden_size, dense.config.hidden_size
    if hid_p != hid_d:
        raise GreenpruneError(f"the reference does not match the pruned model: hidden size {hid_d} vs {hid_p}")
    if plan is not None and plan.shape != ModelShape.from_config(dense.config):
        raise GreenpruneError(f"the reference's architecture ({ModelShape.from_config(dense.config)}) is not the one "
                              f"the pruned model was planned from ({plan.shape})")
    dvocab = dtok.get_vocab()
    pvocab = sorted(ptok.get_vocab().items(), key=lambda kv: kv[1])
    missing = [t for t, _ in pvocab if t not in dvocab]
    if missing:
        raise GreenpruneError(f"the pruned tokenizer has {len(missing)} tokens the reference's lacks (e.g. "
                              f"{missing[:3]}): this reference is not the model it was pruned from")
    by_string = [dvocab[t] for t, _ in pvocab]
    keep = list(plan.vocab_keep) if plan is not None and plan.vocab_keep is not None else by_string
    K, V = pruned.config.vocab_size, dense.config.vocab_size
    if len(keep) != K or max(keep, default=0) >= V:
        raise GreenpruneError(f"the pruned vocabulary ({K} rows) does not map into the reference's ({V} rows)")
    if len(by_string) == len(keep) and by_string != keep:
        raise GreenpruneError("the pruned tokenizer's tokens sit at other ids in the reference tokenizer")
    return None if K == V and keep == list(range(V)) else torch.tensor(keep)


# --- the training loop ------------------------------------------------------------------------------------
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
    from .kernels import kl_loss

    with torch.no_grad():
        hd = dense.model(x if keep is None else keep[x], use_cache=False).last_hidden_state  # [B, L, H]
    hp = pruned.model(x, use_cache=False).last_hidden_state  # [B, L, Hp]: the LoRA layers sit inside pruned
    labels = None
    if ce_weight:
        labels = torch.full_like(x, -100)
        labels[:, :-1] = x[:, 1:]
        labels = labels.reshape(-1)
    return kl_loss(hd.reshape(-1, hd.shape[-1]), dense.lm_head.weight, hp.reshape(-1, hp.shape[-1]),
                   pruned.lm_head.weight, keep, labels=labels, ce_weight=ce_weight, parts=True)


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
                     target_modules=list(TARGETS))
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
            if set(tensors) != set(trainable):
                raise GreenpruneError(f"checkpoint {ckpt_dir} holds other adapters than this model's")
            with torch.no_grad():
                for n, p in trainable.items():
                    p.copy_(tensors[n])
            restore_optimizer(opt, opt_tensors)
            history["loss"], history["lr"], history["kl"] = state["loss"], state["lr"], state.get("kl", [])
            start = state["step"]
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


# --- the recover job --------------------------------------------------------------------------------------
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
    dtok_texts = data_mod.eval_snippets(ptok, data_mod.calibration_and_heldout("stdlib")[1], tokens)
    return agreement(dense, pruned, ptok, dtok_texts, None if keep is None else keep.tolist(), seq_len, False)["kl"]


def plot_loss(history: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss, kl = history["loss"], history.get("kl") or []
    series = [("loss: KL(dense || pruned)", loss)]
    if history.get("ce_weight") and len(kl) == len(loss):  # the total is mostly the data's entropy: show the KL too
        series = [(f"loss: KL + {history['ce_weight']:g} CE", loss), ("its KL(dense || pruned) term", kl)]
    fig, axes = plt.subplots(1, len(series), figsize=(7 * len(series), 3.5), squeeze=False)
    w = max(1, min(10, len(loss) // 5))
    for ax, (name, ys) in zip(axes[0], series):
        ax.plot(range(1, len(ys) + 1), ys, lw=0.8, alpha=0.5, label="per step")
        if w > 1:
            avg = [sum(ys[i - w : i]) / w for i in range(w, len(ys) + 1)]
            ax.plot(range(w, len(ys) + 1), avg, lw=2, label=f"mean of {w} steps")
        ax.legend()
        ax.set_xlabel("step")
        ax.set_ylabel(f"{name}, nats/token")
        ax.grid(alpha=0.3)
    fig.suptitle("greenprune recovery: LoRA self-distillation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    plan = PruningPlan.load(src / "plan.json") if (src / "plan.json").exists() else None
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
        "reference": ref or "default:SmolLM2-135M-Instruct",
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
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        base = {}
        if src is not None:
            if (src / "plan.json").exists():
                shutil.copy2(src / "plan.json", tmp / "plan.json")
            if (src / REPORT_NAME).exists():
                base = json.loads((src / REPORT_NAME).read_text())
            for extra in ("plan.png",):
                if (src / extra).exists():
                    shutil.copy2(src / extra, tmp / extra)
        summary = {k: v for k, v in report.items() if k not in ("loss", "kl")}
        base.setdefault("source_model", report.get("reference"))
        write_json_atomic(tmp / REPORT_NAME, {**base, "recovery": summary})
        write_json_atomic(tmp / "recovery_report.json", report)
        plot_loss(history, tmp / "loss.png")


# --- command line -----------------------------------------------------------------------------------------
def add_recover_args(r, prefix: str = "") -> None:
    """Recovery options on an argparse parser (prefix 'recover-' for `greenprune prune --recover`)."""
    d = RecoverOptions()
    r.add_argument(f"--{prefix}steps", type=int, default=d.steps, help=f"training steps (default {d.steps})")
    r.add_argument(f"--{prefix}lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    r.add_argument(f"--{prefix}rank", type=int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    r.add_argument(f"--{prefix}batch-tokens", type=int, default=d.batch_tokens, help=f"tokens per step (default {d.batch_tokens})")
    r.add_argument(f"--{prefix}ce-weight", type=float, default=d.ce_weight,
                   help=f"add this x cross-entropy on the data to the KL (default {d.ce_weight:g}; 0: pure self-distillation)")
    r.add_argument(f"--{prefix}checkpoint-every", type=int, default=d.checkpoint_every,
                   help=f"checkpoint every N steps (default {d.checkpoint_every}); a rerun resumes from the last")
    r.add_argument(f"--{prefix}seed", type=int, default=d.seed, help="seed (same seed, same result)")


def options_from_args(a, prefix: str = "", **over) -> RecoverOptions:
    g = lambda name: getattr(a, prefix + name)  # noqa: E731
    return RecoverOptions(steps=g("steps"), lr=g("lr"), rank=g("rank"), batch_tokens=g("batch_tokens"),
                          ce_weight=g("ce_weight"), checkpoint_every=g("checkpoint_every"), seed=g("seed"), **over)


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
