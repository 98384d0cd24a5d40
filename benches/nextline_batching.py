"""The default job's 32 next-line samples on SmolLM2-135M: batched (16 at a time) vs one by one, the completed
lines and the wall time side by side in one run.

    python benches/nextline_batching.py > benches/results/nextline_batching.json   (last line: the JSON)
"""
import datetime
import json
import time

from greenprune.modelio.load import load_model
from greenprune.data import corpus
from greenprune.jobs.options import JobOptions
from greenprune.jobs.evaluate import heldout_texts
from greenprune.evaluation.metrics import next_line_completions, next_line_samples
from greenprune.runinfo import machine_info
opts = JobOptions()
model, tok = load_model(None)
calib, held = corpus.calibration_and_heldout(opts.data)
sets = heldout_texts(tok, opts, corpus.render_chats(tok, held))
first = next(iter(sets))
samples = next_line_samples(sets[first], opts.nextline_samples)
res = {}
for bs in (16, 1):
    t = time.perf_counter()
    res[bs] = next_line_completions(model, tok, samples, batch_size=bs, progress=False)
    res[f"t{bs}"] = time.perf_counter() - t
    print(bs, round(res[f"t{bs}"], 1), flush=True)
same = sum(a == b for a, b in zip(res[16], res[1]))
hits = {bs: sum(l is not None and l.rstrip() == t.rstrip() for l, (_, t) in zip(res[bs], samples)) for bs in (16, 1)}
print(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine_info(), "samples": len(samples), "same_lines": same, "hits": hits, "t_batched": res["t16"], "t_one_by_one": res["t1"]}))
