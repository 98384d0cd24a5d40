"""Reproduce the README's quality table: greenprune's unified plan vs simpler baselines at equal budgets.

    .venv/bin/python scripts/quality_table.py --ratios 0.22 0.30 0.50 --out benches/results/quality_cpu.json
    .venv/bin/python scripts/quality_table.py --model gemma3-270m --ratios 0.22 0.30 \
        --out benches/results/quality_gemma3_270m_cpu.json

Every row runs the same `greenprune prune` job (same data, same eval budgets) with another method; the JSON
keeps each run's full report summary, the machine and the date, and a Markdown table is printed.
"""
import argparse
import datetime
import json
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from greenprune._version import __version__
from greenprune.jobs.options import JobOptions
from greenprune.jobs.prune import run_prune
from greenprune.planning.options import PlanOptions

UNIFIED = "greenprune unified (KL-guided: vocabulary + layers + FFN), no compensation"
COMPENSATED = "greenprune unified + bias compensation"
RECONSTRUCTED = "greenprune unified + least-squares refit and bias compensation (prune's default)"
BASELINES = {
    # name: (method, scorer, vocab)
    UNIFIED: ("unified", "auto", True),
    COMPENSATED: ("unified", "auto", True),
    RECONSTRUCTED: ("unified", "auto", True),
    "uniform FFN, Wanda-sp + calibration vocabulary": ("uniform", "wanda", True),
    "uniform FFN, Wanda-sp (FFN only)": ("uniform", "wanda", False),
    "uniform FFN, magnitude (FFN only)": ("uniform", "magnitude", False),
    "whole-layer removal, block influence": ("layers", "flap", False),
}
REFITS = {COMPENSATED: dict(bias_compensation=True), RECONSTRUCTED: dict(bias_compensation=True, reconstruct=True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.22, 0.30, 0.50])
    ap.add_argument("--rows", nargs="*", default=list(BASELINES))
    ap.add_argument("--out", default="benches/results/quality_cpu.json")
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--model", default=None, help="a model directory, file or packaged name (default: the default model)")
    ap.add_argument("--calib-tokens", type=int, default=None, help="default: prune's")
    ap.add_argument("--kl-tokens", type=int, default=None, help="default: prune's")
    ap.add_argument("--nextline-samples", type=int, default=16)
    ap.add_argument("--replace", action="store_true", help="write only this run's rows (default: merge into --out)")
    a = ap.parse_args()
    rows = []
    base = JobOptions(eval_tokens=a.eval_tokens, nextline_samples=a.nextline_samples, progress=False)
    if a.model:
        base = replace(base, model=a.model)
    for name in ("calib_tokens", "kl_tokens"):
        if getattr(a, name) is not None:
            base = replace(base, **{name: getattr(a, name)})
    scratch = Path(tempfile.mkdtemp(prefix="gp-quality-"))
    doc = None  # the JSON as last written: each row is written as soon as it is measured
    for ratio in a.ratios:
        for name in a.rows:
            method, scorer, vocab = BASELINES[name]
            opts = replace(base, plan=PlanOptions(ratio=ratio, method=method, max_ffn_prune=0.75 if method == "unified" else 0.9),
                           scorer=scorer, vocab=vocab, vocab_extra=base.vocab_extra if method == "unified" else 0,
                           bias_compensation=False, reconstruct=False, out=str(scratch / f"{ratio}-{method}"), overwrite=True)
            if name in REFITS:  # the unified plan just made, compensated / refitted: no second planning pass
                opts = replace(opts, plan_file=str(scratch / f"{ratio}-{method}" / "plan.json"), **REFITS[name],
                               out=str(scratch / f"{ratio}-{name[:24].replace(' ', '_')}"))
            t = time.time()
            try:
                r = run_prune(opts)
            except Exception as e:  # e.g. a budget that whole-layer removal cannot meet
                rows.append({"ratio": ratio, "method": name, "error": str(e)})
                doc = write(Path(a.out), rows, base, a.replace)
                print(f"{ratio:.2f} {name}: {e}", flush=True)
                continue
            ev = r["eval"]
            sets = [k for k in ev["dense"] if isinstance(ev["dense"][k], dict)]
            row = {"ratio": ratio, "method": name, "params_pruned": r["params"]["pruned"], "params_dense": r["params"]["dense"],
                   "removed": r["params"]["ratio"], "vocab_share_of_removed": r["plan"]["summary"]["vocab_share_of_removed"], "plan_summary": r["plan"]["summary"], "wall_s": round(time.time() - t, 1),
                   "next_line_em": [ev["dense"].get("next_line_exact_match"), ev["pruned"].get("next_line_exact_match")],
                   "cpu_tokens_per_s": [ev["dense"]["cpu_tokens_per_s"], ev["pruned"]["cpu_tokens_per_s"]]}
            for k in sets:
                row[k] = {"dense_bpb": ev["dense"][k]["bpb"], "pruned_bpb": ev["pruned"][k]["bpb"], "ratio": ev["pruned"][k]["bpb_ratio"],
                          "kl": ev["pruned"][k]["kl"], "top1": ev["pruned"][k]["top1_agreement"]}
            row["date"] = datetime.date.today().isoformat()
            if "layer_drop_check" in r["importance"]:
                row["layer_drop_check"] = r["importance"]["layer_drop_check"]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "plan_summary"}), flush=True)
            doc = write(Path(a.out), rows, base, a.replace)
    if doc is None:  # no row asked for: the file as it was, merged
        doc = write(Path(a.out), rows, base, a.replace)
    print(markdown(doc["rows"]))


def write(out: Path, rows: list, base: JobOptions, replace_all: bool) -> dict:
    """The JSON with this run's rows, merged into the rows of --out not re-measured (unless --replace); atomic."""
    doc = {"date": datetime.date.today().isoformat(), "greenprune": __version__, "torch": torch.__version__,
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU only",
           "model": base.model, "command": "python " + " ".join(shlex.quote(x) for x in sys.argv),
           "budgets": {"calib_tokens": base.calib_tokens, "kl_tokens": base.kl_tokens, "eval_tokens": base.eval_tokens,
                       "nextline_samples": base.nextline_samples}, "rows": rows}
    if out.exists() and not replace_all:  # keep the rows not re-measured in this run, in table order
        old = json.loads(out.read_text())
        fresh = {(r["ratio"], r["method"]) for r in rows}
        kept = [r for r in old.get("rows", []) if (r["ratio"], r["method"]) not in fresh]
        order = {name: i for i, name in enumerate(BASELINES)}
        doc["rows"] = sorted(kept + rows, key=lambda r: (r["ratio"], order.get(r["method"], len(order))))
        doc["superseded_rows"] = old.get("superseded_rows", [])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)
    return doc


def markdown(rows) -> str:
    out = ["| removed | method | stdlib held-out bpb (x dense) | out-of-corpus bpb, `rich` (x dense) | KL (nats) | top-1 agree |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['ratio']:.0%} | {r['method']} | n/a: {r['error'][:60]} | | | |")
            continue
        s, o = [r[k] for k in r if isinstance(r[k], dict) and "dense_bpb" in r[k]][:2]
        out.append(f"| {r['removed']:.1%} | {r['method']} | {s['pruned_bpb']:.4f} ({s['ratio']:.3f}x) | {o['pruned_bpb']:.4f} "
                   f"({o['ratio']:.3f}x) | {s['kl']:.3f} | {s['top1']:.3f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
