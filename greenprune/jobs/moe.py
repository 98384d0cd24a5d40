"""The prune job's plan for mixture-of-experts models (families/moe.py): router statistics instead of the
unified planner's KL tables (planning/moe.py says why and what the rule is)."""
from __future__ import annotations

from typing import Optional

from ..data import corpus
from ..errors import GreenpruneError
from ..families import family_for, shape_of
from ..planning.moe import check_moe_reachable, collect_moe_stats, make_moe_plan, resolve_moe_plan
from ..planning.plan import PruningPlan
from ..pruning.vocab import check_tokenizer_fits, model_token_ids, vocabulary_for


def check_moe_job(opts) -> None:
    """Job options the MoE path cannot honour, refused before scoring (not ignored)."""
    if opts.reconstruct or opts.bias_compensation:
        raise GreenpruneError("--reconstruct / --bias-compensation need a dense FFN's output projection; they are "
                              "not available for mixture-of-experts models")
    if opts.scorer != "auto":
        raise GreenpruneError(f"--scorer {opts.scorer}: mixture-of-experts models are scored by router statistics "
                              "only (greenprune/planning/moe.py); leave --scorer at auto")
    if opts.recover is not None:
        raise GreenpruneError("LoRA recovery of mixture-of-experts models is not supported yet (--recover)")


def build_moe_plan(model, tokenizer, opts, calib: list, timer,
                   plan_file: Optional[PruningPlan] = None) -> tuple[PruningPlan, dict]:
    fam, shape = family_for(model), shape_of(model)
    check_moe_job(opts)
    if opts.plan_file:
        plan_file = PruningPlan.load_for(opts.plan_file, shape, plan_file)
    else:
        opts.plan.validate(shape)
        check_moe_reachable(shape, opts.plan, None if opts.vocab_floor() is None else min(shape.vocab_size, opts.vocab_floor()))
        if opts.use_vocab:  # before the long work, as for the other families
            check_tokenizer_fits(tokenizer, shape.vocab_size)
    with timer("tokenize_calibration"):
        blocks = corpus.token_blocks(tokenizer, calib, opts.seq_len, opts.calib_tokens)
    with timer("importance"):
        stats, mass = collect_moe_stats(model, blocks, progress=opts.progress)
        scores = [st.channel_scores(fam.experts(layer)) for st, layer in zip(stats, fam.layers(model))]
    extra = {"scores": None, "calibration_tokens": {"requested": opts.calib_tokens, "used": int(blocks.numel())}}
    if opts.plan_file:
        return resolve_moe_plan(plan_file, stats, scores), extra
    vocab_keep = None
    if opts.use_vocab:
        with timer("vocabulary"):
            vocab_keep = vocabulary_for(tokenizer, shape, (d.text for d in calib), mass, opts.plan.ratio,
                                        opts.vocab_min_count, opts.fixed_vocab_extra, keep_ids=model_token_ids(model))
    with timer("plan"):
        plan, extra["moe"] = make_moe_plan(shape, stats, scores, opts.plan, vocab_keep)
    return plan, extra
