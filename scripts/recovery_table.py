"""Recovery after pruning on the default model: bits per byte before recovery, after the training-free
compensations (bias / least-squares refit / both), and after LoRA self-distillation toward the dense model.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/recovery_table.py --ratios 0.22 --eval-tokens 4096 \
        --plan PLAN.json --scratch DIR --out benches/results/recovery_cpu.json       # training-free rows
    OMP_NUM_THREADS=1 .venv/bin/python scripts/recovery_table.py --ratios 0.22 --eval-tokens 4096 --lora-only \
        --lora-from refit+bias --steps 80 --scratch DIR --out benches/results/recovery_cpu.json   # + LoRA row
(without --plan the unified plan is made first: the KL tables take most of the time; without --lora-only and
with --steps N both parts run in one go, LoRA starting from the best training-free variant).

Every row is scored on the same held-out texts (the stdlib held-out split and `rich`'s source, the README
table's corpora) with the same budgets; rows are appended to the JSON as they finish, with their cost
(training tokens and wall time) and the machine.
"""
import argparse
import copy
import datetime
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path


from greenprune.runinfo import machine_info
from greenprune.data import corpus as data_mod
from greenprune._version import __version__
from greenprune.evaluation.metrics import bits_per_byte
from greenprune.modelio.load import default_model_dir, load_model, num_params
from greenprune.modelio.save import write_json_atomic
from greenprune.modelio.reports import REPORT_NAME
from greenprune.jobs.options import JobOptions, Timer
from greenprune.jobs.prune import build_plan
from greenprune.jobs.evaluate import heldout_texts
from greenprune.planning.options import PlanOptions
from greenprune.pruning.prune import prune_model
from greenprune.pruning.compensation import compensate_, reconstruct_
from greenprune.pruning.vocab import prune_tokenizer

VARIANTS = ("none", "bias", "refit", "refit+bias")


def score(model, tok, sets, seq_len):
    return {name: bits_per_byte(model, tok, texts, seq_len, progress=False)["bpb"] for name, texts in sets.items()}


