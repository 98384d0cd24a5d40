"""Printed result tables (rich)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _f(x, nd=4):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def print_prune(report: dict, out) -> None:
    con = Console()
    p, s = report["params"], report["plan"]["summary"]
    con.print(f"[bold]greenprune[/bold] {report['plan']['meta'].get('method')}: "
              f"{p['dense']:,} -> {p['pruned']:,} parameters ({p['ratio']:.1%} removed); "
              f"layers dropped {s['layers_dropped']}, vocabulary {s['vocab_size']:,}"
              + (f" ({s['vocab_share_of_removed']:.0%} of what was removed)" if "vocab_share_of_removed" in s else ""))
    vo = report.get("importance", {}).get("vocab_options") or {}
    if vo.get("measured"):
        con.print(f"vocabulary size chosen by measured cost among {len(vo['options']) + 1} sizes (NLL change on "
                  f"{vo['probe_tokens']:,} tokens of {vo['probe_documents']} held-out calibration documents; plot: "
                  "plan.png)")
    comp = report.get("compensation", {})
    done = [name for key, name in (("refit", "least-squares refit"), ("bias", "bias compensation")) if comp.get(key)]
    con.print(f"training-free compensation: {' + '.join(done) if done else 'none'}")
    ev = report.get("eval") or {}
    if "dense" in ev:
        _print_eval_tables(con, ev, p)
    if ev.get("tasks"):
        _print_tasks(con, ev["tasks"])
    if out:
        con.print(f"saved to {out} (report: greenprune_report.json, plan: plan.json); timings {report['timings_s']}")


def _print_eval_tables(con: Console, ev: dict, p: dict) -> None:
    t = Table(title="held-out evaluation (bits per byte: lower is better)")
    t.add_column("corpus")
    for c in ("dense bpb", "pruned bpb", "ratio", "KL (nats)", "top-1 agree", "dropped mass"):
        t.add_column(c, justify="right")
    for name, d in ev["dense"].items():
        if not isinstance(d, dict):
            continue
        q = ev["pruned"][name]
        t.add_row(name, _f(d["bpb"]), _f(q["bpb"]), _f(q["bpb_ratio"], 3), _f(q["kl"]), _f(q["top1_agreement"], 3),
                  _f(q["dropped_mass"]))
    con.print(t)
    t2 = Table(title="model")
    t2.add_column("")
    t2.add_column("dense", justify="right")
    t2.add_column("pruned", justify="right")
    t2.add_row("parameters", f"{p['dense']:,}", f"{p['pruned']:,}")
    if "next_line_exact_match" in ev["dense"]:
        n = ev["dense"].get("next_line_samples")
        em = [ev[k]["next_line_exact_match"] for k in ("dense", "pruned")]
        t2.add_row("next-line exact match" + ("" if n is None else f" ({n} samples)"),
                   *("n/a" if x is None else _f(x, 3) for x in em))
    t2.add_row("CPU tokens/s (forward)", _f(ev["dense"]["cpu_tokens_per_s"], 0), _f(ev["pruned"]["cpu_tokens_per_s"], 0))
    con.print(t2)
    sc = ev["pruned"].get("sample_completion")
    if sc:
        con.print("[bold]pruned model completes a signature:[/bold]")
        con.print(sc["prompt"] + sc["pruned"], markup=False, highlight=False)


def _task_rows(tasks: dict) -> list[tuple[str, str, str]]:
    """(task, metric, value) rows of one model's downstream results."""
    rows = []
    he = tasks.get("humaneval")
    if he:
        for k, v in he["pass@k"].items():
            rows.append(("humaneval", k, _f(v, 3)))
        rows.append(("humaneval", "problems / samples", f"{he['problems']} / {he['samples']}"))
        rows.append(("humaneval", "outcomes", ", ".join(f"{k} {v}" for k, v in he["outcomes"].items() if v)))
        rows.append(("humaneval", "seconds per problem", _f(he.get("seconds_per_problem"), 2)))
    for task, metrics in (tasks.get("lm-eval") or {}).get("metrics", {}).items():
        for k, v in metrics.items():
            rows.append((f"lm-eval:{task}", k, _f(v, 4)))
    return rows


def _print_tasks(con: Console, tasks: dict) -> None:
    """Downstream tasks: one model's results, or dense and pruned side by side."""
    t = Table(title="downstream tasks")
    t.add_column("task")
    t.add_column("metric")
    if "dense" in tasks and "pruned" in tasks:
        t.add_column("dense", justify="right")
        t.add_column("pruned", justify="right")
        dense = {(a, b): c for a, b, c in _task_rows(tasks["dense"])}
        for a, b, c in _task_rows(tasks["pruned"]):
            t.add_row(a, b, dense.get((a, b), "-"), c)
    else:
        t.add_column("value", justify="right")
        for row in _task_rows(tasks):
            t.add_row(*row)
    con.print(t)


def print_eval(res: dict) -> None:
    con = Console()
    if res.get("tasks"):
        _print_tasks(con, res["tasks"])
    if "model" in res:
        t = Table(title="evaluation")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in res["model"].items():
            t.add_row(k, _f(v))
        con.print(t)
        return
    if "params" in res:
        _print_eval_tables(con, res, res["params"])
