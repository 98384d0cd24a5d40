"""Read the benchmark JSON of a GPU run (scripts/gpu_check.sh) and print it as the README's tables.

    python scripts/gpu_results.py OUT_DIR                       # tables of every bench_*.json in OUT_DIR
    python scripts/gpu_results.py OUT_DIR --save benches/results   # also copy them as <gpu>-<date>-<suite>.json

Kernel rows: device time, the achieved rate and its fraction of the ceiling measured in the same run, the
speed-up over the op's baseline and the target. For every op and shape the fastest implementation measured is
named beside the one the dispatcher picks (CUDA extension, then Triton: kernels/dispatch.py), so a dispatch
order that loses is visible. End-to-end rows: measured speed-up, ideal (FLOPs / bytes ratio) and the fraction
of it; for layer slices also the whole stack's speed-up extrapolated from them (kept layers, labelled so).
Only what the JSON holds is printed; nothing is filled in.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

DISPATCH_ORDER = ("cuda_ext", "triton")  # what `auto` runs on CUDA tensors when both exist (kernels/dispatch.py)


def load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: not a readable benchmark JSON ({exc})")
    if "benchmarks" not in data:
        raise SystemExit(f"{path}: no 'benchmarks' list: not pytest-benchmark output")
    return data


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _op(bench: dict) -> str:
    return bench["name"].split("[")[0].removeprefix("bench_")


def kernel_rows(data: dict) -> list[str]:
    """One markdown row per kernel benchmark, plus a line per op/shape naming the fastest implementation."""
    rows = ["| op / shape | impl | ms | rate | of ceiling | speed-up (baseline) | target |", "|---|---|---|---|---|---|---|"]
    by_group: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        x, impl = b.get("extra_info", {}), b.get("params", {}).get("impl", "?")
        if "device_ms" not in x:
            continue
        by_group[b.get("group") or _op(b)][impl] = x["device_ms"]
        rate = (f"{x['GBps']:.0f} GB/s" if "GBps" in x and "TFLOPs" not in x else
                f"{x['TFLOPs']:.0f} TFLOP/s" if "TFLOPs" in x else "-")
        frac = x.get("frac_of_cublas_bf16", x.get("frac_of_copy_bw"))
        target = next((f"{k.removeprefix('target_')} {v:.3g}" for k, v in x.items() if k.startswith("target_")), "-")
        rows.append(f"| {b.get('group') or _op(b)} | {impl} | {x['device_ms']:.4g} | {rate} | "
                    f"{_fmt(frac, '.0%')} | {_fmt(x.get('speedup_vs_baseline'), '.2f')} "
                    f"| {target} |")
    notes = []
    for group, times in by_group.items():
        fastest = min(times, key=times.get)
        picked = next((i for i in DISPATCH_ORDER if i in times), None)
        if picked is not None and picked != fastest:
            notes.append(f"- {group}: dispatch picks {picked} ({times[picked]:.4g} ms), fastest measured {fastest} "
                         f"({times[fastest]:.4g} ms)")
    return rows + ([""] + notes if notes else [])


def e2e_rows(data: dict) -> list[str]:
    rows = ["| subject | ratio / variant | impl | mode | B | T | speed-up | ideal | of ideal | stack (extrapolated) | graph |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in data["benchmarks"]:
        x, p = b.get("extra_info", {}), b.get("params", {})
        if "speedup_vs_baseline" not in x:
            continue
        subject = _op(b)
        plan = " ".join(str(p[k]) for k in ("ratio", "variant") if k in p) or "-"
        graph = x.get("graph", {}).get("cuda_graph") if isinstance(x.get("graph"), dict) else None
        rows.append(f"| {subject} | {plan} | {x.get('impl', '?')} | {p.get('mode', '?')} | {p.get('batch', '?')} | "
                    f"{p.get('T', '?')} | {x['speedup_vs_baseline']:.2f}x | {_fmt(x.get('ideal_speedup'), '.2f')}x | "
                    f"{_fmt(x.get('frac_of_ideal_speedup'), '.0%')} | {_fmt(x.get('extrapolated_stack_speedup'), '.2f')} | "
                f"{'-' if graph is None else graph} |")
    return rows


def header(data: dict) -> str:
    g = data.get("greenprune", {})
    c = g.get("ceilings", {})
    return (f"{g.get('gpu', 'unknown GPU')} ({g.get('sm_count', '?')} SMs), torch {g.get('torch', '?')}, CUDA "
            f"{g.get('cuda', '?')}, triton {g.get('triton', '?')}, {g.get('date', '?')}, profile "
            f"{g.get('profile', 'full')}; ceilings: copy {_fmt(c.get('copy_GBps'), '.0f')} GB/s, bf16 GEMM "
            f"{_fmt(c.get('gemm_bf16_TFLOPs'), '.0f')} TFLOP/s")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--save", type=Path, help="copy each JSON here as <gpu>-<date>-<suite>.json")
    args = ap.parse_args(argv)
    files = sorted(args.out_dir.glob("bench_*.json"))
    if not files:
        print(f"{args.out_dir}: no bench_*.json (did the bench steps run?)", file=sys.stderr)
        return 1
    for f in files:
        data = load(f)
        print(f"\n## {f.stem}: {len(data['benchmarks'])} benchmarks\n{header(data)}\n")
        print("\n".join(e2e_rows(data) if f.stem.endswith("e2e") else kernel_rows(data)))
        if args.save:
            g = data.get("greenprune", {})
            dest = args.save / f"{slug(g.get('gpu', 'gpu'))}-{str(g.get('date', 'undated'))[:10]}-{f.stem}.json"
            args.save.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest.with_suffix(".json.tmp"))  # aside, then renamed: never a half-written file
            os.replace(dest.with_suffix(".json.tmp"), dest)
            print(f"\nsaved {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
