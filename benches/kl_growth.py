"""KL tables' forward work against depth, exact vs the bounded proxy (PlanOptions.kl_depth), and the proxy's
agreement with the exact tables.

    python benches/kl_growth.py curve                 # tiny random Llamas of 4/8/16/30 layers: layer calls, time
    python benches/kl_growth.py agree --layers 8      # SmolLM2-135M cut to 8 layers: tables and plans compared
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from greenprune.families import shape_of  # noqa: E402
from greenprune.planning.kl_tables import LayerwiseKL, measure_kl_tables  # noqa: E402
from greenprune.planning.options import PlanOptions  # noqa: E402
from greenprune.planning.planner import make_plan  # noqa: E402
from greenprune.runinfo import cpu_name, machine_info  # noqa: E402
from greenprune.scoring.scorers import score_model  # noqa: E402


def layer_calls(model, fn):
    n = [0]
    hooks = [l.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1)) for l in model.model.layers]
    try:
        t = time.perf_counter()
        out = fn()
        return out, n[0], time.perf_counter() - t
    finally:
        for h in hooks:
            h.remove()


def curve(depths=(4, 8, 16, 30), proxy_depth=2) -> list[dict]:
    from helpers import tiny_model

    rows = []
    for L in depths:
        m = tiny_model(layers=L, hidden=64, ffn=256, heads=4, kv_heads=2)
        blocks = torch.randint(0, 97, (2, 64), generator=torch.Generator().manual_seed(0))
        scores = score_model(m, blocks, "wanda", progress=False)
        opts = PlanOptions()
        shape = shape_of(m)
        row = {"layers": L}
        for name, d in (("exact", 0), (f"depth{proxy_depth}", proxy_depth)):
            _, calls, secs = layer_calls(m, lambda: measure_kl_tables(LayerwiseKL(m, blocks, depth=d), scores, shape, opts,
                                                                       progress=False))
            row[name] = {"layer_calls": calls, "wall_s": round(secs, 3)}
        rows.append(row)
        print(row)
    return rows


def agree(layers: int, tokens: int, depths=(1, 2, 4)) -> dict:
    from greenprune.modelio.load import load_model

    m, tok = load_model(None)
    m.model.layers = m.model.layers[:layers]
    m.config.num_hidden_layers = layers
    from greenprune.data import corpus

    calib, _ = corpus.calibration_and_heldout("stdlib")
    blocks = corpus.token_blocks(tok, calib, 256, max(tokens, 1024))
    scores = score_model(m, blocks, "wanda", progress=False)
    shape = shape_of(m)
    opts = PlanOptions()
    kl_blocks = blocks[: max(1, tokens // 256)]
    out = {"layers": layers, "tokens": int(kl_blocks.numel())}
    ref, calls, secs = layer_calls(m, lambda: measure_kl_tables(LayerwiseKL(m, kl_blocks), scores, shape, opts, progress=False))
    ref_plan = make_plan(shape, scores, opts, None, ref)
    out["exact"] = {"layer_calls": calls, "wall_s": round(secs, 2), "dropped": ref_plan.dropped_layers,
                    "widths": [lp.ffn_width for lp in ref_plan.layers]}
    flat = lambda t: np.array([x for r in t["ffn"] for x in r] + list(t["drop"]))  # noqa: E731
    for d in depths:
        tab, calls, secs = layer_calls(m, lambda: measure_kl_tables(LayerwiseKL(m, kl_blocks, depth=d), scores, shape,
                                                                     opts, progress=False))
        plan = make_plan(shape, scores, replace(opts, kl_depth=d), None, tab)
        a, b = flat(ref), flat(tab)
        ra, rb = a.argsort().argsort(), b.argsort().argsort()
        out[f"depth{d}"] = {"layer_calls": calls, "wall_s": round(secs, 2),
                            "spearman": float(np.corrcoef(ra, rb)[0, 1]),
                            "median_ratio": float(np.median(b[a > 0] / a[a > 0])),
                            "plan_equal": plan.dropped_layers == ref_plan.dropped_layers
                            and [lp.ffn_width for lp in plan.layers] == out["exact"]["widths"],
                            "dropped": plan.dropped_layers, "widths": [lp.ffn_width for lp in plan.layers]}
        print(d, out[f"depth{d}"])
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["curve", "agree"])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    res = curve() if a.what == "curve" else agree(a.layers, a.tokens)
    rec = {"benchmark": f"kl_growth_{a.what}", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": {**machine_info(), "cpu": cpu_name()}, "result": res}
    out = a.out or Path(__file__).parent / "results" / f"kl_growth_{a.what}.json"
    out.write_text(json.dumps(rec, indent=1) + "\n")
    print("->", out)