def save(model, tok, plan, where: Path):
    where.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(where, safe_serialization=True)
    tok.save_pretrained(where)
    plan.save(where / "plan.json")
    write_json_atomic(where / REPORT_NAME, {"source_model": "default:SmolLM2-135M-Instruct"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", type=float, nargs="*", default=[0.22])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--lora-from", default="best", help="training-free variant LoRA starts from (best: lowest stdlib bpb)")
    ap.add_argument("--steps", type=int, default=0, help="LoRA steps (0: no LoRA rows)")
    ap.add_argument("--lora-data", nargs="+", default=["stdlib"], help="recovery data specs (as greenprune recover --data)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch-tokens", type=int, default=512)
    ap.add_argument("--ce-weight", type=float, default=0.0)
    ap.add_argument("--dense-control", action="store_true",
                    help="also train the unpruned model the same way (a row with ratio 0): the gain that is adaptation")
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--plan", default=None, help="use this plan.json (one ratio) instead of planning (saves the KL tables)")
    ap.add_argument("--lora-only", action="store_true", help="skip the training-free rows; LoRA from --lora-from in --scratch")
    ap.add_argument("--out", default="benches/results/recovery_cpu.json")
    a = ap.parse_args()
    out = Path(a.out)
    result = json.loads(out.read_text()) if out.exists() else {"rows": []}
    result.update({"date": datetime.date.today().isoformat(), "greenprune_version": __version__,
                   "machine": machine_info(),
                   "eval_tokens_per_corpus": a.eval_tokens, "seq_len": a.seq_len})
    scratch = Path(a.scratch or tempfile.mkdtemp(prefix="gp-recovery-"))

    def add(row):
        result["rows"] = [r for r in result["rows"] if not (r["ratio"] == row["ratio"] and r["stage"] == row["stage"])]
        result["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
        print(json.dumps(row), flush=True)

    dense, tok = load_model(None)
    calib, held = data_mod.calibration_and_heldout("stdlib")
    opts = JobOptions(eval_tokens=a.eval_tokens, seq_len=a.seq_len, reconstruct=True, progress=False)
    sets = heldout_texts(tok, opts, held)
    old = [r["dense"] for r in result["rows"] if r.get("eval_tokens") == a.eval_tokens]
    d = old[0] if a.lora_only and old else score(dense, tok, sets, a.seq_len)
    for ratio in a.ratios:
        best = None
        if a.lora_only:
            a.variants = []
        else:
            o = replace(opts, plan=PlanOptions(ratio=ratio), plan_file=a.plan)
            t = time.time()
            plan, extra = build_plan(dense, tok, o, calib, Timer())
            plan_s = time.time() - t
            ptok = prune_tokenizer(tok, plan.vocab_keep) if plan.vocab_keep is not None else copy.deepcopy(tok)
            stats = extra["scores"].stats
            models = {}
        for v in a.variants:  # build and save every variant first (a LoRA run may start from one meanwhile)
            t = time.time()
            m = prune_model(dense, plan)
            if v == "bias":
                compensate_(m, dense, plan, stats, refit_weights=False)
            elif v == "refit":
                reconstruct_(m, dense, plan, stats, opts.reconstruct_ridge)
            elif v == "refit+bias":
                compensate_(m, dense, plan, stats, refit_weights=True, ridge=opts.reconstruct_ridge)
            models[v] = (m, time.time() - t)
            save(m, ptok, plan, scratch / f"{ratio}-{v}")
        for v in a.variants:
            m, cost = models[v]
            s = score(m, ptok, sets, a.seq_len)
            row = {"eval_tokens": a.eval_tokens, "ratio": ratio, "stage": f"training-free: {v}", "params_removed": 1 - num_params(m) / num_params(dense),
                   **{f"bpb {k}": s[k] for k in s}, **{f"x dense {k}": s[k] / d[k] for k in s},
                   "dense": d, "wall_s": round(cost, 1), "plan_wall_s": round(plan_s, 1), "train_tokens": 0}
            add(row)
            if best is None or s["stdlib:heldout"] < best[1]:
                best = (v, s["stdlib:heldout"])
        if a.steps:
            start = best[0] if a.lora_from == "best" and best else a.lora_from
            add(lora_row(a, scratch, scratch / f"{ratio}-{start}", ratio, f"LoRA self-distillation from '{start}'", sets, d, dense))
    if a.dense_control and a.steps:  # the same training on the unpruned model: how much of the gain is adaptation
        dense_dir = default_model_dir()
        add(lora_row(a, scratch, dense_dir, 0.0, "control: the dense model itself trained the same way", sets, d, dense,
                     reference=str(dense_dir)))


def lora_row(a, scratch: Path, start: Path, ratio: float, label: str, sets, d, dense, reference=None) -> dict:
    """LoRA recovery of the model in `start` toward `reference` (None: the dense model its report names) with the
    script's options, scored like every other row."""
    from greenprune.recovery.options import RecoverOptions
    from greenprune.recovery.job import run_recover

    tag = "-".join(Path(x).name.replace(":", "_") for x in a.lora_data) + f"-ce{a.ce_weight}-s{a.steps}"
    out = scratch / f"{start.name}-lora-{tag}"
    ro = RecoverOptions(model=str(start), reference=reference, data=tuple(a.lora_data),
                        steps=a.steps, lr=a.lr, rank=a.rank, batch_tokens=a.batch_tokens, seq_len=a.seq_len,
                        ce_weight=a.ce_weight, out=str(out), overwrite=True, progress=True,
                        eval_tokens=0)
    t = time.time()
    rep = run_recover(ro)
    cost = time.time() - t
    m, mt = load_model(ro.out)
    s = score(m, mt, sets, a.seq_len)
    return {"eval_tokens": a.eval_tokens, "ratio": ratio,
            "stage": f"{label} ({a.steps} steps, rank {a.rank}, lr {a.lr}, data {' + '.join(a.lora_data)}, "
                     f"ce_weight {a.ce_weight})",
            "params_removed": 1 - num_params(m) / num_params(dense),
            **{f"bpb {k}": s[k] for k in s}, **{f"x dense {k}": s[k] / d[k] for k in s}, "dense": d,
            "wall_s": round(cost, 1), "train_tokens": rep["train_tokens"],
            "final_loss": rep["loss"][-1] if rep["loss"] else None}


if __name__ == "__main__":
    main()
