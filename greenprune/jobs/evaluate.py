"""The eval job, and the evaluation of a pruned model against its dense one that the prune job reports."""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from .._version import __version__
from ..data import corpus
from ..evaluation.cache import ResultCache
from ..evaluation.metrics import (
    bits_per_byte,
    cpu_tokens_per_second,
    generate_code,
    next_line_exact_match,
    next_line_samples,
    pair_metrics,
)
from ..evaluation.tasks import TaskOptions, parse_tasks, run_tasks
from ..modelio.load import load_model, num_params
from ..modelio.reports import source_spec
from ..modelio.save import atomic_dir, dir_size, write_json_atomic
from ..pruning.vocab_map import plan_of, vocab_mapping
from .options import JobOptions, Timer

SIGNATURE_PROMPT = 'def is_palindrome(s: str) -> bool:\n    """Return True if s reads the same backwards."""\n'


def _digest(items) -> str:
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def speed_batch(opts: JobOptions) -> int:
    """Rows of 128 tokens in the throughput measurement: 4, fewer when the evaluation budget is under 2,048
    tokens (a small-budget job's speed figure then costs about what its evaluation costs)."""
    return max(1, min(4, opts.eval_tokens // 512))


def evaluate_pair(dense, dense_tok, pruned, pruned_tok, vocab_keep, heldout: dict[str, list[str]],
                  opts: JobOptions, timer: Timer, dense_identity: Optional[dict] = None,
                  cache: Optional[ResultCache] = None) -> dict:
    """Closeness of the pruned model to the dense one on each held-out set: one forward pass per model and window
    (metrics.pair_metrics). dense_identity (evaluation.cache.model_identity): the dense model's bits per byte and
    next-line matches are cached by it, the texts and the settings."""
    cache = cache if cache is not None else (ResultCache() if dense_identity is not None else None)
    out = {"dense": {}, "pruned": {}}
    for name, texts in heldout.items():
        with timer(f"eval_{name}"):
            key = {"kind": "dense_bpb", "greenprune": __version__, "model": dense_identity, "texts": _digest(texts),
                   "seq_len": opts.seq_len}
            cached = cache.get(key) if cache is not None else None
            d, p, a = pair_metrics(dense, dense_tok, pruned, pruned_tok, texts, vocab_keep, opts.seq_len,
                                   opts.progress, dense_bpb=cached)
            if cache is not None and cached is None:
                cache.put(key, d)
        out["dense"][name] = {"bpb": d["bpb"], "tokens": d["tokens"], "bytes": d["bytes"]}
        out["pruned"][name] = {"bpb": p["bpb"], "tokens": p["tokens"], "bytes": p["bytes"], "bpb_ratio": p["bpb"] / d["bpb"], **a}
    first = next(iter(heldout))
    for side in ("dense", "pruned"):  # the headline numbers: the held-out split of the calibration corpus
        out[side]["bpb"] = out[side][first]["bpb"]
    for k in ("kl", "top1_agreement", "dropped_mass"):
        out["pruned"][k] = out["pruned"][first][k]
    if opts.nextline_samples:
        samples = next_line_samples(heldout[first], opts.nextline_samples)
        with timer("eval_nextline"):
            # None where the held-out text gave no sample (0.000 would read as a measured failure)
            if samples:
                key = {"kind": "dense_next_line", "greenprune": __version__, "model": dense_identity,
                       "samples": _digest(samples)}
                cached = cache.get(key) if cache is not None else None
                if cached is None:
                    cached = next_line_exact_match(dense, dense_tok, samples, progress=opts.progress)
                    if cache is not None:
                        cache.put(key, cached)
                out["dense"]["next_line_exact_match"] = cached["exact_match"]
                out["pruned"]["next_line_exact_match"] = next_line_exact_match(pruned, pruned_tok, samples,
                                                                               progress=opts.progress)["exact_match"]
            else:
                out["dense"]["next_line_exact_match"] = out["pruned"]["next_line_exact_match"] = None
            out["dense"]["next_line_samples"] = out["pruned"]["next_line_samples"] = len(samples)
    with timer("eval_speed"):
        batch = speed_batch(opts)
        out["dense"]["cpu_tokens_per_s"] = cpu_tokens_per_second(dense, dense.config.vocab_size, batch)
        out["pruned"]["cpu_tokens_per_s"] = cpu_tokens_per_second(pruned, pruned.config.vocab_size, batch)
    if opts.nextline_samples:  # 0: no generation (Gemma 3 270M: 48 tokens took 14 s per model, 2 loaded cores)
        with timer("eval_sample_completion"):
            out["pruned"]["sample_completion"] = {"prompt": SIGNATURE_PROMPT,
                                                  "dense": generate_code(dense, dense_tok, SIGNATURE_PROMPT),
                                                  "pruned": generate_code(pruned, pruned_tok, SIGNATURE_PROMPT)}
    return out


def heldout_texts(tokenizer, opts: JobOptions, heldout_docs: list) -> dict[str, list[str]]:
    sets = {f"{opts.data}:heldout": corpus.eval_snippets(tokenizer, heldout_docs, opts.eval_tokens)}
    for spec in opts.eval_data:
        docs = corpus.render_chats(tokenizer, corpus.load_documents(spec, opts.suffixes))
        sets[spec] = corpus.eval_snippets(tokenizer, docs, opts.eval_tokens)
    return sets


def run_eval(model_spec: Optional[str], reference: Optional[str], opts: JobOptions, loaded=None) -> dict:
    """Evaluate a (pruned) model alone or against a reference (dense) model: bits per byte, KL, agreement,
    next-line match (loaded: the model and tokenizer, when the caller has them already)."""
    timer = Timer()
    model, tok = loaded if loaded is not None else load_model(model_spec)
    ref, ref_tok = load_model(reference) if reference or model_spec is None else (None, None)
    calib, held = corpus.calibration_and_heldout(opts.data, suffixes=opts.suffixes)
    base_tok = ref_tok if ref_tok is not None else tok
    held = corpus.render_chats(base_tok, held)
    sets = heldout_texts(base_tok, opts, held)
    if ref is None:
        res = {name: bits_per_byte(model, tok, texts, opts.seq_len, opts.progress) for name, texts in sets.items()}
        return {"model": {"params": num_params(model), **{k: v["bpb"] for k, v in res.items()},
                          "cpu_tokens_per_s": cpu_tokens_per_second(model, model.config.vocab_size, speed_batch(opts))}}
    keep = vocab_mapping(model, tok, ref, ref_tok, plan_of(model_spec))
    res = evaluate_pair(ref, ref_tok, model, tok, None if keep is None else keep.tolist(), sets, opts, timer)
    res["params"] = {"dense": num_params(ref), "pruned": num_params(model)}
    if model_spec and Path(model_spec).is_dir():
        res["size_on_disk"] = {"pruned_bytes": dir_size(Path(model_spec))}
    res["timings_s"] = timer.times
    return res


def run_eval_job(model_spec: Optional[str], reference: Optional[str], opts: JobOptions,
                 out: Optional[Path] = None) -> dict:
    """`greenprune eval`: the closeness metrics (task bpb) and the downstream tasks of opts.eval_tasks on one
    model. out: FILE.json gets the results; a directory gets eval_report.json and the generated completions."""
    tasks = opts.eval_tasks or TaskOptions()
    own, lm = parse_tasks(tasks.tasks)
    to_dir = out is not None and out.suffix != ".json"
    t0 = time.monotonic()
    with atomic_dir(out) if to_dir else nullcontext(None) as scratch:  # an existing directory: refused up front
        loaded = load_model(model_spec) if tasks.needs_model else None
        res = run_eval(model_spec, reference, opts, loaded) if "bpb" in own else {}
        if [t for t in own if t != "bpb"] or lm:
            model, tok = loaded if loaded is not None else (None, None)
            res["tasks"] = run_tasks(model, tok, tasks, model_dir=model_spec, progress=opts.progress,
                                     completions_out=scratch / "humaneval_completions.jsonl" if scratch else None)
            res["model_source"] = source_spec(model_spec)
            res["task_settings"] = asdict(tasks)
            res["wall_s"] = round(time.monotonic() - t0, 2)
        if scratch is not None:
            write_json_atomic(scratch / "eval_report.json", res)
    if out is not None and not to_dir:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, res)
    return res
