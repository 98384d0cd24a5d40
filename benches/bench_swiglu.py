"""swiglu_ffn: gate+up GEMM with the SiLU-product epilogue, then the down GEMM (cuBLAS).

FLOPs = 2 T H 3F (floor: FLOPs / cuBLAS bf16 rate). Eager also moves ~5 T F x 2 bytes for silu and the
product that the fused epilogue never writes. Target at prefill: >= 1.15x eager (speedup_vs_baseline).
Shapes: Llama-2-7B (F 11008), Llama-3-8B (14336), Llama-3-70B (H 8192, F 28672), and a pruned, unaligned
width (9557 = 2/3 of 14336) at prefill; one decode-like T.
"""
import pytest
import torch

from greenprune.kernels import fuse_gate_up, reference as ref

SHAPES = [(8192, 4096, 11008), (8192, 4096, 14336), (4096, 8192, 28672), (8192, 4096, 9557), (16, 4096, 14336)]
# lease profile (conftest.py): Llama-3-8B at prefill, its unaligned 2/3 width, and the decode-like shape
LEASE = {"bench_swiglu_ffn": [{"T": 8192, "F": 14336}, {"T": 8192, "F": 9557}, {"T": 16, "F": 14336}]}


@pytest.mark.parametrize("impl", ["triton", "eager", "compile"])
@pytest.mark.parametrize("T,H,F", SHAPES, ids=lambda v: str(v))
def bench_swiglu_ffn(benchmark, measure, compiled, like, impl, T, H, F):
    benchmark.group = f"swiglu_ffn T={T} H={H} F={F}"
    x = torch.randn(T, H, **like)
    wgu = fuse_gate_up(torch.randn(F, H, **like) / H**0.5, torch.randn(F, H, **like) / H**0.5)
    wd = torch.randn(H, F, **like) / F**0.5
    fns = {"triton": lambda: torch.ops.greenprune.swiglu_ffn(x, wgu, wd),
           "eager": lambda: ref.swiglu_ffn(x, wgu, wd),
           "compile": lambda c=compiled(ref.swiglu_ffn): c(x, wgu, wd)}
    eager = fns["eager"] if impl == "triton" else None
    measure(fns[impl], flops=6 * T * H * F, bytes=2 * (2 * T * H + 3 * H * F + T * F), baseline=eager, impl=impl,
            target_speedup_vs_eager=1.15)
