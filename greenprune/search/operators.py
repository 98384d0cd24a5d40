"""Search operators behind one interface, and the seed plans the search starts from.

`propose(population, n, space, rng) -> [(genome, origin)]`: n children, every one repaired into the space
(within the parameter budget, tight). `population` is sorted best first; each entry has .genome and .fitness.

- NumericOperator: tournament selection, per-layer or one-point crossover, mutations that move FFN width
  (and KV groups, and whole layers when allowed) from one layer to another; repair restores the budget.
- LLMOperator (Self-Pruner's idea): a chat model sees the population with its fitness and answers, as JSON,
  which parents to combine and where to move width. Replies are parsed, validated field by field and
  repaired to the budget; an invalid child, an invalid reply or a failed call falls back to the numeric
  operator, and is counted.

Seeds: uniform widths, one global importance threshold over all channels, OWL-like outlier-aware rates, and the
unified planner's KL-table DP plan.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import GreenpruneError
from ..families import family_for
from ..planning.global_threshold import global_threshold_widths
from .llm_client import ChatBackend, extract_json, extract_objects
from .space import Genome, SearchSpace, from_units, layer_widths_in_units

log = logging.getLogger(__name__)


# --- seeds ------------------------------------------------------------------------------------------------
def seed_uniform(space: SearchSpace, rng: random.Random) -> Genome:
    """The widest single FFN width that fits, then single layers widened one step while the budget holds."""
    kv = (space.kv_counts[0],) * space.L
    for w in space.widths:
        g = Genome((w,) * space.L, kv)
        if space.slack(g) >= 0:
            return space.repair(g, rng)
    return space.repair(Genome((space.widths[-1],) * space.L, kv), rng)


def _widths_fit(space: SearchSpace, keep_counts, rng: random.Random) -> Genome:
    ws = space.widths
    ffn = tuple(max([w for w in ws if w <= c] or [ws[-1]]) for c in keep_counts)  # round down to allowed
    return Genome(ffn, (space.kv_counts[0],) * space.L)


def seed_global_threshold(space: SearchSpace, ffn_scores, rng: random.Random) -> Genome:
    """One importance threshold over every FFN channel of every layer (planning.global_threshold): a layer
    keeps its channels above it. The lowest threshold whose plan fits the budget."""
    kv = (space.kv_counts[0],) * space.L
    ws = global_threshold_widths(ffn_scores, space.widths, lambda w: space.slack(Genome(tuple(w), kv)) >= 0)
    return space.repair(Genome(tuple(ws) if ws else (space.widths[-1],) * space.L, kv), rng)


def outlier_ratios(model, stats, m: float = 5.0) -> list[float]:
    """OWL's layerwise outlier ratio on the FFN: the share of down_proj weights whose Wanda score
    |W_ij| * ||x_j|| exceeds m times the layer's mean score."""
    fam, out = family_for(model), []
    for layer, st in zip(fam.layers(model), stats):
        s = fam.ffn_out(layer).weight.float().abs() * st.ffn.l2_norm.float()[None, :]
        out.append(float((s > m * s.mean()).float().mean()))
    return out


def seed_owl(space: SearchSpace, ratios: list[float], rng: random.Random, lam: float = 0.08) -> Genome:
    """OWL-like: layers with more outliers are pruned less, rates spread over +-lam around a common level
    found by bisection so the plan fits the budget."""
    d = np.asarray(ratios)
    spread = (d - d.mean()) / max(d.max() - d.min(), 1e-12)  # in [-1, 1]
    F = space.shape.intermediate_size
    lo, hi, best = 0.0, 1.0, None
    for _ in range(40):
        base = (lo + hi) / 2
        rates = np.clip(base - lam * spread, 0.0, 1.0)
        g = _widths_fit(space, [int(round(F * (1 - r))) for r in rates], rng)
        if space.slack(g) >= 0:
            best, hi = g, base
        else:
            lo = base
    if best is None:
        best = _widths_fit(space, [0] * space.L, rng)
    return space.repair(best, rng)


# --- operators --------------------------------------------------------------------------------------------
class Operator:
    name = "base"

    def propose(self, population, n: int, space: SearchSpace, rng: random.Random, generation: int = 0):
        raise NotImplementedError

    def stats(self) -> dict:
        return {}


