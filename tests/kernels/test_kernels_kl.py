"""kl_divergence (kernels/kl.py) against the torch reference.

Inputs have clear argmaxes by construction: the hidden states of the T tokens are orthonormal (x 2), and the
winning LM-head rows are those states scaled, so a winner's logit is ~8-12 while every other logit is noise of
std ~0.6 (cross-token terms vanish). Integer outputs must then match exactly.
Tolerances: under the interpreter both sides compute fp32 logits from the same (fp16-rounded) inputs; they
differ by summation order, ~H x 2^-24 x |logit| ~ 3e-5, which moves KL and dropped mass by as much:
atol 1e-4, rtol 1e-4. On the GPU, bf16/fp16 tensor-core products are exact in fp32 and accumulate in fp32,
so the same bound holds up to the longer H (atol 2e-3); fp32 runs with IEEE dots unless TF32 is enabled.
"""
import pytest
import torch

from greenprune.kernels import KLResult, kl_divergence, reference as ref

pytestmark = pytest.mark.interpreter
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def make_inputs(gen, T, H, V, K, dtype, ids="unsorted"):
    q, _ = torch.linalg.qr(torch.randn(H, T, generator=gen, dtype=torch.float64))
    hd = 2 * q.T  # [T, H], orthogonal rows of norm 2
    wd = 0.3 * torch.randn(V, H, generator=gen, dtype=torch.float64)
    perm = torch.randperm(V, generator=gen)
    kept = perm[:K] if ids == "unsorted" else perm[:K].sort().values
    win = torch.randperm(K, generator=gen)[: 2 * T]
    wd[kept[win[:T]]] += 2 * hd  # dense winner of token t among the kept ids: logit ~8
    if K < V:  # a dropped id wins the full dense vocabulary for token 0: large dropped mass there
        wd[perm[K]] += 2.5 * hd[0]
    hp = hd + 0.05 * torch.randn(T, H, generator=gen, dtype=torch.float64)
    wp = wd[kept] + 0.1 * torch.randn(K, H, generator=gen, dtype=torch.float64)
    wp[win[T:]] += 3 * hd  # pruned winner differs: logit ~12
    if ids is None:
        assert K == V
        wd[perm[:K]] = wd[kept]  # same vocabulary: pruned row k is dense row k
        wd, kept = wd[perm[:K]], None
    return [t.to(dtype) for t in (hd, wd, hp, wp)] + [kept]


def check(got, want, atol):
    assert isinstance(got, KLResult)
    assert got.kl.dtype == got.dropped_mass.dtype == torch.float32
    assert got.argmax_dense.dtype == got.argmax_pruned.dtype == torch.int64
    torch.testing.assert_close(got.kl, want.kl, rtol=1e-4, atol=atol)
    torch.testing.assert_close(got.dropped_mass, want.dropped_mass, rtol=1e-4, atol=atol)
    assert torch.equal(got.argmax_dense, want.argmax_dense)
    assert torch.equal(got.argmax_pruned, want.argmax_pruned)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("ids", ["unsorted", "sorted"])
def test_kl_divergence_matches_reference(dtype, ids, gen):
    args = make_inputs(gen, 7, 48, 131, 53, dtype, ids)
    want = ref.kl_divergence(*args)
    assert want.dropped_mass[0] > 0.5 and (want.kl > 1e-3).all()  # the construction does what it says
    check(kl_divergence(*args), want, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kl_divergence_same_vocabulary(dtype, gen):
    args = make_inputs(gen, 7, 48, 53, 53, dtype, ids=None)
    got = kl_divergence(*args)
    check(got, ref.kl_divergence(*args), 1e-4)
    assert not got.dropped_mass.any()


def test_kl_divergence_many_token_blocks_and_identity(gen):
    hd, wd, hp, wp, kept = make_inputs(gen, 37, 48, 211, 97, torch.float32)  # 3 token blocks of 16
    check(kl_divergence(hd, wd, hp, wp, kept), ref.kl_divergence(hd, wd, hp, wp, kept), 1e-4)
    same = kl_divergence(hd, wd, hd, wd[kept], kept)  # the pruned model is the dense one, restricted
    torch.testing.assert_close(same.kl, torch.zeros(37), rtol=0, atol=1e-5)
    assert torch.equal(same.argmax_dense, same.argmax_pruned)


def test_kl_divergence_rejects_bad_shapes(gen):
    hd, wd, hp, wp, kept = make_inputs(gen, 7, 48, 131, 53, torch.float32)
    with pytest.raises(ValueError, match="kept_ids"):
        kl_divergence(hd, wd, hp, wp, None)
    with pytest.raises(ValueError, match="kept_ids"):
        kl_divergence(hd, wd, hp, wp, kept[:-1])
    empty = kl_divergence(hd[:0], wd, hp[:0], wp, kept)
    assert empty.kl.shape == (0,) and empty.argmax_dense.dtype == torch.int64


def test_opcheck_kl_divergence(gen):
    hd, wd, hp, wp, kept = make_inputs(gen, 7, 48, 131, 53, torch.float32)
    torch.library.opcheck(torch.ops.greenprune.kl_divergence.default, (hd, wd, hp, wp, kept))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("ids", ["unsorted", None])
@pytest.mark.parametrize("mark", [pytest.param(0, marks=CUDA)])
def test_kl_divergence_cuda(dtype, ids, mark, gen):
    V = 1700 if ids is None else 5003
    args = [a.cuda() if a is not None else None for a in make_inputs(gen, 200, 256, V, 1700, dtype, ids)]
    check(kl_divergence(*args), ref.kl_divergence(*args), 2e-3)
