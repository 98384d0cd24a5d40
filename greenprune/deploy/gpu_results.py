"""Read the benchmark JSON of a GPU run (scripts/gpu_check.sh) and print it as the README's tables.

    python -m greenprune.deploy.gpu_results OUT_DIR                         # tables of every bench_*.json in OUT_DIR
    python -m greenprune.deploy.gpu_results OUT_DIR --save benches/results  # also copy them as
                                                        # <gpu>-<date>-<suite>.json and record the dispatch order

Kernel rows: device time, the achieved rate and its fraction of the ceiling measured in the same run, the
speed-up over the op's baseline and the target. Then, per op and size class (decode: at most 64 rows; bulk),
the dispatch backends in measured order (geometric mean over the shapes of each one's time over the fastest's);
--save merges that order under the GPU's name into kernels/dispatch_table.json, which the dispatcher follows on
that GPU, so its choice per op is the fastest measured there. End-to-end rows: measured speed-up, ideal (FLOPs /
bytes ratio) and the fraction of it; for layer slices also the whole stack's speed-up extrapolated from them
(kept layers, labelled so). Only what the JSON holds is printed or recorded; nothing is filled in.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from ..kernels.dispatch import BACKENDS, DISPATCH_TABLE, size_class  # the dispatcher's own size classes

ROOT = Path.cwd()  # saved paths are recorded relative to where the command runs (the checkout)

IMPL_BACKEND = {"cuda_ext": "cuda", "triton": "triton", "eager": "torch", "eager_kept": "torch"}  # same function
ROWS_PARAM = {"channel_moments": "N", "wanda_scores": "O", "taylor_scores": "O", "kl_divergence": "T",
              "swiglu_ffn": "T", "lm_head_argmax": "T", "lm_head_topk": "T", "remapped_embedding": "N"}


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
    """One markdown row per kernel benchmark."""
    rows = ["| op / shape | impl | ms | rate | of ceiling | speed-up (baseline) | target |", "|---|---|---|---|---|---|---|"]
    for b in data["benchmarks"]:
        x, impl = b.get("extra_info", {}), b.get("params", {}).get("impl", "?")
        if "device_ms" not in x:
            continue
        rate = (f"{x['GBps']:.0f} GB/s" if "GBps" in x and "TFLOPs" not in x else
                f"{x['TFLOPs']:.0f} TFLOP/s" if "TFLOPs" in x else "-")
        frac = x.get("frac_of_cublas_bf16", x.get("frac_of_copy_bw"))
        target = next((f"{k.removeprefix('target_')} {v:.3g}" for k, v in x.items() if k.startswith("target_")), "-")
        rows.append(f"| {b.get('group') or _op(b)} | {impl} | {x['device_ms']:.4g} | {rate} | "
                    f"{_fmt(frac, '.0%')} | {_fmt(x.get('speedup_vs_baseline'), '.2f')} | {target} |")
    return rows


def dispatch_orders(data: dict) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """{op: {size class: [(backend, geometric mean of its time / the fastest's over the shapes), ...]}}, fastest
    first, from the implementations that compute the op's own function (not torch.compile, not the full head)."""
    times: dict = defaultdict(lambda: defaultdict(dict))  # (op, class) -> shape -> backend -> ms
    for b in data["benchmarks"]:
        op, p, x = _op(b), b.get("params", {}), b.get("extra_info", {})
        backend = IMPL_BACKEND.get(p.get("impl"))
        if backend is None or op not in ROWS_PARAM or "device_ms" not in x or ROWS_PARAM[op] not in p:
            continue
        shape = tuple(sorted((k, v) for k, v in p.items() if k != "impl"))
        times[(op, size_class(p[ROWS_PARAM[op]]))][shape][backend] = x["device_ms"]
    orders: dict = defaultdict(dict)
    for (op, cls), shapes in times.items():
        ratios = defaultdict(list)
        for by_backend in shapes.values():
            best = min(by_backend.values())
            for backend, ms in by_backend.items():
                ratios[backend].append(ms / best)
        mean = {bk: math.exp(sum(map(math.log, r)) / len(r)) for bk, r in ratios.items()}
        orders[op][cls] = sorted(mean.items(), key=lambda kv: (kv[1], BACKENDS.index(kv[0])))
    return dict(orders)


def order_rows(orders: dict) -> list[str]:
    rows = ["| op | size class | measured order (time / fastest) | default order would pick |", "|---|---|---|---|"]
    for op, classes in sorted(orders.items()):
        for cls, ranked in sorted(classes.items()):
            default = next(b for b in BACKENDS if b in dict(ranked))
            note = default if default == ranked[0][0] else f"{default} ({dict(ranked)[default]:.2f}x the fastest)"
            rows.append(f"| {op} | {cls} | {', '.join(f'{b} {r:.2f}' for b, r in ranked)} | {note} |")
    return rows


def record_orders(orders: dict, gpu: str, source: str, table_path: Path = DISPATCH_TABLE) -> None:
    """Merge the measured orders under `gpu` into the dispatch table, written aside and renamed into place."""
    table = json.loads(table_path.read_text()) if table_path.exists() else {"gpus": {}}
    entry = table.setdefault("gpus", {}).setdefault(gpu, {"ops": {}})
    for op, classes in orders.items():
        entry["ops"].setdefault(op, {}).update({cls: [b for b, _ in ranked] for cls, ranked in classes.items()})
    entry["source"] = source
    tmp = table_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    os.replace(tmp, table_path)


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
    ap.add_argument("--save", type=Path, help="copy each JSON here as <gpu>-<date>-<suite>.json and record the "
                    "measured dispatch order")
    ap.add_argument("--table", type=Path, default=DISPATCH_TABLE, help="the dispatch table --save updates")
    args = ap.parse_args(argv)
    files = sorted(args.out_dir.glob("bench_*.json"))
    if not files:
        print(f"{args.out_dir}: no bench_*.json (did the bench steps run?)", file=sys.stderr)
        return 1
    for f in files:
        data = load(f)
        print(f"\n## {f.stem}: {len(data['benchmarks'])} benchmarks\n{header(data)}\n")
        e2e = f.stem.endswith("e2e")
        print("\n".join(e2e_rows(data) if e2e else kernel_rows(data)))
        orders = {} if e2e else dispatch_orders(data)
        if orders:
            print("\n" + "\n".join(order_rows(orders)))
        if args.save:
            g = data.get("greenprune", {})
            dest = args.save / f"{slug(g.get('gpu', 'gpu'))}-{str(g.get('date', 'undated'))[:10]}-{f.stem}.json"
            args.save.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest.with_suffix(".json.tmp"))  # aside, then renamed: never a half-written file
            os.replace(dest.with_suffix(".json.tmp"), dest)
            print(f"\nsaved {dest}")
            if orders and "gpu" in g:
                record_orders(orders, g["gpu"], f"{dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}",
                              args.table)
                print(f"dispatch order for {g['gpu']} recorded in {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
