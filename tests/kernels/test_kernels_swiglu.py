"""swiglu_ffn (kernels/swiglu.py) against the torch reference, on unaligned widths.

Tolerances: fp32: kernel and reference compute the same fp32 products in a different order: rtol/atol 1e-5
(x output scale). 16-bit: the truth is the fp64 FFN of the same rounded inputs. The kernel rounds once (the
activation silu(g) * u to the input dtype before the down GEMM); eager torch rounds g, u, silu(g) and the
product. The kernel must be within 2x eager's own error (and 2e-3 x scale, ~4 fp16 ulps of the output).
"""
import pytest
import torch

from greenprune.kernels import fuse_gate_up, reference as ref, swiglu_ffn

pytestmark = pytest.mark.interpreter
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def make_inputs(gen, shape, H, F, dtype):
    x = torch.randn(*shape, H, generator=gen)
    wg, wu = (torch.randn(F, H, generator=gen) / H**0.5 for _ in range(2))
    wd = torch.randn(H, F, generator=gen) / F**0.5
    return [t.to(dtype) for t in (x, fuse_gate_up(wg, wu), wd)]


def check(x, wgu, wd):
    got = swiglu_ffn(x, wgu, wd)
    assert got.shape == x.shape and got.dtype == x.dtype
    truth = ref.swiglu_ffn(x.double(), wgu.double(), wd.double())
    scale = float(truth.abs().max())
    err = float((got.double() - truth).abs().max())
    if x.dtype == torch.float32:
        assert err <= 1e-5 * scale, (err, scale)
    else:
        eager = float((ref.swiglu_ffn(x, wgu, wd).double() - truth).abs().max())
        assert err <= max(2 * eager, 2e-3 * scale), (err, eager, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,H,F", [((7,), 48, 45), ((37,), 48, 45), ((2, 3), 64, 17), ((5,), 40, 1)])
def test_swiglu_ffn_matches_reference(shape, H, F, dtype, gen):
    check(*make_inputs(gen, shape, H, F, dtype))


def test_swiglu_ffn_rejects_bad_shapes(gen):
    x, wgu, wd = make_inputs(gen, (7,), 48, 45, torch.float32)
    with pytest.raises(ValueError, match="w_gate_up"):
        swiglu_ffn(x, wgu[:-1], wd)
    with pytest.raises(ValueError, match="w_down"):
        swiglu_ffn(x, wgu, wd[:, :-1])


def test_opcheck_swiglu_ffn(gen):
    torch.library.opcheck(torch.ops.greenprune.swiglu_ffn.default, tuple(make_inputs(gen, (7,), 48, 45, torch.float32)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape,H,F", [((7,), 48, 45), ((300,), 512, 1111), ((2, 129), 256, 700)])
@pytest.mark.parametrize("mark", [pytest.param(0, marks=CUDA)])
def test_swiglu_ffn_cuda(shape, H, F, dtype, mark, gen):
    check(*[t.cuda() for t in make_inputs(gen, shape, H, F, dtype)])
