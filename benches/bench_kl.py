"""kl_divergence: two LM-head GEMMs fused with online softmax statistics. Floor: FLOPs / cuBLAS bf16 rate.

FLOPs = 2 T H (V + K) (dense logits over the full vocabulary, pruned over the kept one); bytes ~ 2 H (V + K)
+ 4 T H, so at T >= 1024 the op is compute-bound. Target: >= 70% of the measured cuBLAS bf16 TFLOP/s.
Baselines: the torch reference (chunks of 1024 tokens, fp32 logits: what runs without the kernel) and
torch.compile of it.
"""
import pytest
import torch

from greenprune.kernels import reference as ref

SHAPES = [  # (T, H, V, K): Llama-3-8B / -70B heads with about a third of the vocabulary kept; Llama-2 head
    (4096, 4096, 128256, 42752),
    (8192, 4096, 128256, 42752),
    (4096, 8192, 128256, 42752),
    (8192, 4096, 32000, 10667),
]
# lease profile (conftest.py): the Llama-3-8B head at 8192 tokens
LEASE = {"bench_kl_divergence": [{"T": 8192, "H": 4096, "V": 128256, "K": 42752}]}


@pytest.mark.parametrize("impl", ["triton", "eager", "compile"])
@pytest.mark.parametrize("T,H,V,K", SHAPES, ids=lambda v: str(v))
def bench_kl_divergence(benchmark, measure, compiled, like, impl, T, H, V, K):
    benchmark.group = f"kl_divergence T={T} H={H} V={V} K={K}"
    g = torch.Generator(device=like["device"]).manual_seed(0)
    hd = torch.randn(T, H, generator=g, **like)
    hp = hd + 0.05 * torch.randn(T, H, generator=g, **like)
    wd = torch.randn(V, H, generator=g, **like) / H**0.5
    kept = torch.randperm(V, generator=g, device=like["device"])[:K].sort().values
    wp = wd[kept] + 0.01 * torch.randn(K, H, generator=g, **like)
    fns = {"triton": lambda: torch.ops.greenprune.kl_divergence(hd, wd, hp, wp, kept),
           "eager": lambda: ref.kl_divergence(hd, wd, hp, wp, kept),
           "compile": lambda c=compiled(ref.kl_divergence): c(hd, wd, hp, wp, kept)}
    eager = fns["eager"] if impl == "triton" else None
    measure(fns[impl], flops=2 * T * H * (V + K), bytes=2 * H * (V + K) + 4 * T * H, baseline=eager, impl=impl,
            target_frac_of_cublas_bf16=0.70)
