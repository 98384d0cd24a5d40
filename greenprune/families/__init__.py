"""Model families behind one seam (base.Family): where each keeps its parts and how each part is sliced.

Every module of this package except base, moe and shape defines one family as a module-level `FAMILY`; they are
found here by listing the package, so adding a family is one new file (plus its tests).
"""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import GreenpruneError
from .base import LAYER_KEY, PER_LAYER_PREFIX, Family, layer_of
from .shape import ModelShape

_NOT_FAMILIES = {"base", "moe", "shape"}  # moe: the shared base of the MoE families


def _discover() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in _NOT_FAMILIES:
            continue
        fam = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if not isinstance(fam, Family):
            raise ImportError(f"greenprune.families.{info.name} defines no FAMILY")
        # each model type's per-layer save (greenprune_<type>, modelio/modeling_greenprune.py) is the same family
        for mt in (*fam.model_types, *(PER_LAYER_PREFIX + t for t in fam.model_types)):
            if mt in found:
                raise ImportError(f"model type {mt!r} claimed by families {found[mt].name} and {fam.name}")
            found[mt] = fam
    return found


FAMILIES: dict[str, Family] = _discover()  # model_type -> family
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def supported_summary() -> str:
    fams = {f.name: f for f in FAMILIES.values()}
    return "; ".join(f"{f.description or f.name} ({', '.join(f.model_types)})" for f in fams.values())


def family_for(config_or_model) -> Family:
    """The family of a config, a model (its config) or a model_type string; a one-line error if unsupported."""
    config = getattr(config_or_model, "config", config_or_model)
    mt = config if isinstance(config, str) else getattr(config, "model_type", None)
    fam = FAMILIES.get(mt)
    if fam is None:
        raise GreenpruneError(f"unsupported architecture '{mt}'; supported: {supported_summary()}")
    return fam


def check_architecture(config, where: str) -> Family:
    """The config's family, after the family's own checks; a one-line error naming where it came from."""
    try:
        fam = family_for(config)
    except GreenpruneError as e:
        raise GreenpruneError(f"{where}: {e}") from None
    fam.check(config, where)
    return fam


def shape_of(config_or_model) -> ModelShape:
    """The ModelShape of a config or model, as its family derives it."""
    config = getattr(config_or_model, "config", config_or_model)
    return family_for(config).shape(config)


__all__ = ["FAMILIES", "LAYER_KEY", "PER_LAYER_PREFIX", "SUPPORTED_MODEL_TYPES", "Family", "ModelShape", "check_architecture",
           "family_for", "layer_of", "shape_of", "supported_summary"]
