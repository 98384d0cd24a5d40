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
              f"layers dropped {s['layers_dropped']}, vocabulary {s['vocab_size']:,}")
    comp = report.get("compensation", {})
    done = [name for key, name in (("refit", "least-squares refit"), ("bias", "bias compensation")) if comp.get(key)]
    con.print(f"training-free compensation: {' + '.join(done) if done else 'none'}")
    if report.get("eval"):
        _print_eval_tables(con, report["eval"], p)
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
        t2.add_row("next-line exact match", _f(ev["dense"]["next_line_exact_match"], 3), _f(ev["pruned"]["next_line_exact_match"], 3))
    t2.add_row("CPU tokens/s (forward)", _f(ev["dense"]["cpu_tokens_per_s"], 0), _f(ev["pruned"]["cpu_tokens_per_s"], 0))
    con.print(t2)
    sc = ev["pruned"].get("sample_completion")
    if sc:
        con.print("[bold]pruned model completes a signature:[/bold]")
        con.print(sc["prompt"] + sc["pruned"], markup=False, highlight=False)


def print_eval(res: dict) -> None:
    con = Console()
    if "model" in res:
        t = Table(title="evaluation")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in res["model"].items():
            t.add_row(k, _f(v))
        con.print(t)
        return
    _print_eval_tables(con, res, res["params"])
