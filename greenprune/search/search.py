"""Evolutionary search for layer-wise pruning rates (EvoPress-style fitness, Self-Pruner-style LLM operators).

A candidate is a genome (per-layer FFN width, KV groups, or the layer removed) within the exact parameter
budget, the vocabulary chosen as the unified planner chooses it and then held fixed. Fitness is
KL(dense || candidate) on calibration tokens (or bits per byte), computed on one masked working copy of the
model (fitness.py). Each generation: the operator proposes children; all are scored on a few tokens (stage 1),
the better part is re-scored on the full token budget (stage 2), and the population keeps the best
(mu + lambda). Every generation is checkpointed atomically with the RNG state; --resume continues from it.

Outputs in OUT: plan.json (applied by `greenprune prune --plan OUT/plan.json`), plan.png (per-layer rates),
convergence.png, candidates.jsonl (every evaluation: fitness, tokens, seconds), llm_log.jsonl (LLM operator),
search_summary.json, checkpoint.json.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from tqdm.auto import tqdm

from ..data import corpus
from ..errors import GreenpruneError
from ..families import shape_of
from ..modelio.load import load_model
from ..modelio.save import write_json_atomic
from ..planning.kl_tables import LayerwiseKL, measure_kl_tables
from ..planning.options import PlanOptions
from ..planning.plan import PruningPlan
from ..planning.planner import make_plan
from ..planning.plots import plot_plan
from ..planning.widths import bias_reserve
from ..pruning.vocab import model_token_ids, vocabulary_for
from ..runinfo import machine_info
from ..scoring.scorers import score_model
from .fitness import FITNESS, MaskedFitness
from .llm_client import make_backend
from .operators import (LLMOperator, NumericOperator, mutate, outlier_ratios, seed_global_threshold, seed_owl,
                        seed_uniform)
from .plots import plot_convergence
from .space import Genome, SearchSpace, layer_widths_in_units

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "greenprune.search-checkpoint/1"
OUTPUT_FILES = ("checkpoint.json", "candidates.jsonl", "llm_log.jsonl", "plan.json", "plan.png", "convergence.png",
                "search_summary.json")
SEEDS = ("uniform", "global", "owl", "dp")


# Plans found by search are per-layer by construction, so the search is meant for budgets where per-layer rates
# differ most from uniform ones: its default budget is 30% (measured: README, searched per-layer rates).
SEARCH_PLAN = PlanOptions(ratio=0.30)
# fingerprint / summary keys of the plan options (flat, as checkpoints and search_summary.json have them)
_PLAN_KEYS = ("ratio", "align", "max_ffn_prune", "kv", "drop_layers")


@dataclass(frozen=True)
class SearchOptions:
    model: Optional[str] = None
    data: str = "stdlib"
    plan: PlanOptions = SEARCH_PLAN  # budget and constraints of every candidate
    generations: int = 10
    population: int = 12
    children: int = 0  # per generation; 0: as many as the population
    operator: str = "numeric"  # numeric | llm
    llm: str = "self"  # self | http(s)://host:port | local model path / hub id
    llm_timeout: float = 120.0
    llm_max_tokens: int = 192  # reply tokens per call (the reply asks for all of a generation's children)
    seed: int = 0
    fitness: str = "kl"  # kl | bpb
    fitness_tokens: int = 512  # stage 2
    stage1_tokens: int = 128
    survive: float = 0.5  # share of a generation's children re-scored on all fitness tokens
    seq_len: int = 128
    # activation statistics for the channel scores: fewer than prune's 16,384, since the search's own fitness
    # decides the widths (the README's search table was measured with 2,048)
    calib_tokens: int = 2048
    scorer: str = "auto"
    vocab: bool = True
    vocab_extra: int = 2048
    seeds: tuple[str, ...] = SEEDS
    out: str = "out/search"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    @property
    def ratio(self) -> float:
        return self.plan.ratio

    def validate(self) -> None:
        self.plan.validate()
        if self.operator not in ("numeric", "llm"):
            raise GreenpruneError(f"--operator must be numeric or llm, got '{self.operator}'")
        if self.fitness not in FITNESS:
            raise GreenpruneError(f"--fitness must be one of {', '.join(FITNESS)}")
        if self.generations < 0 or self.population < 2 or self.children < 0:
            raise GreenpruneError("--generations must be >= 0 and --population >= 2")
        if self.seq_len < 2 or self.fitness_tokens < self.seq_len or self.stage1_tokens < self.seq_len:
            raise GreenpruneError(f"--fitness-tokens and --stage1-tokens must be >= --seq-len ({self.seq_len})")
        if not 0 < self.survive <= 1:
            raise GreenpruneError("--survive must be in (0, 1]")
        bad = [s for s in self.seeds if s not in SEEDS]
        if bad:
            raise GreenpruneError(f"unknown seed(s) {bad}; choose from {', '.join(SEEDS)}")

    def flat(self) -> dict:
        """The options as one flat dict (the plan options' search fields beside the others), as
        search_summary.json and checkpoints record them."""
        d = asdict(self)
        plan = d.pop("plan")
        at = list(d).index("generations")
        items = list(d.items())
        d = dict(items[:at] + [("ratio", plan["ratio"])] + items[at:])
        d.update({k: plan[k] for k in _PLAN_KEYS if k != "ratio"})
        d["seeds"] = list(self.seeds)
        return d

    def fingerprint(self) -> dict:
        """What a checkpoint must agree on to be resumed (generations may grow)."""
        d = self.flat()
        for k in ("generations", "out", "resume", "overwrite", "progress", "llm_timeout"):
            d.pop(k)
        return d


@dataclass
class Individual:
    genome: Genome
    fitness: float
    origin: str
    generation: int

    def to_json(self) -> dict:
        return {"genome": self.genome.to_json(), "fitness": self.fitness, "origin": self.origin, "generation": self.generation}

    @classmethod
    def from_json(cls, d: dict) -> "Individual":
        return cls(Genome.from_json(d["genome"]), float(d["fitness"]), str(d["origin"]), int(d["generation"]))


class SearchContext:
    """Everything a search reuses: model, data, scores, vocabulary, the masked fitness, the DP tables."""

    def __init__(self, opts: SearchOptions):
        self.model, self.tokenizer = load_model(opts.model)
        self.shape = shape_of(self.model)
        self.calib, self.held = corpus.calibration_and_heldout(opts.data)
        calib_blocks = corpus.token_blocks(self.tokenizer, self.calib, opts.seq_len, opts.calib_tokens)
        self.scores = score_model(self.model, calib_blocks, opts.scorer, progress=opts.progress)
        self.vocab_keep = None
        if opts.vocab:  # the same vocabulary as `greenprune prune` (it ranks unused tokens by the dense output mass)
            self.vocab_keep = vocabulary_for(self.tokenizer, self.shape, (d.text for d in self.calib),
                                             self.scores.token_mass, opts.plan.ratio, extra=opts.vocab_extra,
                                             keep_ids=model_token_ids(self.model))
        self.space(opts).validate()
        self.blocks = corpus.token_blocks(self.tokenizer, self.calib, opts.seq_len, opts.fitness_tokens)
        self.fitness = MaskedFitness(self.model, self.blocks, self.scores.ffn, self.scores.kv, self.vocab_keep,
                                     opts.fitness, self.tokenizer)
        self._tables: dict = {}

    def space(self, opts: SearchOptions) -> SearchSpace:
        vocab = self.shape.vocab_size if self.vocab_keep is None else len(self.vocab_keep)
        # searched plans are per-layer, so `prune --plan` applies bias compensation by default: leave room for
        # its biases, as the unified planner does
        return SearchSpace(self.shape, vocab, opts.plan, bias_reserve(self.shape, opts.plan.kv))

    def dp_genome(self, space: SearchSpace, opts: SearchOptions, rng: random.Random) -> Genome:
        """The unified planner's plan (KL tables on the fitness tokens + exact DP), repaired to a tight budget."""
        popts = replace(opts.plan, method="unified")
        key = (popts.align, popts.max_ffn_prune, popts.kv, popts.drop_layers)
        if key not in self._tables:
            kl = LayerwiseKL(self.model, self.blocks, self.vocab_keep)
            self._tables[key] = measure_kl_tables(kl, self.scores, self.shape, popts, progress=opts.progress)
        plan = make_plan(self.shape, self.scores, popts, self.vocab_keep, self._tables[key])
        return space.repair(Genome.from_plan(plan), rng)

    def seed_genomes(self, space: SearchSpace, opts: SearchOptions, names=None) -> dict[str, Genome]:
        out = {}
        for name in names or opts.seeds:
            rng = random.Random(f"{opts.seed}:{name}")  # each seed plan reproducible on its own
            try:
                if name == "uniform":
                    out[name] = seed_uniform(space, rng)
                elif name == "global":
                    out[name] = seed_global_threshold(space, self.scores.ffn, rng)
                elif name == "owl":
                    out[name] = seed_owl(space, outlier_ratios(self.model, self.scores.stats), rng)
                elif name == "dp":
                    out[name] = self.dp_genome(space, opts, rng)
            except GreenpruneError as e:
                log.warning("seed '%s' skipped: %s", name, e)
        return out

    def plan(self, space: SearchSpace, g: Genome, meta: dict) -> PruningPlan:
        return space.to_plan(g, self.scores.ffn, self.scores.kv, self.vocab_keep, meta)


def _rng_state(rng: random.Random) -> list:
    v, s, gauss = rng.getstate()
    return [v, list(s), gauss]


def _set_rng_state(rng: random.Random, st) -> None:
    rng.setstate((st[0], tuple(st[1]), st[2]))


class Search:
    def __init__(self, opts: SearchOptions, ctx: Optional[SearchContext] = None):
        opts.validate()
        self.opts = opts
        self.out = Path(opts.out)
        self.ckpt_path = self.out / "checkpoint.json"
        self._check_out()
        self._resumed = self._read_checkpoint() if opts.resume else None  # checked before the model loads
        self.ctx = ctx or SearchContext(opts)
        self.space = self.ctx.space(opts)
        self.space.validate()
        self.fit = self.ctx.fitness
        self.fit.reset()  # a context may serve several searches: each counts its own evaluations
        self.n1 = max(1, opts.stage1_tokens // opts.seq_len)
        self.n2 = len(self.ctx.blocks)
        self.n_children = opts.children or opts.population
        self.rng = random.Random(opts.seed)
        self.operator = self._operator()
        self.population: list[Individual] = []
        self.history: list[dict] = []
        self.seed_fitness: dict[str, float] = {}
        self.generation = -1  # last completed generation
        self.wall_s = 0.0
        self.candidates = 0  # distinct genomes evaluated
        self.tokens = 0
        self.cand_lines = 0
        self.llm_lines = 0

    # --- setup ------------------------------------------------------------------------------------------
    def _check_out(self) -> None:
        o = self.opts
        if o.resume:
            if not self.ckpt_path.exists():
                raise GreenpruneError(f"--resume: no checkpoint at {self.ckpt_path}")
            return
        if self.out.exists() and any((self.out / f).exists() for f in OUTPUT_FILES):
            if not o.overwrite:
                raise GreenpruneError(f"{self.out} holds a search (use --resume to continue it or --overwrite)")
            for f in OUTPUT_FILES:
                (self.out / f).unlink(missing_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)

    def _operator(self):
        if self.opts.operator == "numeric":
            return NumericOperator()
        backend = make_backend(self.opts.llm, self.ctx.model, self.ctx.tokenizer, self.opts.llm_timeout)
        return LLMOperator(backend, NumericOperator(), max_tokens=self.opts.llm_max_tokens,
                           log_path=self.out / "llm_log.jsonl")

    # --- fitness ----------------------------------------------------------------------------------------
    def _score(self, g: Genome, n_blocks: int, origin: str, stage: int, lines: list) -> float:
        before_blocks = self.fit.blocks_seen(g)
        t = time.perf_counter()
        f = self.fit.evaluate(g, n_blocks)
        dt = time.perf_counter() - t
        new_tokens = (max(self.fit.blocks_seen(g), before_blocks) - before_blocks) * self.fit.seq_len
        if before_blocks == 0 and new_tokens:
            self.candidates += 1
        self.tokens += new_tokens
        lines.append({"generation": self.generation + 1, "origin": origin, "stage": stage, "fitness": f,
                      "metric": self.opts.fitness, "tokens": min(n_blocks, self.n2) * self.fit.seq_len,
                      "new_tokens": new_tokens, "seconds": round(dt, 4), "params": self.space.params(g),
                      "ffn_units": layer_widths_in_units(self.space, g), "kv": list(g.kv), "key": g.key})
        return f

    # --- checkpoint -------------------------------------------------------------------------------------
    def _save(self) -> None:
        ck = {
            "format": CHECKPOINT_FORMAT, "fingerprint": self.opts.fingerprint(), "generation": self.generation,
            "population": [i.to_json() for i in self.population], "history": self.history,
            "seed_fitness": self.seed_fitness, "rng_state": _rng_state(self.rng),
            "fitness_cache": self.fit._cache, "counters": {"candidates": self.candidates, "tokens": self.tokens,
                                                            "wall_s": self.wall_s, "candidate_lines": self.cand_lines,
                                                            "llm_lines": self.llm_lines},
            "operator_stats": self.operator.stats(),
        }
        write_json_atomic(self.ckpt_path, ck)

    def _read_checkpoint(self) -> dict:
        """The checkpoint, parsed and checked against this run's options (before any work): a one-line error for
        one that is corrupt or claims what this run cannot have done."""
        p = self.ckpt_path
        try:
            ck = json.loads(p.read_text())
            if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"format is not {CHECKPOINT_FORMAT}")
            fp = ck["fingerprint"]
            if not isinstance(fp, dict):
                raise TypeError("fingerprint is not an object")
            if not isinstance(ck["population"], list) or not isinstance(ck["history"], list):
                raise TypeError("population and history must be lists")
            population = [Individual.from_json(d) for d in ck["population"]]
            gen, c = int(ck["generation"]), ck["counters"]
            cache = {str(k): [float(x) for x in v] for k, v in ck["fitness_cache"].items()}
            rng = random.Random()
            _set_rng_state(rng, ck["rng_state"])
            history = list(ck["history"])
            counters = (int(c["candidates"]), int(c["tokens"]), float(c["wall_s"]), int(c["candidate_lines"]),
                        int(c.get("llm_lines", 0)))
            if not population:
                raise ValueError("the population is empty")
            if len(history) != gen + 1 or gen < 0:
                raise ValueError(f"generation {gen} with {len(history)} generation(s) of history")
            if any(not math.isfinite(i.fitness) for i in population):
                raise ValueError("a fitness is not a finite number")
            if any(x < 0 for i in population for x in (*i.genome.ffn, *i.genome.kv)):
                raise ValueError("a genome has a negative width")
            if any(i.generation < 0 or i.generation > gen for i in population):
                raise ValueError("a candidate is from a generation the search has not reached")
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as e:
            raise GreenpruneError(f"checkpoint {p} is corrupt ({type(e).__name__}: {e}); delete it and start again "
                                  f"(the finished generations' candidates stay in candidates.jsonl)") from e
        mine = self.opts.fingerprint()
        diff = [k for k in mine if fp.get(k) != mine[k]]
        if diff:
            raise GreenpruneError(f"checkpoint {p} was made with other options ({', '.join(diff)}); "
                                  f"use the same options (only --generations may change) or another --out")
        return {"ck": ck, "population": population, "generation": gen, "history": history, "rng": rng,
                "cache": cache, "counters": counters}

    def _load(self) -> None:
        r = self._resumed or self._read_checkpoint()
        ck, population = r["ck"], r["population"]
        for ind in population:
            if len(ind.genome.ffn) != self.space.L or len(ind.genome.kv) != self.space.L or self.space.slack(ind.genome) < 0:
                raise GreenpruneError(f"checkpoint {self.ckpt_path} holds a candidate outside the search space")
        self.population, self.generation, self.history = population, r["generation"], r["history"]
        self.rng = r["rng"]
        self.seed_fitness = dict(ck.get("seed_fitness", {}))
        self.fit._cache.update(r["cache"])
        self.candidates, self.tokens, self.wall_s, self.cand_lines, self.llm_lines = r["counters"]
        if isinstance(self.operator, LLMOperator):
            self.operator.load_stats(ck.get("operator_stats", {}))
        self._truncate("candidates.jsonl", self.cand_lines)
        self._truncate("llm_log.jsonl", self.llm_lines)

    def _truncate(self, name: str, n: int) -> None:
        """Drop lines written after the checkpoint (an interrupted generation is run again)."""
        p = self.out / name
        if p.exists():
            lines = p.read_text().splitlines(keepends=True)
            if len(lines) != n:
                tmp = p.with_name(f".{name}.tmp-{os.getpid()}")
                tmp.write_text("".join(lines[:n]))
                os.replace(tmp, p)

    def _append(self, lines: list) -> None:
        with open(self.out / "candidates.jsonl", "a") as f:
            for ln in lines:
                f.write(json.dumps(ln) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.cand_lines += len(lines)
        p = self.out / "llm_log.jsonl"
        self.llm_lines = len(p.read_text().splitlines()) if p.exists() else 0

    # --- the loop ---------------------------------------------------------------------------------------
    def _initial(self) -> None:
        lines: list = []
        seeds = self.ctx.seed_genomes(self.space, self.opts)
        pop: dict[str, Individual] = {}
        for name, g in seeds.items():
            f = self._score(g, self.n2, f"seed-{name}", 2, lines)
            self.seed_fitness[name] = f
            pop.setdefault(g.key, Individual(g, f, f"seed-{name}", 0))
        base = list(seeds.values()) or [self.space.repair(self.space.dense(), self.rng)]
        tries = 0
        while len(pop) < self.opts.population and tries < 20 * self.opts.population:
            tries += 1
            g = self.space.repair(mutate(self.rng.choice(base), self.space, self.rng), self.rng)
            if g.key not in pop:
                pop[g.key] = Individual(g, self._score(g, self.n2, "seed-mutant", 2, lines), "seed-mutant", 0)
        self.population = sorted(pop.values(), key=lambda i: i.fitness)[: self.opts.population]
        self.generation = 0
        self._append(lines)
        self._record(lines, 0.0)

    def _record(self, lines: list, seconds: float) -> None:
        fits = [i.fitness for i in self.population]
        self.history.append({"generation": self.generation, "best": fits[0], "mean": sum(fits) / len(fits),
                             "best_origin": self.population[0].origin, "evaluations": len(lines),
                             "candidates_total": self.candidates, "tokens_total": self.tokens,
                             "seconds": round(seconds, 2)})

    def _generation(self) -> None:
        t = time.perf_counter()
        lines: list = []
        gen = self.generation + 1
        kids = self.operator.propose(self.population, self.n_children, self.space, self.rng, gen)
        known = {i.genome.key for i in self.population}
        fresh, seen = [], set()
        for g, origin in kids:
            if g.key in known or g.key in seen:
                lines.append({"generation": gen, "origin": origin, "stage": 0, "duplicate": True, "key": g.key,
                              "tokens": 0, "new_tokens": 0, "seconds": 0.0})
                continue
            seen.add(g.key)
            fresh.append((g, origin, self._score(g, self.n1, origin, 1, lines)))
        fresh.sort(key=lambda x: x[2])
        n_surv = max(1, math.ceil(self.opts.survive * len(fresh))) if fresh else 0
        survivors = [Individual(g, self._score(g, self.n2, o, 2, lines), o, gen) for g, o, _ in fresh[:n_surv]]
        self.population = sorted(self.population + survivors, key=lambda i: i.fitness)[: self.opts.population]
        self.generation = gen
        self._append(lines)
        self._record(lines, time.perf_counter() - t)

    def run(self, on_generation: Optional[Callable[[int], None]] = None) -> dict:
        if self.opts.resume:
            self._load()
        t0, wall0 = time.perf_counter(), self.wall_s
        if self.generation < 0:
            self._initial()
            self.wall_s = wall0 + time.perf_counter() - t0
            self._save()
        bar = tqdm(total=self.opts.generations, initial=min(self.generation, self.opts.generations),
                   desc=f"search ({self.opts.operator})", disable=not self.opts.progress)
        while self.generation < self.opts.generations:
            self._generation()
            self.wall_s = wall0 + time.perf_counter() - t0
            self._save()
            bar.update()
            bar.set_postfix(best=f"{self.population[0].fitness:.4f}")
            if on_generation is not None:
                on_generation(self.generation)
        bar.close()
        return self._finish()

    def _finish(self) -> dict:
        best = self.population[0]
        meta = {"method": "search", "operator": self.opts.operator, "fitness": self.opts.fitness,
                "fitness_value": best.fitness, "fitness_tokens": self.n2 * self.fit.seq_len,
                "ratio_requested": self.opts.plan.ratio, "scorer": self.ctx.scores.scorer, "seed": self.opts.seed,
                "generations": self.generation, "origin": best.origin}
        plan = self.ctx.plan(self.space, best.genome, meta)
        plan.save(self.out / "plan.json")
        plot_plan(plan, self.out / "plan.png")
        plot_convergence(self.history, self.out / "candidates.jsonl", self.out / "convergence.png",
                         f"{self.opts.operator} operator, ratio {self.opts.plan.ratio}")
        summary = {
            "options": self.opts.flat(),
            "best": {"fitness": best.fitness, "metric": self.opts.fitness, "origin": best.origin,
                     "generation": best.generation, "params": plan.params(), "ratio": plan.ratio(),
                     "ffn_widths": [lp.ffn_width for lp in plan.layers], "layers_dropped": plan.dropped_layers,
                     "vocab_size": plan.vocab_size},
            "seed_fitness": self.seed_fitness, "history": self.history,
            "cost": {"candidates_evaluated": self.candidates, "tokens": self.tokens, "wall_s": round(self.wall_s, 2),
                     "generations_s": round(sum(h["seconds"] for h in self.history), 2),  # without seeds / DP tables
                     "generations": self.generation, "population": self.opts.population,
                     "children_per_generation": self.n_children, "stage1_tokens": self.n1 * self.fit.seq_len,
                     "stage2_tokens": self.n2 * self.fit.seq_len},
            "operator_stats": self.operator.stats(), "machine": machine_info(),
        }
        write_json_atomic(self.out / "search_summary.json", summary)
        return summary


def run_search(opts: SearchOptions, ctx: Optional[SearchContext] = None,
               on_generation: Optional[Callable[[int], None]] = None) -> dict:
    return Search(opts, ctx).run(on_generation)
