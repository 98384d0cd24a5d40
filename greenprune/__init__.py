"""greenprune: unified structured pruning (vocabulary, layers, FFN channels, KV groups) of Llama-family LLMs."""
from ._version import __version__
from . import _ext  # the optional CUDA extension (csrc/)
from . import modeling  # registers the greenprune_llama model type with the transformers Auto classes
from .errors import GreenpruneError
from .plan import LayerPlan, ModelShape, PruningPlan, identity_plan
from .prune import prune_model

_ext.load()  # logs at debug level why the CUDA extension is absent (a pure-Python install)

__all__ = ["__version__", "GreenpruneError", "LayerPlan", "ModelShape", "PruningPlan", "identity_plan", "prune_model"]