def tournament(population, rng: random.Random, k: int = 2):
    picks = [rng.randrange(len(population)) for _ in range(min(k, len(population)))]
    return population[min(picks)]  # population is sorted best first


def mutate(g: Genome, space: SearchSpace, rng: random.Random) -> Genome:
    """1-3 moves of width from one kept layer to another (1-2 steps each); sometimes a layer removed or
    restored, or a KV group moved (when allowed). The caller repairs the budget."""
    for _ in range(rng.choice((1, 1, 2, 3))):
        kept = [i for i, f in enumerate(g.ffn) if f]
        r = rng.random()
        if space.drop_layers and r < 0.1:
            dropped = [i for i, f in enumerate(g.ffn) if not f]
            h = space.grow(g, rng.choice(dropped), "undrop") if dropped and rng.random() < 0.5 else \
                space.shrink(g, rng.choice(kept), "drop")
            g = h or g
            continue
        what = "kv" if space.kv and r < 0.3 else "ffn"
        if len(kept) < 2:
            break
        a, b = rng.sample(kept, 2)
        steps = rng.choice((1, 2))
        for _ in range(steps):
            g = space.shrink(g, a, what) or g
            g = space.grow(g, b, what) or g
    return g


def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
    L = len(a.ffn)
    if rng.random() < 0.5:  # per layer
        take = [rng.random() < 0.5 for _ in range(L)]
    else:  # one point
        cut = rng.randrange(1, L) if L > 1 else 0
        take = [i < cut for i in range(L)]
    return Genome(tuple(x if t else y for t, x, y in zip(take, a.ffn, b.ffn)),
                  tuple(x if t else y for t, x, y in zip(take, a.kv, b.kv)))


class NumericOperator(Operator):
    name = "numeric"

    def __init__(self, p_crossover: float = 0.5):
        self.p_crossover = p_crossover

    def child(self, population, space: SearchSpace, rng: random.Random) -> tuple[Genome, str]:
        if len(population) >= 2 and rng.random() < self.p_crossover:
            c = crossover(tournament(population, rng).genome, tournament(population, rng).genome, rng)
            if rng.random() < 0.5:
                c = mutate(c, space, rng)
            return space.repair(c, rng), "crossover"
        return space.repair(mutate(tournament(population, rng).genome, space, rng), rng), "mutation"

    def propose(self, population, n, space, rng, generation=0):
        return [self.child(population, space, rng) for _ in range(n)]


# --- LLM-driven -------------------------------------------------------------------------------------------
SYSTEM = "You help an optimiser search for a good neural-network pruning plan. Answer with one JSON object only."


