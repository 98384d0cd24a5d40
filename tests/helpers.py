"""Test helpers: tiny random Llama models built in the test."""
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
