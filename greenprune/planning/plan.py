"""The pruning plan: a plain, JSON-serialisable description of what survives, and the parameter arithmetic.

A plan names the decoder layers kept, for each the FFN channels and KV groups kept (explicit indices, so a
plan reproduces exactly), and the vocabulary kept (original token ids). Plans written by hand or by the search
may give only widths (`ffn_width`, `kv_heads`); `resolve_plan` fills in the indices from importance scores.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import torch

from ..errors import GreenpruneError
from ..families import ModelShape
from ..modelio.save import write_json_atomic

PLAN_FORMAT = "greenprune.plan/1"


@dataclass(frozen=True)
class LayerPlan:
    index: int  # the layer's index in the dense model
    ffn_width: int
    kv_heads: int
    ffn_keep: Optional[tuple[int, ...]] = None  # kept intermediate channels (sorted); None = resolve by scores
    kv_keep: Optional[tuple[int, ...]] = None  # kept KV heads (each with its query heads)
    # mixture-of-experts layers (shape.num_experts > 0; families/moe.py): ffn_width is each kept expert's width
    experts: int = 0  # experts kept (0 in dense models)
    experts_keep: Optional[tuple[int, ...]] = None  # kept original expert ids (sorted); None = resolve by scores
    expert_ffn_keep: Optional[tuple[tuple[int, ...], ...]] = None  # per kept expert (in that order): its channels

    @property
    def widths(self) -> tuple:
        """What the parameter arithmetic needs: (ffn_width, kv_heads), and experts for MoE layers."""
        return (self.ffn_width, self.kv_heads, self.experts) if self.experts else (self.ffn_width, self.kv_heads)


@dataclass(frozen=True)
class PruningPlan:
    shape: ModelShape
    layers: tuple[LayerPlan, ...]
    vocab_keep: Optional[tuple[int, ...]] = None  # sorted original ids; None = vocabulary untouched
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def vocab_size(self) -> int:
        return self.shape.vocab_size if self.vocab_keep is None else len(self.vocab_keep)

    @property
    def dropped_layers(self) -> list[int]:
        kept = {lp.index for lp in self.layers}
        return [i for i in range(self.shape.num_hidden_layers) if i not in kept]

    @property
    def is_uniform(self) -> bool:
        return len({lp.widths for lp in self.layers}) <= 1

    @property
    def is_resolved(self) -> bool:
        if self.shape.num_experts:
            return all(lp.experts_keep is not None and lp.expert_ffn_keep is not None and lp.kv_keep is not None
                       for lp in self.layers)
        return all(lp.ffn_keep is not None and lp.kv_keep is not None for lp in self.layers)

    def params(self) -> int:
        return self.shape.total_params([lp.widths for lp in self.layers], self.vocab_size)

    def ratio(self) -> float:
        return 1.0 - self.params() / self.shape.dense_params

    def vocab_share_of_removed(self) -> float:
        """The share of the removed parameters that are vocabulary rows (embedding, and the LM head when untied)."""
        removed = self.shape.dense_params - self.params()
        rows = self.shape.vocab_params(self.shape.vocab_size) - self.shape.vocab_params(self.vocab_size)
        return round(rows / removed, 4) if removed > 0 else 0.0

    # --- JSON ---
    def to_dict(self) -> dict:
        layers = []
        for lp in self.layers:
            d = {"index": lp.index, "ffn_width": lp.ffn_width, "kv_heads": lp.kv_heads}
            if lp.ffn_keep is not None:
                d["ffn_keep"] = list(lp.ffn_keep)
            if lp.kv_keep is not None:
                d["kv_keep"] = list(lp.kv_keep)
            if lp.experts:
                d["experts"] = lp.experts
            if lp.experts_keep is not None:
                d["experts_keep"] = list(lp.experts_keep)
            if lp.expert_ffn_keep is not None:
                d["expert_ffn_keep"] = [list(k) for k in lp.expert_ffn_keep]
            layers.append(d)
        return {
            "format": PLAN_FORMAT,
            "shape": asdict(self.shape),
            "summary": {
                "params_dense": self.shape.dense_params,
                "params_pruned": self.params(),
                "ratio": round(self.ratio(), 6),
                "layers_dropped": self.dropped_layers,
                "ffn_widths": [lp.ffn_width for lp in self.layers],
                "kv_heads": [lp.kv_heads for lp in self.layers],
                **({"experts": [lp.experts for lp in self.layers]} if self.shape.num_experts else {}),
                "vocab_size": self.vocab_size,
                "vocab_share_of_removed": self.vocab_share_of_removed(),
            },
            "layers": layers,
            "vocab_keep": None if self.vocab_keep is None else list(self.vocab_keep),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PruningPlan":
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise GreenpruneError(f"not a greenprune plan (expected \"format\": \"{PLAN_FORMAT}\")")
        try:
            if not isinstance(d.get("shape"), dict):
                raise TypeError("shape must be an object")
            shape = _shape(d["shape"])
            if not isinstance(d.get("layers"), list):
                raise TypeError("layers must be a list")
            layers = []
            for n, x in enumerate(d["layers"]):
                if not isinstance(x, dict):
                    raise TypeError(f"layers[{n}] must be an object")
                layers.append(LayerPlan(
                    index=_int(x["index"], f"layers[{n}].index"),
                    ffn_width=_int(x["ffn_width"], f"layers[{n}].ffn_width"),
                    kv_heads=_int(x["kv_heads"], f"layers[{n}].kv_heads"),
                    ffn_keep=_ids(x.get("ffn_keep"), f"layers[{n}].ffn_keep"),
                    kv_keep=_ids(x.get("kv_keep"), f"layers[{n}].kv_keep"),
                    experts=_int(x.get("experts", 0), f"layers[{n}].experts"),
                    experts_keep=_ids(x.get("experts_keep"), f"layers[{n}].experts_keep"),
                    expert_ffn_keep=_nested_ids(x.get("expert_ffn_keep"), f"layers[{n}].expert_ffn_keep")))
            meta = d.get("meta") or {}
            if not isinstance(meta, dict):
                raise TypeError("meta must be an object")
            plan = cls(shape, tuple(layers), _ids(d.get("vocab_keep"), "vocab_keep"), dict(meta))
        except (KeyError, TypeError, ValueError) as e:
            raise GreenpruneError(f"malformed plan: {type(e).__name__}: {e}") from e
        plan.validate()
        return plan

    def save(self, path: Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load_for(cls, path: Path, shape: ModelShape, loaded: Optional["PruningPlan"] = None) -> "PruningPlan":
        """The plan file at `path` (or `loaded`, read from it before), refused unless made for `shape`."""
        plan = loaded or cls.load(Path(path))
        if plan.shape != shape:
            raise GreenpruneError(f"plan {path} was made for another model shape ({plan.shape})")
        return plan

    @classmethod
    def load(cls, path: Path) -> "PruningPlan":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise GreenpruneError(f"plan file not found: {path}") from e
        except IsADirectoryError as e:
            raise GreenpruneError(f"plan file {path} is a directory (give its plan.json)") from e
        except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than any plan has
            raise GreenpruneError(f"plan file {path} is not valid JSON ({type(e).__name__}: "
                                  f"{str(e)[:100] or 'nested too deeply'})") from e
        try:
            return cls.from_dict(d)
        except GreenpruneError as e:
            raise GreenpruneError(f"plan file {path}: {e}") from e

    def validate(self) -> None:
        s = self.shape
        if not self.layers:
            raise GreenpruneError("plan keeps no decoder layer")
        idx = [lp.index for lp in self.layers]
        if idx != sorted(set(idx)) or idx[0] < 0 or idx[-1] >= s.num_hidden_layers:
            raise GreenpruneError(f"plan layer indices must be increasing, unique, in [0, {s.num_hidden_layers})")
        for lp in self.layers:
            if not 1 <= lp.ffn_width <= s.intermediate_size:
                raise GreenpruneError(f"layer {lp.index}: ffn_width {lp.ffn_width} not in [1, {s.intermediate_size}]")
            if not 1 <= lp.kv_heads <= s.num_key_value_heads:
                raise GreenpruneError(f"layer {lp.index}: kv_heads {lp.kv_heads} not in [1, {s.num_key_value_heads}]")
            for keep, n, width, what in ((lp.ffn_keep, s.intermediate_size, lp.ffn_width, "ffn_keep"),
                                         (lp.kv_keep, s.num_key_value_heads, lp.kv_heads, "kv_keep")):
                if keep is not None and (len(keep) != width or list(keep) != sorted(set(keep))
                                         or keep[0] < 0 or keep[-1] >= n):
                    raise GreenpruneError(f"layer {lp.index}: {what} must be {width} sorted unique ids in [0, {n})")
            _validate_experts(s, lp)
        if self.vocab_keep is not None:
            v = self.vocab_keep
            if not v or list(v) != sorted(set(v)) or v[0] < 0 or v[-1] >= s.vocab_size:
                raise GreenpruneError(f"vocab_keep must be sorted unique ids in [0, {s.vocab_size})")


def _sorted_ids(keep, n: int) -> bool:
    return list(keep) == sorted(set(keep)) and (not keep or (keep[0] >= 0 and keep[-1] < n))


def _validate_experts(s: ModelShape, lp: LayerPlan) -> None:
    """A MoE layer's plan: at least top-k experts kept (the router still picks num_experts_per_tok of them),
    each kept expert with ffn_width channels of its own; a dense model's layers name no experts."""
    if not s.num_experts:
        if lp.experts or lp.experts_keep is not None or lp.expert_ffn_keep is not None:
            raise GreenpruneError(f"layer {lp.index}: the plan names experts but the model has none")
        return
    if lp.experts < 1:
        raise GreenpruneError(f"layer {lp.index}: the plan removes every expert of a mixture-of-experts layer "
                              f"(experts {lp.experts} of {s.num_experts}); keep at least {s.experts_per_tok}")
    if lp.experts > s.num_experts:
        raise GreenpruneError(f"layer {lp.index}: experts {lp.experts} is more than the model's {s.num_experts}")
    if lp.experts < s.experts_per_tok:
        raise GreenpruneError(f"layer {lp.index}: keeps {lp.experts} experts but the router picks top_k = "
                              f"{s.experts_per_tok} per token (num_experts_per_tok); keep at least {s.experts_per_tok}")
    if lp.experts_keep is not None and (len(lp.experts_keep) != lp.experts or not _sorted_ids(lp.experts_keep, s.num_experts)):
        raise GreenpruneError(f"layer {lp.index}: experts_keep must be {lp.experts} sorted unique ids in [0, {s.num_experts})")
    if lp.expert_ffn_keep is not None:
        if len(lp.expert_ffn_keep) != lp.experts or any(
                len(k) != lp.ffn_width or not _sorted_ids(k, s.intermediate_size) for k in lp.expert_ffn_keep):
            raise GreenpruneError(f"layer {lp.index}: expert_ffn_keep must list, for each of its {lp.experts} kept "
                                  f"experts, {lp.ffn_width} sorted unique channel ids in [0, {s.intermediate_size})")


