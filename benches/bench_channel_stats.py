"""channel_moments, wanda_scores, taylor_scores: one read of the inputs, bandwidth-bound. Floor: bytes / copy bandwidth.

channel_moments(x[N, C] bf16): N C 2 bytes read (+ 12 C written); target >= 85% of the copy ceiling (GB/s).
wanda_scores(W[O, C] bf16): O C 2 bytes read; same target.
taylor_scores(W, dL/dW [O, C] bf16, dim): 2 O C 2 bytes read (dim 0: per column, a down_proj; dim 1: per row,
a gate/up projection); same target.
"""
import pytest
import torch

from greenprune.kernels import reference as ref

IMPLS = ["triton", "eager", "compile"]
# scripts/gpu_check.sh lease (GREENPRUNE_BENCH_PROFILE=lease, see conftest.py): the largest shape of each op.
LEASE = {"bench_channel_moments": [{"N": 16384, "C": 14336}],
         "bench_wanda_scores": [{"O": 8192, "C": 28672}],
         "bench_taylor_scores": [{"O": 8192, "C": 28672, "dim": 0}, {"O": 28672, "C": 8192, "dim": 1}]}


@pytest.mark.parametrize("impl", IMPLS + ["cuda_ext"])
@pytest.mark.parametrize("N,C", [(4096, 4096), (16384, 4096), (16384, 14336)], ids=lambda v: str(v))
def bench_channel_moments(request, benchmark, measure, compiled, like, impl, N, C):
    benchmark.group = f"channel_moments N={N} C={C}"
    ext = request.getfixturevalue("cuda_ext") if impl == "cuda_ext" else None
    x = torch.randn(N, C, **like)
    fns = {"triton": lambda: torch.ops.greenprune.channel_moments(x, None),
           "cuda_ext": lambda: ext.channel_moments(x, None),
           "eager": lambda: ref.channel_moments(x),
           "compile": lambda c=compiled(ref.channel_moments): c(x)}
    eager = fns["eager"] if impl in ("triton", "cuda_ext") else None
    measure(fns[impl], bytes=N * C * 2 + 12 * C, baseline=eager, impl=impl, target_frac_of_copy_bw=0.85)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("O,C", [(4096, 14336), (8192, 28672)], ids=lambda v: str(v))
def bench_wanda_scores(benchmark, measure, compiled, like, impl, O, C):
    benchmark.group = f"wanda_scores O={O} C={C}"
    w = torch.randn(O, C, **like)
    l2 = torch.rand(C, device=like["device"])
    fns = {"triton": lambda: torch.ops.greenprune.wanda_scores(w, l2, 1),
           "eager": lambda: ref.wanda_scores(w, l2, 1),
           "compile": lambda c=compiled(ref.wanda_scores): c(w, l2, 1)}
    eager = fns["eager"] if impl == "triton" else None
    measure(fns[impl], bytes=O * C * 2 + 8 * C, baseline=eager, impl=impl, target_frac_of_copy_bw=0.85)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("O,C,dim", [(11008, 4096, 1), (4096, 11008, 0), (28672, 8192, 1), (8192, 28672, 0)],
                         ids=lambda v: str(v))
def bench_taylor_scores(benchmark, measure, compiled, like, impl, O, C, dim):
    benchmark.group = f"taylor_scores O={O} C={C} dim={dim}"
    w = torch.randn(O, C, **like)
    g = torch.randn(O, C, **like) * 1e-3
    fns = {"triton": lambda: torch.ops.greenprune.taylor_scores(w, g, dim, 1, False),
           "eager": lambda: ref.taylor_scores(w, g, dim),
           "compile": lambda c=compiled(ref.taylor_scores): c(w, g, dim)}
    eager = fns["eager"] if impl == "triton" else None
    measure(fns[impl], bytes=2 * O * C * 2 + 4 * (C if dim == 0 else O), baseline=eager, impl=impl,
            target_frac_of_copy_bw=0.85)
