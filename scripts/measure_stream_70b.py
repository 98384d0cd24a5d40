"""Peak memory of layer-streaming pruning on a Llama-2-70B-shaped slice (scripts/make_70b_slice.py).

Calibration: random token ids (the weights are random, so text would carry no more signal). Records the process's
resident-set high-water mark (getrusage ru_maxrss) against the stated budget (one dense layer in the compute
dtype + carried hidden states + one batch's activations) and the checkpoint size, into a JSON file.

    OMP_NUM_THREADS=1 python scripts/measure_stream_70b.py --model /tmp/llama70b-slice --out /tmp/llama70b-pruned \
        --json benches/results/stream_70b_slice_cpu.json
"""
import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from greenprune.runinfo import device_name
from greenprune.modelio.save import dir_size
from greenprune.planning.options import PlanOptions
from greenprune.deploy.stream import StreamOptions, peak_rss_bytes, rss_bytes, stream_prune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--ratio", type=float, default=0.30)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--method", default="global")
    a = ap.parse_args()
    start_rss = rss_bytes()
    blocks = torch.randint(0, 32000, (a.blocks, a.seq_len), generator=torch.Generator().manual_seed(0))
    opts = StreamOptions(PlanOptions(ratio=a.ratio, align=256), method=a.method)
    rep = stream_prune(a.model, a.out, blocks, opts, overwrite=True, progress=False)
    mem = rep["memory"]
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "machine": device_name(torch.device("cpu")),
           "platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "checkpoint_bytes": dir_size(Path(a.model)), "pruned_bytes": dir_size(Path(a.out)),
           "rss_at_start_bytes": start_rss, "peak_rss_bytes": peak_rss_bytes(),
           "peak_over_budget": peak_rss_bytes() / mem["budget_total_bytes"],
           # what the run adds to the process it started in (interpreter, torch, transformers already loaded)
           "peak_above_start_over_budget": (peak_rss_bytes() - start_rss) / mem["budget_total_bytes"], **{k: v for k, v in mem.items() if k != "peak_rss_bytes"},
           "plan": rep["plan"], "statistics": rep["statistics"], "seconds": rep["seconds"]}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    g = 2**30
    print(f"checkpoint {res['checkpoint_bytes'] / g:.2f} GiB; peak RSS {res['peak_rss_bytes'] / g:.2f} GiB "
          f"(start {start_rss / g:.2f}; above it {res['peak_above_start_over_budget']:.3f}x the budget); budget {mem['budget_total_bytes'] / g:.2f} GiB = layer {mem['budget_layer_bytes'] / g:.2f} "
          f"+ hidden {mem['budget_hidden_states_bytes'] / g:.3f} + batch activations {mem['budget_batch_activations_bytes'] / g:.3f}")


if __name__ == "__main__":
    main()
