"""Llama (Llama 2/3, CodeLlama, SmolLM) and greenprune's own per-layer Llama layout: the base layout as it is."""
from .base import Family


class LlamaFamily(Family):
    name = "llama"
    model_types = ("llama", "greenprune_llama")
    description = "Llama 2/3, CodeLlama, SmolLM"


FAMILY = LlamaFamily()
