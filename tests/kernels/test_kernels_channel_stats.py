"""channel_moments, wanda_scores, taylor_scores and ChannelStats (kernels/channel_stats.py) against the torch reference.

Tolerances: under the interpreter both sides sum the same fp32 values (fp16 inputs are upcast exactly) in a
different order, so sums differ by a few fp32 ulps of the running total: rtol 1e-5 with atol 1e-5 x (N x
scale) covers it; abs-max is a selection and must be exact. On the GPU (bf16 included) the same holds, as
the kernel upcasts loads to fp32 before accumulating.
"""
import pytest
import torch

from greenprune.kernels import ChannelStats, channel_moments, group_sum, reference as ref, taylor_scores, wanda_scores

pytestmark = pytest.mark.interpreter
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _check_moments(x, shift=None):
    got = channel_moments(x, shift)
    want = ref.channel_moments(x, shift)
    n = x.numel() // x.shape[-1]
    for g, w in zip(got[:2], want[:2]):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * n * float(w.abs().max() / n + 1))
    assert torch.equal(got[2], want[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 45), (1, 33), (40, 3)])
def test_channel_moments_matches_reference(shape, dtype, gen):
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(dtype)
    _check_moments(x)
    _check_moments(x, torch.randn(shape[-1], generator=gen))


def test_channel_moments_non_contiguous_and_empty(gen):
    x = torch.randn(48, 7, generator=gen).T  # [7, 48] with stride 7 along channels
    _check_moments(x)
    s, q, a = channel_moments(torch.empty(0, 9))
    assert s.shape == (9,) and not s.any() and not q.any() and not a.any()