def build_prompt(population, n: int, space: SearchSpace, shown: int) -> list[dict]:
    full = round(space.shape.intermediate_size / space.align)
    rows = "\n".join(f"{i}: loss {ind.fitness:.4f}, widths {layer_widths_in_units(space, ind.genome)}"
                     for i, ind in enumerate(population[:shown]))
    user = (
        f"A model has {space.L} layers. A plan gives each layer a width ({full} = full, 0 = layer removed). "
        f"All plans have the same total size: a wider layer needs another one narrower. Lower loss is better.\n"
        f"Plans so far, best first (index: loss, widths):\n{rows}\n"
        f"Propose {n} new plans. For each, pick two parent indices, a cut layer (layers before the cut come from "
        f"the first parent, the rest from the second), layers to make narrower (shrink) and layers to make wider "
        f"(grow). Reply with JSON only, like:\n"
        '{"children": [{"parents": [0, 2], "cut": ' + str(space.L // 2) + ', "shrink": [' + str(space.L - 2)
        + '], "grow": [1]}]}'
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _int_list(x, lo: int, hi: int, max_len: int) -> Optional[list[int]]:
    if not isinstance(x, list) or len(x) > max_len:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi for v in x):
        return None
    return x


def child_from_spec(spec, population, space: SearchSpace, shown: int, rng: random.Random) -> Genome:
    """One child from one reply entry; GreenpruneError (with the reason) when the entry is invalid."""
    if not isinstance(spec, dict):
        raise GreenpruneError("entry is not an object")
    parents = _int_list(spec.get("parents"), 0, shown, 2)
    if not parents:
        raise GreenpruneError(f"parents must be 1-2 indices in [0, {shown})")
    cut = spec.get("cut", space.L // 2)
    if not isinstance(cut, int) or isinstance(cut, bool) or not 0 <= cut <= space.L:
        raise GreenpruneError(f"cut must be an integer in [0, {space.L}]")
    shrink = _int_list(spec.get("shrink", []), 0, space.L, space.L)
    grow = _int_list(spec.get("grow", []), 0, space.L, space.L)
    if shrink is None or grow is None:
        raise GreenpruneError(f"shrink / grow must be lists of layer indices in [0, {space.L})")
    a = population[parents[0]].genome
    b = population[parents[-1]].genome
    g = Genome(a.ffn[:cut] + b.ffn[cut:], a.kv[:cut] + b.kv[cut:])
    for i in shrink:
        g = space.shrink(g, i) or g
    for i in grow:
        g = space.grow(g, i) or g
    if "widths" in spec:  # a whole plan in width units, also accepted
        w = _int_list(spec["widths"], 0, 10**6, space.L)
        if w is None or len(w) != space.L:
            raise GreenpruneError(f"widths must be {space.L} non-negative integers")
        g = from_units(space, w, g.kv)
    return space.repair(g, rng)


@dataclass
class LLMStats:
    calls: int = 0
    call_errors: int = 0  # endpoint unreachable / failed generation
    invalid_replies: int = 0  # no JSON object with a "children" list
    invalid_children: int = 0  # entries rejected by validation
    children_llm: int = 0
    children_fallback: int = 0
    seconds: float = 0.0
    last_errors: list = field(default_factory=list)


class LLMOperator(Operator):
    name = "llm"

    def __init__(self, backend: ChatBackend, fallback: Optional[NumericOperator] = None, shown: int = 6,
                 max_tokens: int = 192, temperature: float = 0.7, log_path=None):
        self.backend, self.fallback = backend, fallback or NumericOperator()
        self.shown, self.max_tokens, self.temperature = shown, max_tokens, temperature
        self.st = LLMStats()
        self.log_path = log_path

    def _note(self, msg: str) -> None:
        log.warning("LLM operator: %s", msg)
        self.st.last_errors = (self.st.last_errors + [msg])[-5:]

    def propose(self, population, n, space, rng, generation=0):
        shown = min(self.shown, len(population))
        seed = rng.randrange(2**31)
        out: list[tuple[Genome, str]] = []
        reply, t = "", time.perf_counter()
        self.st.calls += 1
        try:
            reply = self.backend.chat(build_prompt(population, n, space, shown), self.max_tokens, self.temperature, seed)
        except GreenpruneError as e:
            self.st.call_errors += 1
            self._note(f"call failed, numeric fallback for this generation: {e}")
        self.st.seconds += time.perf_counter() - t
        obj = extract_json(reply) if reply else None
        entries = obj.get("children") if isinstance(obj, dict) else None
        if not isinstance(entries, list) and reply:  # cut off or malformed: take the complete entries there are
            entries = extract_objects(reply, "parents") or None
        if reply and not isinstance(entries, list):
            self.st.invalid_replies += 1
            self._note(f"reply has no JSON children list: {reply[:120]!r}")
            entries = []
        reasons = []
        for spec in (entries or [])[:n]:
            try:
                out.append((child_from_spec(spec, population, space, shown, rng), "llm"))
                self.st.children_llm += 1
            except GreenpruneError as e:
                self.st.invalid_children += 1
                reasons.append(str(e))
        if reasons:
            self._note(f"{len(reasons)} invalid children (e.g. {reasons[0]})")
        while len(out) < n:
            g, origin = self.fallback.child(population, space, rng)
            out.append((g, f"llm-fallback-{origin}"))
            self.st.children_fallback += 1
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"generation": generation, "seconds": round(time.perf_counter() - t, 3),
                                    "reply": reply[:2000], "valid_children": sum(1 for _, o in out if o == "llm"),
                                    "invalid": reasons}) + "\n")
        return out

    def stats(self) -> dict:
        d = dict(self.st.__dict__)
        d["seconds"] = round(d["seconds"], 2)
        return d

    def load_stats(self, d: dict) -> None:
        for k, v in d.items():
            if hasattr(self.st, k):
                setattr(self.st, k, v)
