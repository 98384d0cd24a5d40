"""Llama (Llama 2/3, CodeLlama, SmolLM) the base layout as it is."""
from .base import Family


class LlamaFamily(Family):
    name = "llama"
    model_types = ("llama",)
    description = "Llama 2/3, CodeLlama, SmolLM"


FAMILY = LlamaFamily()
