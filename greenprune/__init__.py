"""greenprune: unified structured pruning (vocabulary, layers, FFN channels, KV groups) of decoder LLMs."""
from ._version import __version__
from . import _ext  # the optional CUDA extension (csrc/)
from .errors import GreenpruneError
from .families import ModelShape
from .modelio import per_layer  # noqa: F401  registers the greenprune_llama model type with the Auto classes
from .planning.plan import LayerPlan, PruningPlan, identity_plan
from .pruning.prune import prune_model

_ext.load()  # logs at debug level why the CUDA extension is absent (a pure-Python install)

__all__ = ["__version__", "GreenpruneError", "LayerPlan", "ModelShape", "PruningPlan", "identity_plan", "prune_model"]
