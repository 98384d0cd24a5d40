"""Serving a pruned vocabulary: LM head argmax / top-k over kept rows, remapped embedding gather.

lm_head_argmax / lm_head_topk: FLOPs 2 T H K, bytes 2 K H + 2 T H. Decode (T small) is bound by reading the
kept head once (2 K H bytes / copy bandwidth); prefill by the GEMM. Against the full head (eager_full: the
unpruned model's logits + argmax over V) the target speed-up is close to V / K (speedup_vs_baseline).
remapped_embedding: bytes 2 N H written + 2 N H read (+ ids): bandwidth-bound, target >= 85% of copy.
"""
import pytest
import torch
import torch.nn.functional as F

from greenprune.kernels import build_id_map, reference as ref

HEADS = [(1, 4096, 128256, 42752), (64, 4096, 128256, 42752), (4096, 4096, 128256, 42752), (1, 4096, 32000, 10667),
         (4096, 4096, 32000, 10667)]
# lease profile (conftest.py): the Llama-3 head with a third of its vocabulary kept, at decode and at prefill
LEASE = {"bench_lm_head_argmax": [{"T": 1, "V": 128256}, {"T": 4096, "V": 128256}],
         "bench_lm_head_topk": [{"T": 1, "V": 128256}],
         "bench_remapped_embedding": [{"H": 4096}]}


def _head(like, T, H, V, K):
    h, w_full = torch.randn(T, H, **like), torch.randn(V, H, **like) / H**0.5
    kept = torch.randperm(V, device=like["device"])[:K].sort().values
    return h, w_full, w_full[kept].contiguous(), kept


@pytest.mark.parametrize("impl", ["triton", "cuda_ext", "eager_kept", "eager_full", "compile_kept"])
@pytest.mark.parametrize("T,H,V,K", HEADS, ids=lambda v: str(v))
def bench_lm_head_argmax(request, benchmark, measure, compiled, like, impl, T, H, V, K):
    benchmark.group = f"lm_head_argmax T={T} H={H} V={V} K={K}"
    ext = request.getfixturevalue("cuda_ext") if impl == "cuda_ext" else None
    h, w_full, w_kept, kept = _head(like, T, H, V, K)
    fns = {"triton": lambda: torch.ops.greenprune.lm_head_argmax(h, w_kept, kept),
           "cuda_ext": lambda: ext.lm_head_argmax(h, w_kept, kept),
           "eager_kept": lambda: ref.lm_head_argmax(h, w_kept, kept),
           "eager_full": lambda: F.linear(h, w_full).argmax(-1),
           "compile_kept": lambda c=compiled(ref.lm_head_argmax): c(h, w_kept, kept)}
    full = fns["eager_full"] if impl in ("triton", "cuda_ext") else None
    measure(fns[impl], flops=2 * T * H * K, bytes=2 * K * H + 2 * T * H, baseline=full, impl=impl,
            target_speedup_vs_full=V / K)


@pytest.mark.parametrize("impl", ["triton", "cuda_ext", "eager_kept", "eager_full"])
@pytest.mark.parametrize("T,H,V,K", HEADS[:2], ids=lambda v: str(v))
def bench_lm_head_topk(request, benchmark, measure, like, impl, T, H, V, K, k=8):
    benchmark.group = f"lm_head_topk k={k} T={T} H={H} V={V} K={K}"
    ext = request.getfixturevalue("cuda_ext") if impl == "cuda_ext" else None
    h, w_full, w_kept, kept = _head(like, T, H, V, K)
    fns = {"triton": lambda: torch.ops.greenprune.lm_head_topk(h, w_kept, kept, k),
           "cuda_ext": lambda: ext.lm_head_topk(h, w_kept, kept, k),
           "eager_kept": lambda: ref.lm_head_topk(h, w_kept, kept, k),
           "eager_full": lambda: F.linear(h, w_full).topk(k, -1)}
    full = fns["eager_full"] if impl in ("triton", "cuda_ext") else None
    measure(fns[impl], flops=2 * T * H * K, bytes=2 * K * H + 2 * T * H, baseline=full, impl=impl,
            target_speedup_vs_full=V / K)


@pytest.mark.parametrize("impl", ["triton", "cuda_ext", "eager"])
@pytest.mark.parametrize("N,H,V,K", [(16384, 4096, 128256, 42752), (16384, 8192, 128256, 42752)], ids=lambda v: str(v))
def bench_remapped_embedding(request, benchmark, measure, like, impl, N, H, V, K):
    benchmark.group = f"remapped_embedding N={N} H={H} K={K}"
    ext = request.getfixturevalue("cuda_ext") if impl == "cuda_ext" else None
    w = torch.randn(K, H, **like)
    kept = torch.randperm(V, device=like["device"])[:K]
    id_map = build_id_map(kept, V)
    ids = kept[torch.randint(0, K, (N,), device=like["device"])]
    fns = {"triton": lambda: torch.ops.greenprune.remapped_embedding(ids, id_map, w, 0),
           "cuda_ext": lambda: ext.remapped_embedding(ids, id_map, w, 0),
           "eager": lambda: ref.remapped_embedding(ids, id_map, w, 0)}
    eager = fns["eager"] if impl in ("triton", "cuda_ext") else None
    measure(fns[impl], bytes=4 * N * H + 16 * N, baseline=eager, impl=impl, target_frac_of_copy_bw=0.85)
