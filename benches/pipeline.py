"""Pipeline benchmark of the prune job (CPU-runnable): each stage's wall time, tokens and forward work.

Every decoder-layer call in the process is counted (a global forward pre-hook), so each stage records
`layer_tokens` (sum over layer calls of batch x sequence tokens) and `forward_equiv` = layer_tokens /
num_hidden_layers, the dense-model forward passes' worth of tokens it ran. The dense model's forward
throughput is measured in the same run, before and after the job (evaluation.metrics.cpu_tokens_per_second);
each stage's `dense_forward_equiv_tokens` = wall_s x that throughput is how many tokens a dense forward pass
would have processed in the stage's time, a figure that compares across machines and loads.

    python benches/pipeline.py                        # the default job (`greenprune prune` defaults)
    python benches/pipeline.py --scale 0.25           # calibration / KL / eval tokens and samples scaled down
    python benches/pipeline.py --out benches/results/pipeline-NAME.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from greenprune.allocator import keep_freed_memory
from greenprune.evaluation.metrics import cpu_tokens_per_second
from greenprune.families import shape_of
from greenprune.jobs.options import JobOptions, Timer
from greenprune.jobs.prune import run_prune
from greenprune.modelio.load import load_model
from greenprune.runinfo import cpu_name, machine_info

COUNT = {"layer_tokens": 0, "layer_calls": 0}


def _count(mod, args, out):
    """Global forward hook: a decoder layer's output [batch, seq, hidden] (or a tuple starting with it)."""
    if type(mod).__name__.endswith("DecoderLayer"):
        x = out[0] if isinstance(out, tuple) else out
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            COUNT["layer_tokens"] += x.shape[0] * x.shape[1]
            COUNT["layer_calls"] += 1


class CountingTimer(Timer):
    """Timer that also records each stage's decoder-layer calls and tokens."""

    def __init__(self):
        super().__init__()
        self.work: dict[str, dict] = {}

    @contextmanager
    def __call__(self, name: str):
        before = dict(COUNT)
        with super().__call__(name):
            yield
        self.work[name] = {k: COUNT[k] - before[k] for k in COUNT}


def scaled(opts: JobOptions, scale: float) -> JobOptions:
    if scale == 1.0:
        return opts
    s = lambda n, lo: max(lo, int(round(n * scale)))
    return replace(opts, calib_tokens=s(opts.calib_tokens, opts.seq_len), kl_tokens=s(opts.kl_tokens, opts.seq_len),
                   drop_check_tokens=s(opts.drop_check_tokens, opts.seq_len), eval_tokens=s(opts.eval_tokens, opts.seq_len),
                   nextline_samples=s(opts.nextline_samples, 2))


def truncated(spec, n: int, where: Path) -> Path:
    """The model's first n decoder layers (and its embeddings, final norm and head), saved to `where`."""
    model, tok = load_model(spec)
    layers = model.model.layers
    if not 0 < n <= len(layers):
        raise SystemExit(f"--layers must be in 1..{len(layers)}")
    model.model.layers = layers[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n]
    model.save_pretrained(where)
    tok.save_pretrained(where)
    return where


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2-135M)")
    ap.add_argument("--scale", type=float, default=1.0, help="scale the job's token budgets and samples")
    ap.add_argument("--layers", type=int, default=None,
                    help="prune a copy of the model cut to its first N decoder layers (faster iteration)")
    ap.add_argument("--kl-depth", type=int, default=None, help="PlanOptions.kl_depth (default: the job's, exact)")
    ap.add_argument("--kl-dtype", default=None, help="PlanOptions.kl_dtype (default: the job's)")
    ap.add_argument("--stats-dtype", default=None, help="JobOptions.stats_dtype (default: the job's)")
    ap.add_argument("--eval-tokens", type=int, default=None, help="JobOptions.eval_tokens (default: the job's)")
    ap.add_argument("--label", default="", help="a name for this version, kept in the JSON")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: benches/results/pipeline-DATE.json)")
    a = ap.parse_args(argv)
    allocator = "keep-freed" if keep_freed_memory() else "default"  # as the command line does (allocator.py)

    keep = tempfile.TemporaryDirectory()
    model = a.model if a.layers is None else str(truncated(a.model, a.layers, Path(keep.name) / "model"))
    opts = scaled(replace(JobOptions(), model=model, progress=False, overwrite=True), a.scale)
    if a.kl_depth is not None:
        opts = replace(opts, plan=replace(opts.plan, kl_depth=a.kl_depth))
    if a.kl_dtype is not None:
        opts = replace(opts, plan=replace(opts.plan, kl_dtype=a.kl_dtype))
    if a.stats_dtype is not None:
        opts = replace(opts, stats_dtype=a.stats_dtype)
    if a.eval_tokens is not None:
        opts = replace(opts, eval_tokens=a.eval_tokens)
    dense, _ = load_model(opts.model)
    shape = shape_of(dense)
    tps_before = cpu_tokens_per_second(dense, dense.config.vocab_size)
    del dense
    handle = torch.nn.modules.module.register_module_forward_hook(_count)
    timer = CountingTimer()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = run_prune(replace(opts, out=str(Path(tmp) / "out")), timer=timer)
    total = time.perf_counter() - t0
    handle.remove()
    dense, _ = load_model(opts.model)
    tps_after = cpu_tokens_per_second(dense, dense.config.vocab_size)
    tps = math.sqrt(tps_before * tps_after)
    stages = {}
    for name, wall in timer.times.items():
        w = timer.work.get(name, {"layer_tokens": 0, "layer_calls": 0})
        stages[name] = {"wall_s": wall, **w, "forward_equiv": round(w["layer_tokens"] / shape.num_hidden_layers, 1),
                        "dense_forward_equiv_tokens": round(wall * tps)}
    ev = report.get("eval", {})
    quality = {k: v.get("bpb_ratio") for k, v in ev.get("pruned", {}).items() if isinstance(v, dict) and "bpb_ratio" in v}
    result = {
        "benchmark": "pipeline", "label": a.label, "scale": a.scale, "layers": a.layers, "model": a.model,
        "allocator": allocator, "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "kl_depth": opts.plan.kl_depth, "kl_dtype": report.get("importance", {}).get("kl_tables", {}).get("replay_dtype"),
        "stats_dtype": report.get("importance", {}).get("stats_dtype"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "cpu": cpu_name(), "loadavg": list(Path("/proc/loadavg").read_text().split()[:3])},
        "command": " ".join(sys.argv),
        "options": {k: getattr(opts, k) for k in ("calib_tokens", "kl_tokens", "drop_check_tokens", "eval_tokens",
                                                  "nextline_samples", "seq_len")},
        "dense_tokens_per_s": {"before": round(tps_before, 1), "after": round(tps_after, 1), "used": round(tps, 1)},
        "total_wall_s": round(total, 2), "total_dense_forward_equiv_tokens": round(total * tps),
        "stages": stages, "bpb_ratio": quality, "plan": report["plan"].get("dropped_layers"),
        "plan_widths": [lp["ffn_width"] for lp in report["plan"].get("layers", [])],
    }
    out = a.out or Path(__file__).parent / "results" / f"pipeline-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'stage':24s} {'wall_s':>8s} {'fwd_equiv':>10s} {'x dense tok':>12s}")
    for name, s in stages.items():
        print(f"{name:24s} {s['wall_s']:8.2f} {s['forward_equiv']:10.1f} {s['dense_forward_equiv_tokens']:12d}")
    print(f"{'total':24s} {total:8.2f}   dense {tps:.0f} tok/s   bpb ratio {quality}   -> {out}")
    return result


if __name__ == "__main__":
    main()
