"""The space the evolutionary search moves in: per-layer FFN width, KV groups, or the layer removed, under an
exact parameter budget (plan.ModelShape arithmetic) with the vocabulary held fixed.

A genome is a pair of tuples, one entry per dense layer: `ffn[i]` is the FFN width of layer i (0: the layer is
removed) and `kv[i]` its KV-group count. `repair` brings any genome into the space: widths snapped to the
allowed set, then narrowed until the budget holds, then widened while it still holds (a tight budget: the search
compares plans of the same size, not plans that waste parameters).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import GreenpruneError
from ..families import ModelShape
from ..planning.options import PlanOptions
from ..planning.plan import LayerPlan, PruningPlan, keep_top


@dataclass(frozen=True)
class Genome:
    ffn: tuple[int, ...]  # per dense layer: FFN width, 0 = layer removed
    kv: tuple[int, ...]  # per dense layer: KV groups kept (ignored where ffn is 0)

    @property
    def key(self) -> str:
        return ",".join(f"{f}/{k}" if f else "x" for f, k in zip(self.ffn, self.kv))

    def to_json(self) -> dict:
        return {"ffn": list(self.ffn), "kv": list(self.kv)}

    @classmethod
    def from_json(cls, d: dict) -> "Genome":
        return cls(tuple(int(x) for x in d["ffn"]), tuple(int(x) for x in d["kv"]))

    @classmethod
    def from_plan(cls, plan: PruningPlan) -> "Genome":
        """The genome of a plan: removed layers get width 0 (and the dense KV-group count)."""
        L, G = plan.shape.num_hidden_layers, plan.shape.num_key_value_heads
        ffn, kv = [0] * L, [G] * L
        for lp in plan.layers:
            ffn[lp.index], kv[lp.index] = lp.ffn_width, lp.kv_heads
        return cls(tuple(ffn), tuple(kv))


@dataclass(frozen=True)
class SearchSpace:
    shape: ModelShape
    vocab: int  # vocabulary size held fixed during the search
    plan: PlanOptions  # budget (ratio) and constraints: align, max_ffn_prune, kv, drop_layers
    reserve: int = 0  # parameters left free for what prune adds after the plan (planning.widths.bias_reserve)

    @property
    def L(self) -> int:
        return self.shape.num_hidden_layers

    @property
    def ratio(self) -> float:
        return self.plan.ratio

    @property
    def align(self) -> int:
        return self.plan.align

    @property
    def kv(self) -> bool:
        return self.plan.kv

    @property
    def drop_layers(self) -> bool:
        return self.plan.drop_layers

    @property
    def widths(self) -> list[int]:
        """Allowed FFN widths, widest first (planning.widths.ffn_widths)."""
        return self.plan.widths(self.shape)

    @property
    def kv_counts(self) -> list[int]:
        return self.plan.kv_counts(self.shape)

    @property
    def max_params(self) -> int:
        """The most parameters a candidate may keep: the rule of planner.make_plan, with the same reserve."""
        return self.plan.max_params(self.shape, self.reserve)

    def params(self, g: Genome) -> int:
        kept = [(f, k) for f, k in zip(g.ffn, g.kv) if f]
        return self.shape.total_params(kept, self.vocab)

    def slack(self, g: Genome) -> int:
        """Parameters below the budget (>= 0: within budget)."""
        return self.max_params - self.params(g)

    def dense(self) -> Genome:
        return Genome((self.shape.intermediate_size,) * self.L, (self.shape.num_key_value_heads,) * self.L)

    def validate(self) -> None:
        self.plan.validate(self.shape)
        w, k = self.widths[-1], self.kv_counts[-1]
        n_keep = 1 if self.drop_layers else self.L
        smallest = self.shape.total_params([(w, k)] * n_keep, self.vocab)
        if smallest > self.max_params:
            raise GreenpruneError(
                f"--ratio {self.ratio} is unreachable: the smallest plan in the search space keeps {smallest:,} "
                f"parameters, the budget allows {self.max_params:,} (vocabulary {self.vocab:,}, at most "
                f"{self.plan.max_ffn_prune:.0%} of a layer's FFN, layer removal {'on' if self.drop_layers else 'off'})"
            )

    # --- moves ------------------------------------------------------------------------------------------
    def snap(self, g: Genome) -> Genome:
        """Each width to the nearest allowed one (0 stays 0 if layers may be removed), KV counts clamped;
        at least one layer kept."""
        ws, ks = self.widths, self.kv_counts
        ffn = []
        for f in g.ffn:
            if f <= 0 and self.drop_layers:
                ffn.append(0)
            else:
                ffn.append(min(ws, key=lambda w: (abs(w - f), -w)))
        kv = [min(max(int(k), ks[-1]), ks[0]) for k in g.kv]
        if not any(ffn):
            ffn[0] = ws[-1]
        return Genome(tuple(ffn), tuple(kv))

    def shrink(self, g: Genome, i: int, what: str = "ffn") -> Optional[Genome]:
        """One step narrower at layer i (None: cannot)."""
        ffn, kv = list(g.ffn), list(g.kv)
        if not ffn[i]:
            return None
        if what == "ffn":
            ws = self.widths
            j = ws.index(ffn[i])
            if j + 1 >= len(ws):
                return None
            ffn[i] = ws[j + 1]
        elif what == "kv":
            if kv[i] <= self.kv_counts[-1]:
                return None
            kv[i] -= 1
        elif what == "drop":
            if not self.drop_layers or sum(1 for f in ffn if f) <= 1:
                return None
            ffn[i] = 0
        return Genome(tuple(ffn), tuple(kv))

    def grow(self, g: Genome, i: int, what: str = "ffn") -> Optional[Genome]:
        """One step wider at layer i (a removed layer comes back at the narrowest width; None: cannot)."""
        ffn, kv = list(g.ffn), list(g.kv)
        ws = self.widths
        if what == "ffn":
            if not ffn[i]:
                return None
            j = ws.index(ffn[i])
            if j == 0:
                return None
            ffn[i] = ws[j - 1]
        elif what == "kv":
            if not ffn[i] or kv[i] >= self.kv_counts[0]:
                return None
            kv[i] += 1
        elif what == "undrop":
            if ffn[i]:
                return None
            ffn[i], kv[i] = ws[-1], self.kv_counts[-1]
        return Genome(tuple(ffn), tuple(kv))

    def repair(self, g: Genome, rng: random.Random) -> Genome:
        """The genome brought into the space: snapped, then narrowed at random layers until the budget holds
        (removing a layer only when nothing can be narrowed), then widened at random layers while it still holds."""
        g = self.snap(g)
        kinds = ["ffn", "kv"] if self.kv else ["ffn"]
        while self.slack(g) < 0:
            moves = [(i, w) for i in range(self.L) for w in kinds if self.shrink(g, i, w) is not None]
            if not moves:
                moves = [(i, "drop") for i in range(self.L) if self.shrink(g, i, "drop") is not None]
            if not moves:
                raise GreenpruneError("cannot bring the candidate within the parameter budget")
            i, w = rng.choice(moves)
            g = self.shrink(g, i, w)
        while True:
            moves = []
            for i in range(self.L):
                for w in kinds:
                    h = self.grow(g, i, w)
                    if h is not None and self.slack(h) >= 0:
                        moves.append(h)
            if not moves:
                return g
            g = rng.choice(moves)

    # --- to and from plans ------------------------------------------------------------------------------
    def to_plan(self, g: Genome, ffn_scores, kv_scores, vocab_keep, meta: dict) -> PruningPlan:
        layers = tuple(
            LayerPlan(i, f, k, keep_top(ffn_scores[i], f), keep_top(kv_scores[i], k))
            for i, (f, k) in enumerate(zip(g.ffn, g.kv)) if f
        )
        plan = PruningPlan(self.shape, layers, None if vocab_keep is None else tuple(vocab_keep), meta)
        plan.validate()
        if plan.params() > self.max_params:
            raise GreenpruneError(f"internal: plan over budget ({plan.params()} > {self.max_params})")
        return plan

    def describe(self, g: Genome) -> str:
        return f"{self.params(g):,} params ({1 - self.params(g) / self.shape.dense_params:.1%} removed)"


def layer_widths_in_units(space: SearchSpace, g: Genome) -> list[int]:
    """FFN widths in units of `align` (0: layer removed): the compact form shown to a chat model."""
    return [round(f / space.align) for f in g.ffn]


def from_units(space: SearchSpace, units: Sequence[int], kv: Sequence[int]) -> Genome:
    return Genome(tuple(int(u) * space.align for u in units), tuple(kv))