def _nested_ids(x, what: str) -> Optional[tuple[tuple[int, ...], ...]]:
    """None or a list of lists of integers."""
    if x is None:
        return None
    if not isinstance(x, list):
        raise TypeError(f"{what} must be a list of lists of integers, got {type(x).__name__}")
    return tuple(_ids(v, f"{what}[{i}]") for i, v in enumerate(x))


def _int(x, what: str) -> int:
    """A JSON integer (not a float such as 3.0 or Infinity, not a bool, not a string)."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{what} must be an integer, got {json.dumps(x)[:40]}")
    return x


def _shape(d: dict) -> ModelShape:
    kinds = {f.name: str(f.type) for f in fields(ModelShape)}
    for k, v in d.items():
        if k not in kinds:
            raise TypeError(f"shape has an unknown field {k!r}")
        if kinds[k] == "bool" and not isinstance(v, bool):
            raise TypeError(f"shape.{k} must be true or false, got {json.dumps(v)[:40]}")
        if kinds[k] == "int":
            _int(v, f"shape.{k}")
    return ModelShape(**d)


def _ids(x, what: str) -> Optional[tuple[int, ...]]:
    """None or a flat list of integers."""
    if x is None:
        return None
    if not isinstance(x, list):
        raise TypeError(f"{what} must be a list of integers, got {type(x).__name__}")
    return tuple(_int(v, f"{what}[{i}]") for i, v in enumerate(x))


def identity_plan(shape: ModelShape) -> PruningPlan:
    """A plan that removes nothing (its pruned model reproduces the dense logits exactly)."""
    e, f = shape.num_experts, tuple(range(shape.intermediate_size))
    moe = dict(experts=e, experts_keep=tuple(range(e)), expert_ffn_keep=(f,) * e) if e else {}
    layers = tuple(
        LayerPlan(i, shape.intermediate_size, shape.num_key_value_heads,
                  f, tuple(range(shape.num_key_value_heads)), **moe)
        for i in range(shape.num_hidden_layers)
    )
    return PruningPlan(shape, layers, None, {"method": "identity"})


def keep_top(scores, n: int) -> tuple[int, ...]:
    """The n highest-scoring indices, sorted."""
    return tuple(sorted(torch.as_tensor(scores).topk(n).indices.tolist()))


def resolve_plan(plan: PruningPlan, ffn_scores, kv_scores) -> PruningPlan:
    """Fill missing channel / KV-group indices with the highest-scoring ones (scores per dense layer index)."""
    layers = []
    for lp in plan.layers:
        fk, kk = lp.ffn_keep, lp.kv_keep
        if fk is None:
            fk = keep_top(ffn_scores[lp.index], lp.ffn_width)
        if kk is None:
            kk = keep_top(kv_scores[lp.index], lp.kv_heads)
        layers.append(replace(lp, ffn_keep=fk, kv_keep=kk))
    return replace(plan, layers=tuple(layers))
