"""End to end, dense vs pruned side by side in bf16: prefill (several lengths) and decode (batch 1, 8, 32).

1. Llama-2-70B-shaped decoder-layer slices (random weights; all 80 layers are equal, so a slice of SLICE
   layers times the layer count gives the stack): plans from greenprune.planning.shapes.target_plan at the 49B/70B and
   35B/70B parameter ratios (aligned FFN widths; variants with layers removed and with KV groups removed). The
   whole-model figure is extrapolated from the per-layer time (kept layers x pruned layer time vs 80 x dense
   layer time; embedding and head excluded) and is labelled `extrapolated`.
2. A whole Llama-2-7B-shaped model (random weights), 49B/70B-ratio plan (keep 0.7).
3. The default model (SmolLM2-135M-Instruct) with the 22% plan `greenprune prune` makes for it (committed under
   benches/plans/; real weights where the model is installed, else random: see default_model_pair).
Every figure carries its floor (greenprune.deploy.cost): prefill as a fraction of the cuBLAS bf16 ceiling (FLOPs), decode
as a fraction of the copy ceiling (weight + KV-cache bytes); `ideal_speedup` is the FLOPs or bytes ratio.
Decode steps are replayed from CUDA graphs (both sides or neither; extra_info `graph` says which, with the
reason), since a step of eager transformers can be bound by kernel launches on the CPU. `impl=fused` serves
through greenprune's ops (greenprune.serving: the fused SwiGLU FFN; whole models also take the next token by
lm_head_argmax, no logits), for the FFN-only slices and the whole models. GPU only.
"""
from pathlib import Path
from typing import Optional

import pytest
import torch

from greenprune.deploy import e2e
from greenprune.deploy.cost import ideal_speedup, step_cost
from greenprune.deploy.serving import fuse_for_serving
from greenprune.planning.shapes import LLAMA2_7B, LLAMA2_70B, target_plan

SLICE = 4
PREFILL = [512, 2048, 4096]
DECODE = [1, 8, 32]
CONTEXT = 512  # tokens already in the KV cache when decode steps are timed
RUN = dict(device="cuda", dtype=torch.bfloat16)  # where and in what the models are built (tests/benches/test_bench_e2e_bodies.py: CPU)
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


def _config(shape, layers: int):
    return e2e.slice_config(shape, layers)


def _slice(cfg, widths, impl: str = "eager"):
    return e2e.layer_slice(cfg, widths, impl, **RUN)


def _record(measure, benchmark, shape, dense_w, pruned_w, mode, batch, T, ctx, impl="eager", **extra):
    d_layers, rot, d_cfg = _slice(_config(shape, len(dense_w)), dense_w, impl)
    p_layers, _, p_cfg = _slice(_config(shape, len(pruned_w)), pruned_w, impl)
    dense_fn = e2e.slice_step(d_layers, rot, d_cfg, batch, T, ctx)
    pruned_fn = e2e.slice_step(p_layers, rot, p_cfg, batch, T, ctx)
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


def _model(shape, plan=None, impl: str = "eager"):
    return e2e.whole_model(shape, plan, impl, **RUN)


def _bench_models(measure, benchmark, dense, pruned, impl, mode, batch, T, **extra):
    ctx = 0 if mode == "prefill" else CONTEXT
    dfn, pfn = e2e.model_step(dense, impl, batch, T, ctx), e2e.model_step(pruned, impl, batch, T, ctx)
    d, p = e2e.model_cost(dense, impl, batch, T, ctx), e2e.model_cost(pruned, impl, batch, T, ctx)
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
    """The default model and its committed 22% plan (benches/plans/smollm2_135m_22.plan.json: per-layer FFN
    widths, 20,181-token vocabulary), as greenprune.deploy.e2e.default_model_pair builds them."""
    return e2e.default_model_pair(PLANS / "smollm2_135m_22.plan.json", PLANS / "smollm2_135m.config.json",
                                  device or RUN["device"], RUN["dtype"])


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
