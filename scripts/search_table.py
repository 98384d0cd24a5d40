"""Searched plans vs the heuristics they start from, at equal parameter budgets, on the same evaluation.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/search_table.py --ratios 0.30 0.50 --out benches/results/search_cpu.json

For each ratio: an evolutionary search (numeric operator) from the seed plans; then every plan (searched,
uniform, global threshold, OWL-like, the unified planner's DP plan; all with the same vocabulary and within the
same budget) is physically pruned and scored in bits per byte on held-out stdlib files and on `rich`'s source.
At the first ratio the LLM operator (the model itself as the chat model) runs too with the same seed,
generations and children, so both make the same number of proposals: best fitness reached and wall time.
"""
import argparse
import datetime
import time
from dataclasses import replace
from pathlib import Path

from greenprune.evaluation.metrics import bits_per_byte
from greenprune.modelio.save import write_json_atomic
from greenprune.planning.plan import PruningPlan
from greenprune.jobs.options import JobOptions
from greenprune.jobs.evaluate import heldout_texts
from greenprune.pruning.prune import prune_model
from greenprune.search.search import SEARCH_PLAN, SearchContext, SearchOptions, run_search
from greenprune.runinfo import machine_info
from greenprune.search.plots import plot_convergence
from greenprune.pruning.vocab import prune_tokenizer


def evaluate_plan(ctx, plan, sets, seq_len):
    pruned = prune_model(ctx.model, plan)
    tok = prune_tokenizer(ctx.tokenizer, plan.vocab_keep) if plan.vocab_keep is not None else ctx.tokenizer
    return {name: bits_per_byte(pruned, tok, texts, seq_len, progress=False)["bpb"] for name, texts in sets.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.30, 0.50])
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--fitness-tokens", type=int, default=256)
    ap.add_argument("--stage1-tokens", type=int, default=128)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--llm-max-tokens", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-llm", action="store_true")
    ap.add_argument("--runs", default="out/search-bench", help="search output directories go here")
    ap.add_argument("--out", default="benches/results/search_cpu.json")
    a = ap.parse_args()
    t_all = time.perf_counter()
    base = SearchOptions(plan=replace(SEARCH_PLAN, ratio=a.ratios[0]), generations=a.generations, population=a.population,
                         fitness_tokens=a.fitness_tokens, stage1_tokens=a.stage1_tokens, llm_max_tokens=a.llm_max_tokens,
                         seed=a.seed, overwrite=True, progress=False)
    ctx = SearchContext(base)
    job = JobOptions(eval_tokens=a.eval_tokens)
    sets = heldout_texts(ctx.tokenizer, job, ctx.held)
    dense = {n: bits_per_byte(ctx.model, ctx.tokenizer, t, job.seq_len, progress=False)["bpb"] for n, t in sets.items()}
    print("dense", dense, flush=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "OMP_NUM_THREADS=1 .venv/bin/python scripts/search_table.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(a).items() if not isinstance(v, bool)) + (" --no-llm" if a.no_llm else ""),
              "machine": machine_info(), "dense_bpb": dense, "eval_tokens_per_corpus": a.eval_tokens,
              "search_options": {k: v for k, v in base.flat().items() if k not in ("out", "overwrite", "progress")},
              "ratios": {}, "operators": {}}
    for ratio in a.ratios:
        opts = replace(base, plan=replace(base.plan, ratio=ratio), out=f"{a.runs}/r{round(ratio * 100)}-numeric")
        space = ctx.space(opts)
        summary = run_search(opts, ctx)
        runs = {"numeric": summary}
        if ratio == a.ratios[0] and not a.no_llm:
            runs["llm"] = run_search(replace(opts, operator="llm", out=f"{a.runs}/r{round(ratio * 100)}-llm"), ctx)
        seeds = ctx.seed_genomes(space, opts)
        rows = []
        for name, s in runs.items():
            plan = PruningPlan.load(Path(s["options"]["out"]) / "plan.json")
            rows.append({"plan": f"searched ({name} operator)", "fitness_kl": s["best"]["fitness"], "params": plan.params(),
                         "ratio": plan.ratio(), "bpb": evaluate_plan(ctx, plan, sets, job.seq_len),
                         "search_cost": s["cost"], "operator_stats": s["operator_stats"]})
            print(rows[-1]["plan"], rows[-1]["bpb"], flush=True)
        for name, g in seeds.items():
            plan = ctx.plan(space, g, {"method": f"seed-{name}"})
            rows.append({"plan": name, "fitness_kl": ctx.fitness.evaluate(g, len(ctx.blocks)), "params": plan.params(),
                         "ratio": plan.ratio(), "bpb": evaluate_plan(ctx, plan, sets, job.seq_len)})
            print(name, rows[-1]["bpb"], flush=True)
        for r in rows:
            r["bpb_x_dense"] = {k: v / dense[k] for k, v in r["bpb"].items()}
        result["ratios"][str(ratio)] = {"budget_max_params": space.max_params, "rows": rows}
        if "llm" in runs:
            for name, s in runs.items():
                result["operators"][name] = {"ratio": ratio, "best_fitness": s["best"]["fitness"],
                                             "wall_s": s["cost"]["wall_s"], "generations_s": s["cost"]["generations_s"],
                                             "candidates_evaluated": s["cost"]["candidates_evaluated"],
                                             "tokens": s["cost"]["tokens"], "history_best": [h["best"] for h in s["history"]],
                                             "operator_stats": s["operator_stats"]}
            plot_convergence(runs["llm"]["history"], Path(runs["llm"]["options"]["out"]) / "candidates.jsonl",
                             Path(a.out).with_name("search_convergence.png"),
                             f"ratio {ratio}; points: the LLM operator's children",
                             others={"numeric operator": runs["numeric"]["history"]}, label="LLM operator")
        write_json_atomic(Path(a.out), result)  # after each ratio: a cut run keeps what finished
    result["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    write_json_atomic(Path(a.out), result)
    for ratio, d in result["ratios"].items():
        print(f"\nratio {ratio}")
        for r in d["rows"]:
            x = r["bpb_x_dense"]
            print(f"| {r['plan']} | {r['ratio']:.1%} | {r['fitness_kl']:.4f} | " + " | ".join(f"{r['bpb'][k]:.4f} ({x[k]:.3f}x)" for k in r["bpb"]) + " |")


if __name__ == "__main__":
    main()
