"""`greenprune search`: per-layer rates by evolutionary search."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..search.fitness import FITNESS
from ..search.search import SEARCH_PLAN, SEEDS, SearchOptions, run_search
from .args import option, switch

S, P = SearchOptions(), SEARCH_PLAN


def add_parser(sub) -> None:
    s = sub.add_parser("search", help="find per-layer pruning rates by evolutionary search (writes OUT/plan.json)")
    s.add_argument("--model", default=None, help="model to prune (default: the embedded SmolLM2-135M)")
    option(s, "--data", S.data, "calibration data (as for prune)")
    option(s, "--ratio", P.ratio, "fraction of all parameters to remove; higher than prune's 0.22 because searched "
           "per-layer rates pay most at larger budgets (README: searched per-layer rates at 30% and 50%)", type=float)
    option(s, "--generations", S.generations, "generations after the seed population", type=int)
    option(s, "--population", S.population, "population size", type=int)
    option(s, "--children", S.children, "children per generation (0: the population size)", type=int)
    option(s, "--operator", S.operator, "numeric | llm (a chat model performs the evolutionary operators)",
           choices=("numeric", "llm"))
    option(s, "--llm", S.llm, "self (the model being pruned) | http://HOST:PORT (OpenAI-compatible) | model path")
    option(s, "--llm-timeout", S.llm_timeout, "seconds per chat request", type=float)
    option(s, "--llm-max-tokens", S.llm_max_tokens, "reply tokens per chat request", type=int)
    option(s, "--seed", S.seed, "seed (same seed, same search)", type=int)
    option(s, "--fitness", S.fitness, "KL to the dense model or bits/byte", choices=FITNESS)
    option(s, "--fitness-tokens", S.fitness_tokens, "calibration tokens of the full fitness (stage 2)", type=int)
    option(s, "--stage1-tokens", S.stage1_tokens, "tokens every child is scored on first", type=int)
    option(s, "--seq-len", S.seq_len, "calibration block length; shorter than prune's, so the fitness sees more "
           "blocks for its few tokens", type=int)
    option(s, "--calib-tokens", S.calib_tokens, "tokens for the channel importance scores; fewer than prune's, "
           "since the fitness decides the widths", type=int)
    option(s, "--align", P.align, "FFN widths are multiples of this", type=int)
    option(s, "--max-ffn-prune", P.max_ffn_prune, "largest fraction of one layer's FFN removed", type=float)
    switch(s, "--kv", "also search KV-group counts")
    switch(s, "--no-layer-drop", "never remove whole layers")
    switch(s, "--no-vocab", "keep the whole vocabulary")
    option(s, "--vocab-extra", S.vocab_extra, "unused tokens kept by dense output mass (as prune)", type=int)
    option(s, "--seeds", ",".join(S.seeds), f"seed plans (comma list of {','.join(SEEDS)})")
    option(s, "--out", S.out, "output directory")
    switch(s, "--resume", "continue the search checkpointed in OUT")
    switch(s, "--overwrite", "replace a search in OUT")
    switch(s, "--no-progress", "no progress bars")


def search_options(a) -> SearchOptions:
    plan = replace(P, ratio=a.ratio, align=a.align, max_ffn_prune=a.max_ffn_prune, kv=a.kv,
                   drop_layers=not a.no_layer_drop)
    return SearchOptions(
        model=a.model, data=a.data, plan=plan, generations=a.generations, population=a.population,
        children=a.children, operator=a.operator, llm=a.llm, llm_timeout=a.llm_timeout,
        llm_max_tokens=a.llm_max_tokens, seed=a.seed, fitness=a.fitness, fitness_tokens=a.fitness_tokens,
        stage1_tokens=a.stage1_tokens, seq_len=a.seq_len, calib_tokens=a.calib_tokens, vocab=not a.no_vocab,
        vocab_extra=a.vocab_extra, seeds=tuple(x for x in a.seeds.split(",") if x), out=a.out, resume=a.resume,
        overwrite=a.overwrite, progress=not a.no_progress)


def run(a) -> int:
    s = run_search(search_options(a))
    b, c = s["best"], s["cost"]
    print(f"best {b['metric']} {b['fitness']:.4f} ({b['origin']}), {b['ratio']:.1%} removed, "
          f"layers dropped {b['layers_dropped']}; seeds: "
          + ", ".join(f"{k} {v:.4f}" for k, v in s["seed_fitness"].items()))
    print(f"{c['candidates_evaluated']} candidates, {c['tokens']:,} tokens, {c['wall_s']:.0f} s; "
          f"plan: {Path(a.out) / 'plan.json'} (apply: greenprune prune --plan {Path(a.out) / 'plan.json'})")
    return 0