@pytest.mark.parametrize("group_size", [1, 16, 48])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wanda_scores_matches_reference(group_size, dtype, gen):
    w = torch.randn(37, 48, generator=gen).to(dtype)  # [O, C]: a down_proj / o_proj weight
    l2 = torch.rand(48, generator=gen) * 10
    got = wanda_scores(w, l2, group_size)
    assert got.shape == (48 // group_size,)
    torch.testing.assert_close(got, ref.wanda_scores(w, l2, group_size), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError):
        wanda_scores(w, l2, 5)


def _check_taylor(w, g, dim, group_size, signed):
    got = taylor_scores(w, g, dim, group_size, signed)
    want = ref.taylor_scores(w, g, dim, group_size, signed)
    assert got.dtype == torch.float32 and got.shape == want.shape == (w.shape[1 - dim] // group_size,)
    # fp32 sums of the same products in another order: a few ulps of the sum of magnitudes
    scale = float((w.float() * g.float()).abs().sum(dim).max())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("dim,group_size", [(0, 1), (0, 16), (1, 1), (1, 37)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_taylor_scores_matches_reference(dim, group_size, signed, dtype, gen):
    w = torch.randn(37, 48, generator=gen).to(dtype)  # rows 37 and columns 48 span several masked tiles
    g = (torch.randn(37, 48, generator=gen) * 1e-2).to(dtype)
    _check_taylor(w, g, dim, group_size, signed)


def test_taylor_scores_layouts_and_bad_arguments(gen):
    w, g = torch.randn(48, 37, generator=gen).T, torch.randn(37, 48, generator=gen)  # w: stride 37 along columns
    _check_taylor(w, g, 0, 1, False)
    _check_taylor(w, g, 1, 1, False)
    assert taylor_scores(w[:0], g[:0], 0).tolist() == [0.0] * 48  # no rows: every column scores 0
    with pytest.raises(ValueError, match="does not divide"):
        taylor_scores(w, g, 0, 5)
    with pytest.raises(ValueError, match="same 2-D shape"):
        taylor_scores(w, g[:, :47], 0)
    with pytest.raises(ValueError, match="dim must be"):
        taylor_scores(w, g, 2)


def test_group_sum_is_contiguous_groups():
    assert group_sum(torch.arange(6.0), 3).tolist() == [3.0, 12.0]


def _truth(x):
    x = x.reshape(-1, x.shape[-1]).double()
    return x.mean(0), x.var(0, unbiased=False), x.norm(dim=0), x.abs().amax(0)


@pytest.mark.parametrize("mean", [0.0, 1000.0])
def test_channel_stats_chunk_merge_is_exact(mean, gen):
    """Chunked updates (sizes 1..17, a 3-D chunk) give the one-shot result; both match float64 truth, also
    when the mean dwarfs the spread (1000 +- 1: a naive fp32 sumsq/n - mean^2 keeps no correct digit)."""
    x = torch.randn(61, 45, generator=gen) + mean
    one = ChannelStats().update(x)
    chunked = ChannelStats()
    chunks = [x[:1], x[1:18], x[18:30].reshape(3, 4, 45), x[30:31], x[31:]]
    for c in chunks:
        chunked.update(c)
    assert chunked.count == one.count == 61 and chunked.n_channels == 45
    for a, b in [(chunked.mean, one.mean), (chunked.variance, one.variance), (chunked.l2_norm, one.l2_norm)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(chunked.absmax, one.absmax)
    t_mean, t_var, t_l2, t_abs = _truth(x)
    torch.testing.assert_close(chunked.mean.double(), t_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked.variance.double(), t_var, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked.l2_norm.double(), t_l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.absmax.double(), t_abs)
    torch.testing.assert_close(chunked.sum.double(), x.double().sum(0), rtol=1e-5, atol=1e-4)


def test_channel_stats_merge_of_accumulators(gen):
    x = torch.randn(30, 16, generator=gen)
    a, b = ChannelStats().update(x[:11]), ChannelStats().update(x[11:])
    both = a.merge(b).merge(ChannelStats())  # merging an empty accumulator is a no-op
    t_mean, t_var, _, _ = _truth(x)
    torch.testing.assert_close(both.mean.double(), t_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(both.variance.double(), t_var, rtol=1e-5, atol=1e-6)


def test_channel_stats_empty_and_mismatch(gen):
    st = ChannelStats().update(torch.empty(0, 4))
    assert st.count == 0
    with pytest.raises(ValueError, match="empty"):
        st.l2_norm
    st.update(torch.randn(3, 4, generator=gen))
    with pytest.raises(ValueError, match="channel count"):
        st.update(torch.randn(3, 5, generator=gen))


def test_opcheck_channel_ops(gen):
    x = torch.randn(9, 40, generator=gen)
    torch.library.opcheck(torch.ops.greenprune.channel_moments.default, (x, None))
    torch.library.opcheck(torch.ops.greenprune.channel_moments.default, (x, torch.randn(40, generator=gen)))
    torch.library.opcheck(torch.ops.greenprune.wanda_scores.default, (x, torch.rand(40, generator=gen), 8))
    g = torch.randn(9, 40, generator=gen)
    torch.library.opcheck(torch.ops.greenprune.taylor_scores.default, (x, g, 0, 8, False))
    torch.library.opcheck(torch.ops.greenprune.taylor_scores.default, (x, g, 1, 3, True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 45), (4096, 1000)], ids=["7x48", "3x5x45", "4096x1000"])
@pytest.mark.parametrize("mark", [pytest.param(0, marks=CUDA)])
def test_channel_ops_cuda(shape, dtype, mark, gen):
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(dtype).cuda()
    _check_moments(x)
    _check_moments(x, torch.randn(shape[-1], generator=gen).cuda())
    w, l2 = x.reshape(-1, shape[-1]), torch.rand(shape[-1], generator=gen).cuda()
    torch.testing.assert_close(wanda_scores(w, l2), ref.wanda_scores(w, l2), rtol=1e-4, atol=1e-3)
    g = (torch.randn(w.shape, generator=gen) * 1e-2).to(dtype).cuda()
    for dim in (0, 1):
        for signed in (False, True):
            _check_taylor(w, g, dim, 1, signed)
    st = ChannelStats()
    for c in x.reshape(-1, shape[-1]).split(3):
        st.update(c)
    torch.testing.assert_close(st.variance.double().cpu(), _truth(x.cpu())[1], rtol=1e-4, atol=1e-5)
