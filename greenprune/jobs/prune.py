"""The prune job: load -> data -> scores -> plan -> prune -> compensate / recover -> evaluate -> save (atomically).

Data flows one way; the dense model is never modified and its files are never written.
"""
from __future__ import annotations

import copy
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from .._version import __version__
from ..data import corpus
from ..errors import GreenpruneError
from ..evaluation.cache import ResultCache, model_identity
from ..evaluation.tasks import run_tasks
from ..families import family_for, shape_of
from ..modelio.load import load_model, num_params
from ..modelio.reports import REPORT_NAME, hub_revision, source_spec
from ..modelio.save import dir_size, save_model_dir, write_json_atomic
from ..precision import DTYPES, resolve_dtype
from ..planning.kl_tables import LayerwiseKL, measure_kl_tables
from ..planning.plan import PruningPlan, resolve_plan
from ..planning.planner import check_layer_drops, make_plan
from ..planning.plots import plot_plan
from ..pruning.vocab_cost import measure_vocab_options
from ..planning.widths import bias_reserve
from ..pruning.compensation import compensate_, reconstruct_
from ..pruning.prune import prune_model
from ..pruning.vocab import check_tokenizer_fits, model_token_ids, prune_tokenizer, tokenizer_spec, vocabulary_for
from ..recovery.job import checkpoint_dir_for, recover_after_prune
from ..recovery.plots import plot_loss
from ..runinfo import machine_info
from ..scoring.scorers import score_model
from .evaluate import evaluate_pair, heldout_texts
from .moe import build_moe_plan, check_moe_job
from .options import VOCAB_EXTRA, JobOptions, Timer

log = logging.getLogger(__name__)


def check_inputs(opts: JobOptions) -> Optional[PruningPlan]:
    """Every input that can be checked without the model, checked before the model loads: the options, the
    recovery options, the plan file (returned), the data specs."""
    if opts.plan_file is None:
        opts.plan.validate()  # a bad --ratio is reported before minutes of loading and scoring
    if opts.recover is not None:
        opts.recover.validate()
    if opts.vocab_extra is not None and opts.vocab_extra < 0:
        raise GreenpruneError(f"--vocab-extra must be >= 0, got {opts.vocab_extra}")
    if opts.trades_vocab and opts.vocab_probe_tokens < 1:
        raise GreenpruneError(f"--vocab-probe-tokens must be >= 1, got {opts.vocab_probe_tokens}")
    if opts.stats_dtype not in DTYPES:
        raise GreenpruneError(f"--stats-dtype must be one of {', '.join(DTYPES)}, got {opts.stats_dtype!r}")
    for spec in (opts.data, *(opts.eval_data if opts.evaluate else ())):
        corpus.check_spec(spec)
    plan = PruningPlan.load(Path(opts.plan_file)) if opts.plan_file else None
    if plan is not None and plan.shape.num_experts and not plan.is_uniform:  # what derive_config would refuse
        raise GreenpruneError(f"plan {opts.plan_file}: per-layer mixture-of-experts plans cannot be saved; use a "
                              "uniform plan (the same experts count and expert width in every layer)")
    return plan


