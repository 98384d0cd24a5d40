"""Shared fixtures: tiny random Llama models built in the test, and the real default model's tokenizer."""
import os

# Triton kernels run under the interpreter on this CPU-only machine; must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch


def tiny_config(vocab_size=97, layers=3, hidden=48, ffn=40, heads=6, kv_heads=2, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                       tie_word_embeddings=kw.pop("tie_word_embeddings", True), bos_token_id=1, eos_token_id=2, **kw)


def tiny_model(seed=0, **kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(**kw)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def default_dir():
    """The embedded default model (converted from GGUF once, then cached as safetensors)."""
    from greenprune.models import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def real_tokenizer(default_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_dir)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, real_tokenizer):
    """A tiny random Llama (real SmolLM2 tokenizer, GQA 6 heads / 2 KV heads) saved as a HF directory."""
    d = tmp_path_factory.mktemp("tiny") / "model"
    m = tiny_model(vocab_size=len(real_tokenizer), layers=4, hidden=64, ffn=96, heads=4, kv_heads=2)
    m.save_pretrained(d)
    real_tokenizer.save_pretrained(d)
    return d
