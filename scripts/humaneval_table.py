"""Reproduce the README's HumanEval table: pass@1 of the default model dense, pruned by 22% and 30%, and after
LoRA recovery, beside the next-line exact-match proxy, with the time per problem.

    .venv/bin/python scripts/humaneval_table.py --ratios 0.22 0.30 --out benches/results/humaneval_cpu.json

Each row is written to --out as soon as it is measured; `--scratch DIR --resume` continues an interrupted table
(rows already in --out and models already in DIR are kept, an interrupted recovery resumes from its checkpoint).

Each ratio is one `greenprune prune` job with `--eval-tasks humaneval` (dense and pruned side by side; the dense
model's result comes from the cache after the first), then `greenprune recover` with its defaults and
`greenprune eval --tasks humaneval` on the recovered model. Greedy decoding, all 164 problems unless --limit;
programs run in greenprune's sandbox. The JSON keeps every result, the machine and the date.
"""
import argparse
import datetime
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from greenprune._version import __version__
from greenprune.evaluation.tasks import TaskOptions
from greenprune.jobs.evaluate import run_eval_job
from greenprune.jobs.options import JobOptions
from greenprune.jobs.prune import run_prune
from greenprune.modelio.save import write_json_atomic
from greenprune.planning.options import PlanOptions
from greenprune.recovery.job import run_recover
from greenprune.recovery.options import RecoverOptions
from greenprune.runinfo import machine_info


def _row(name, he, nextline=None):
    return {"model": name, "pass@1": he["pass@1"], "problems": he["problems"], "outcomes": he["outcomes"],
            "error_kinds": he["error_kinds"], "seconds_per_problem": he["seconds_per_problem"],
            "cached": he.get("cached", False), "next_line_exact_match": nextline}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.22, 0.30])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--eval-tokens", type=int, default=2048, help="bits-per-byte budget of the prune reports")
    ap.add_argument("--no-recover", action="store_true")
    ap.add_argument("--scratch", default=None, help="keep the pruned and recovered models here (default: a temp dir)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in --out and the models already in --scratch; measure the rest")
    ap.add_argument("--out", default="benches/results/humaneval_cpu.json")
    a = ap.parse_args()
    if a.resume and not a.scratch:
        ap.error("--resume needs the --scratch directory of the run it continues")
    scratch = Path(a.scratch or tempfile.mkdtemp(prefix="gp-humaneval-"))
    tasks = TaskOptions(tasks=("humaneval",), limit=a.limit)
    doc = {"date": datetime.date.today().isoformat(), "greenprune": __version__, "machine": machine_info(),
           "command": "python scripts/humaneval_table.py --ratios " + " ".join(map(str, a.ratios))
                      + (f" --limit {a.limit}" if a.limit else "") + (" --no-recover" if a.no_recover else ""),
           "settings": {"decoding": "greedy", "max_new_tokens": tasks.max_new_tokens, "chat_template": "auto",
                        "batch_size": tasks.batch_size, "eval_tokens": a.eval_tokens},
           "rows": []}
    if a.resume and Path(a.out).exists():
        old = json.loads(Path(a.out).read_text())
        if old.get("settings", {}).get("max_new_tokens") != tasks.max_new_tokens or \
                (old["rows"] and old["rows"][0]["problems"] != (a.limit or 164)):
            raise SystemExit(f"{a.out} was measured with other settings; resume would mix them")
        doc["rows"] = old["rows"]
        doc["resumed_from"] = {"date": old.get("date"), "command": old.get("command")}
    done = {r["model"] for r in doc["rows"]}
    t_all = time.perf_counter()

    def add(row):  # one row at a time, written at once: an interrupted table keeps what it measured
        doc["rows"] = [r for r in doc["rows"] if r["model"] != row["model"]] + [row]
        doc["wall_s"] = round(time.perf_counter() - t_all, 1)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(a.out), doc)
        print(json.dumps(row), flush=True)

    for ratio in a.ratios:
        out = scratch / f"pruned-{round(ratio * 100)}"
        pruned_name = f"pruned {ratio:.0%} (prune's default, no training)"
        if pruned_name not in done or "dense" not in done:
            rep = run_prune(JobOptions(plan=PlanOptions(ratio=ratio), eval_tokens=a.eval_tokens, eval_tasks=tasks,
                                       out=str(out), overwrite=True, progress=False))
            ev = rep["eval"]
            if "dense" not in done:
                add(_row("dense", ev["tasks"]["dense"]["humaneval"], ev["dense"].get("next_line_exact_match")))
                done.add("dense")
            add(_row(pruned_name, ev["tasks"]["pruned"]["humaneval"], ev["pruned"].get("next_line_exact_match")))
        recovered_name = f"pruned {ratio:.0%} + LoRA recovery (recover's defaults)"
        if a.no_recover or recovered_name in done:
            continue
        if not any(out.glob("*.safetensors")):
            raise SystemExit(f"{out} holds no pruned model to recover; rerun without --resume")
        rec = scratch / f"recovered-{round(ratio * 100)}"
        if a.resume and _finished_recovery(rec):
            print(f"resume: {rec} holds a finished recovery; evaluating it")
        else:  # an interrupted recovery resumes from its own checkpoint (rec.ckpt), which --overwrite leaves alone
            run_recover(RecoverOptions(model=str(out), out=str(rec), overwrite=True, progress=False))
        res = run_eval_job(str(rec), None, replace(JobOptions(progress=False), eval_tasks=tasks))
        add(_row(recovered_name, res["tasks"]["humaneval"]))
    print("| model | HumanEval pass@1 | problems | next-line exact match | s / problem |")
    print("|---|---|---|---|---|")
    for r in doc["rows"]:
        nl = "-" if r["next_line_exact_match"] is None else f"{r['next_line_exact_match']:.3f}"
        print(f"| {r['model']} | {r['pass@1']:.3f} | {r['problems']} | {nl} | {r['seconds_per_problem']:.2f} |")


def _finished_recovery(rec: Path) -> bool:
    """A recovered model saved whole (the save is atomic, so a report with its recovery means it finished)."""
    try:
        report = json.loads((rec / "greenprune_report.json").read_text())
    except (OSError, ValueError):
        return False
    return "recovery" in report and any(rec.glob("*.safetensors"))


if __name__ == "__main__":
    main()