def spread_blocks(blocks: torch.Tensor, tokens: int) -> torch.Tensor:
    """About `tokens` tokens of calibration blocks, spread evenly over all of them. The blocks follow the documents'
    order, so the first blocks are one or two files: on SmolLM2-135M the KL tables of blocks 0-1 and of blocks 2-3
    differed by 82% (median entry) and gave different plans (benches/PIPELINE.md)."""
    n = max(1, min(len(blocks), tokens // blocks.shape[1]))
    return blocks[torch.linspace(0, len(blocks) - 1, n).round().long()]


def build_plan(model, tokenizer, opts: JobOptions, calib: list, timer: Timer,
               plan_file: Optional[PruningPlan] = None) -> tuple[PruningPlan, dict]:
    if family_for(model).moe:  # router statistics, not KL tables (planning/moe.py)
        return build_moe_plan(model, tokenizer, opts, calib, timer, plan_file)
    shape = shape_of(model)
    if opts.plan_file:
        plan_file = PruningPlan.load_for(opts.plan_file, shape, plan_file)
    else:
        opts.plan.validate(shape)
        if opts.use_vocab:  # before the long work: the vocabulary stage would fail after it
            check_tokenizer_fits(tokenizer, shape.vocab_size)
        floor = opts.vocab_floor(len(tokenizer_spec(tokenizer).base_ids) if opts.use_vocab else 1)
        opts.plan.check_reachable(shape, None if floor is None else min(shape.vocab_size, floor))
    with timer("tokenize_calibration"):
        blocks = corpus.token_blocks(tokenizer, calib, opts.seq_len, opts.calib_tokens)
    stats_dtype = resolve_dtype(opts.stats_dtype, model)
    with timer("importance"):
        scores = score_model(model, blocks, opts.scorer, progress=opts.progress, gram=bool(opts.reconstruct),
                             dtype=stats_dtype)
    extra = {"block_influence": scores.block_influence, "scores": scores, "stats_dtype": str(stats_dtype).removeprefix("torch."),
             "calibration_tokens": {"requested": opts.calib_tokens, "used": int(blocks.numel())}}
    if opts.plan_file:
        return resolve_plan(plan_file, scores.ffn, scores.kv), extra
    reserve = bias_reserve(shape, opts.plan.kv) if opts.could_use_bias_compensation() else 0
    vocab_keep, vocab_options, keep_ids = None, [], model_token_ids(model)
    if opts.trades_vocab:  # sizes to choose from, each with its measured cost
        with timer("vocabulary"):
            allowed = (math.ceil(opts.plan.ratio * shape.dense_params) + reserve) // shape.vocab_params(1)
            read = corpus.block_documents(tokenizer, calib, opts.seq_len, opts.calib_tokens)
            vocab_options, extra["vocab_options"] = measure_vocab_options(
                model, tokenizer, shape, calib, read, scores.token_mass, allowed, opts.vocab_min_count, keep_ids,
                opts.seq_len, opts.vocab_probe_tokens, opts.progress, dtype=stats_dtype, margin=VOCAB_EXTRA)
    elif opts.use_vocab:
        with timer("vocabulary"):
            vocab_keep = vocabulary_for(tokenizer, shape, (d.text for d in calib), scores.token_mass, opts.plan.ratio,
                                        opts.vocab_min_count, opts.fixed_vocab_extra, keep_ids=keep_ids)
    tables = None
    if opts.plan.method == "unified":
        with timer("kl_tables"):  # the KL is over the kept vocabulary: the widest removal's when it is traded
            kl_vocab = vocab_options[0].keep if vocab_options else vocab_keep
            kl = LayerwiseKL(model, spread_blocks(blocks, opts.kl_tokens), kl_vocab, depth=opts.plan.kl_depth,
                             dtype=resolve_dtype(opts.plan.kl_dtype, model))
            tables = measure_kl_tables(kl, scores, shape, opts.plan, progress=opts.progress)
        extra["kl_tables"] = tables
    with timer("plan"):
        try:
            plan = make_plan(shape, scores, opts.plan, vocab_keep, tables, reserve, vocab_options)
        except GreenpruneError as e:
            if vocab_keep is not None and opts.fixed_vocab_extra > 0:
                raise GreenpruneError(f"{e}, or keep fewer unused tokens (--vocab-extra {opts.fixed_vocab_extra})") from e
            raise
    if tables is not None and tables["drop"] and plan.dropped_layers:
        with timer("layer_drop_check"):
            check_blocks = spread_blocks(blocks, opts.drop_check_tokens)
            plan, extra["layer_drop_check"] = check_layer_drops(model, check_blocks, scores, shape, opts.plan,
                                                                vocab_keep, tables, plan, reserve, vocab_options)
        log.info("layer removal check: %s", extra["layer_drop_check"])
    return plan, extra


def run_prune(opts: JobOptions, timer: Optional[Timer] = None) -> dict:
    """The whole prune job; returns the report (also written to OUT/greenprune_report.json). timer: records each
    stage's wall time (benches/pipeline.py passes one that also counts forward work)."""
    timer = timer if timer is not None else Timer()
    out = Path(opts.out) if opts.out else None
    if out is not None and out.exists() and not opts.overwrite:  # fail before the long work, not after
        raise GreenpruneError(f"output directory {out} exists (use --overwrite to replace it)")
    plan_file = check_inputs(opts)
    torch.manual_seed(0)
    with timer("data"):  # before the model: a bad corpus is found in seconds, not after minutes of loading
        calib, held = corpus.calibration_and_heldout(opts.data, suffixes=opts.suffixes)
    with timer("load"):
        dense, tok = load_model(opts.model)  # checks the architecture
    moe = family_for(dense).moe
    if moe:
        check_moe_job(opts)
    calib, held = corpus.render_chats(tok, calib), corpus.render_chats(tok, held)
    plan, extra = build_plan(dense, tok, opts, calib, timer, plan_file)
    with timer("prune"):
        pruned = prune_model(dense, plan)
        pruned_tok = prune_tokenizer(tok, plan.vocab_keep) if plan.vocab_keep is not None else copy.deepcopy(tok)
    refit = False if moe else opts.use_reconstruct(extra["scores"].stats)  # MoE: no dense FFN to refit
    if not moe and opts.use_bias_compensation(plan):
        with timer("reconstruct"):
            compensate_(pruned, dense, plan, extra["scores"].stats, refit, opts.reconstruct_ridge)
    elif refit:
        with timer("reconstruct"):
            reconstruct_(pruned, dense, plan, extra["scores"].stats, opts.reconstruct_ridge)
    recovery = None
    if opts.recover is not None:
        with timer("recover"):
            pruned, history, recovery = recover_after_prune(pruned, pruned_tok, dense, tok, plan.vocab_keep, opts.recover,
                                                            out, opts.data, opts.eval_data)
    report = {
        "greenprune_version": __version__,
        "source_model": source_spec(opts.model),
        **({"source_revision": hub_revision(dense.config)} if hub_revision(dense.config) else {}),
        "data": {"calibration": source_spec(opts.data), "calibration_tokens": extra.pop("calibration_tokens")},
        "options": _jsonable(asdict(opts)),
        "params": {"dense": num_params(dense), "pruned": num_params(pruned), "ratio": 1 - num_params(pruned) / num_params(dense)},
        "plan": plan.to_dict(),
        "compensation": {"bias": not moe and opts.use_bias_compensation(plan), "refit": refit},
        "importance": {k: v for k, v in extra.items() if k != "scores"},
        **({"recovery": recovery} if recovery is not None else {}),
        "machine": machine_info(),
    }
    if opts.evaluate:
        report["eval"] = evaluate_pair(dense, tok, pruned, pruned_tok, plan.vocab_keep, heldout_texts(tok, opts, held), opts, timer,
                                       dense_identity=model_identity(opts.model))
    if opts.eval_tasks is not None:
        with timer("eval_tasks"):
            report.setdefault("eval", {})["tasks"] = {
                # the dense model's results are cached by its files, the data and the settings
                "dense": run_tasks(dense, tok, opts.eval_tasks, model_dir=opts.model, cache=ResultCache(),
                                   progress=opts.progress),
                "pruned": run_tasks(pruned, pruned_tok, opts.eval_tasks, progress=opts.progress)}
    report["timings_s"] = timer.times
    if out is not None:
        with timer("save"):
            def write(tmp: Path) -> None:
                plan.save(tmp / "plan.json")
                plot_plan(plan, tmp / "plan.png", extra.get("kl_tables"), extra.get("vocab_options"))
                if recovery is not None:
                    plot_loss(history, tmp / "loss.png")
                report["size_on_disk"] = {"pruned_bytes": dir_size(tmp)}
                report["timings_s"] = timer.times
                write_json_atomic(tmp / REPORT_NAME, report)

            save_model_dir(out, model=pruned, tokenizer=pruned_tok, writers=[write], overwrite=opts.overwrite)
        if recovery is not None:
            shutil.rmtree(checkpoint_dir_for(out), ignore_errors=True)  # complete: nothing left to resume
    return report


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
