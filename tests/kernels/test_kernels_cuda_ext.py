"""The optional CUDA extension greenprune._C (csrc/): build switch, absence path, and on a GPU every op
against the torch reference (kernels/reference.py) for bf16 / fp16 / fp32 inputs, plus torch.library.opcheck.

GPU tests skip, saying why, when there is no GPU or the extension is not built (build it with
`GREENPRUNE_BUILD_CUDA=1 pip install --no-build-isolation --no-deps -e .`, or `scripts/gpu_check.sh`).
Tolerances:
  * ids (embedding rows, argmax / top-k ids) are compared exactly; the only exception is a near-tie in the
    reference logits: both sides compute fp32 logits with fp32 accumulation, but in different orders (cuBLAS
    with 16-bit operands vs the reference's fp32 GEMM of upcast operands), so two logits closer than their
    rounding error (~1e-6 relative) may swap. Such a mismatch must pick a logit equal to the maximum within
    that bound, and may not happen for more than 1% of the rows (random inputs: ~never).
  * channel sums: fp32 accumulations of N terms in different orders; the error of either is below
    ~sqrt(N) * 2^-24 * sum|terms| for the orders used, so |got - want| <= 1e-5 * sum|terms| (N <= 10^4).
    abs-max is exact (and NaN propagates).
"""
import os
import subprocess
import sys

import pytest
import torch

import greenprune.kernels as K
from greenprune import _ext
from greenprune.kernels import build_id_map, dispatch, reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
OPS = ["remapped_embedding", "lm_head_argmax", "lm_head_topk", "channel_moments"]


@pytest.fixture
def ext():
    why = _ext.why_absent()
    if why is not None:
        pytest.skip(f"the CUDA extension greenprune._C is not built here ({why})")
    return torch.ops.greenprune_cuda


def _rand(*shape, gen, dtype=torch.float32, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen)).to(device="cuda", dtype=dtype)


# --- CPU-runnable: build switch and absence path ----------------------------------------------------------
def _setup_py(env_value):
    env = {k: v for k, v in os.environ.items() if k != "GREENPRUNE_BUILD_CUDA"}
    if env_value is not None:
        env["GREENPRUNE_BUILD_CUDA"] = env_value
    return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks the CPU-torch install path (this torch has CUDA)")
def test_build_switch_with_cpu_torch():
    """CPU torch: auto (the default) and 0 install pure Python; 1 fails, naming the reason; junk is refused."""
    from greenprune._version import __version__

    for value in (None, "auto", "0"):
        out = _setup_py(value)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == __version__
        said = "not building the CUDA extension" in out.stderr
        assert said == (value != "0"), (value, out.stderr)  # auto says why; 0 is silent
        if said:
            assert "CPU build" in out.stderr
    out = _setup_py("1")
    assert out.returncode != 0 and "GREENPRUNE_BUILD_CUDA=1 but the CUDA extension cannot be built" in out.stderr
    out = _setup_py("maybe")
    assert out.returncode != 0 and "choose 0, 1 or auto" in out.stderr


def test_absence_is_reported_and_dispatch_falls_back(monkeypatch):
    """Without the extension: the reason is kept, auto picks another backend, forcing cuda says why.
    With it (a GPU build): CPU tensors still never reach it."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(4, 8)
    for op in OPS:
        assert dispatch.backend_for(op, x) == "torch"
    monkeypatch.setenv("GREENPRUNE_BACKEND", "cuda")
    with pytest.raises(K.BackendUnavailable) as err:
        K.channel_moments(x)
    why = _ext.why_absent()
    if why is None:
        assert "every tensor on a CUDA device" in str(err.value)
    else:
        assert "greenprune._C" in str(err.value) and why in str(err.value)
    monkeypatch.setenv("GREENPRUNE_BACKEND", "auto")
    s, q, a = K.channel_moments(x + 1)
    assert s.tolist() == [4.0] * 8 and a.tolist() == [1.0] * 8


def test_absence_is_logged_at_debug_level():
    code = ("import logging; logging.basicConfig(level=logging.DEBUG, format='%(levelname)s %(message)s')\n"
            "import greenprune\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if _ext.why_absent() is not None:
        assert "DEBUG greenprune CUDA extension (greenprune._C) unavailable" in out.stderr
    else:
        assert "greenprune._C) unavailable" not in out.stderr


def test_schemas_match_the_custom_ops(ext):
    """Same argument names, types and returns as torch.ops.greenprune.* (Python custom ops say SymInt)."""
    for op in OPS:
        mine = str(getattr(ext, op).default._schema).split("::", 1)[1]
        theirs = str(getattr(torch.ops.greenprune, op).default._schema).split("::", 1)[1]
        assert mine == theirs.replace("SymInt", "int"), op


def test_meta_kernels_trace_symbolic_shapes(ext):
    """The Meta kernels (FakeTensor, torch.compile, opcheck's fake tests) give the reference's output shapes and
    dtypes, symbolically: tracing with dynamic shapes needs no GPU."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(h, w, kept, x, ids, id_map):
        v, i = ext.lm_head_topk(h, w, kept, 3)
        return (ext.lm_head_argmax(h, w, kept), v, i, *ext.channel_moments(x, None),
                *ext.remapped_embedding(ids, id_map, w, 0))

    args = (torch.empty(2, 7, 48, dtype=torch.bfloat16), torch.empty(53, 48, dtype=torch.bfloat16),
            torch.arange(53), torch.empty(9, 40, dtype=torch.float16), torch.zeros(3, 5, dtype=torch.int32),
            torch.zeros(100, dtype=torch.int32))
    graph = make_fx(f, tracing_mode="symbolic")(*args)
    vals = {n.name: n.meta["val"] for n in graph.graph.nodes if "val" in n.meta}
    out = next(n for n in graph.graph.nodes if n.op == "output").args[0]
    got = [(tuple(str(d) for d in vals[o.name].shape), vals[o.name].dtype) for o in out]
    h, w, x, ids = (tuple(str(d) for d in vals[n].shape) for n in ("h_1", "w_1", "x_1", "ids_1"))
    assert got == [(h[:2], torch.int64), ((*h[:2], "3"), torch.float32), ((*h[:2], "3"), torch.int64),
                   (x[1:], torch.float32), (x[1:], torch.float32), (x[1:], torch.float32),
                   ((*ids, w[1]), torch.bfloat16), (ids, torch.int64)]
    assert len(set(h)) == 3 and len(set(ids)) == 2  # really symbolic (one symbol per dimension)


# --- GPU: every op against the reference ------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("dtype", DTYPES + [torch.int32])
@pytest.mark.parametrize("H", [576, 75, 4])
@pytest.mark.parametrize("id_dtype,map_dtype", [(torch.long, torch.int32), (torch.int32, torch.long)])
def test_remapped_embedding(ext, gen, dtype, H, id_dtype, map_dtype):
    V, Kk = 1000, 300
    kept = torch.randperm(V, generator=gen)[:Kk].cuda()
    id_map = build_id_map(kept, V).to(map_dtype)
    w = torch.randint(-1000, 1000, (Kk, H), generator=gen).cuda().to(dtype)
    ids = torch.randint(-5, V + 5, (3, 41), generator=gen).cuda().to(id_dtype)  # dropped and out-of-range ids too
    ids[0, :10] = kept[:10].to(id_dtype)
    for fallback in (-1, 0, Kk - 1):
        got, got_kept = ext.remapped_embedding(ids, id_map, w, fallback)
        want, want_kept = ref.remapped_embedding(ids.long(), id_map, w, fallback)
        assert torch.equal(got_kept, want_kept)
        assert torch.equal(got, want), (fallback, (got != want).sum())
    strided = w[:, : H // 2 + 1]  # rows with a stride: the narrow-vector path
    got, _ = ext.remapped_embedding(ids, id_map, strided, 0)
    assert torch.equal(got, ref.remapped_embedding(ids.long(), id_map, strided, 0)[0])


@gpu
def test_remapped_embedding_refuses_bad_fallback(ext):
    w, id_map = torch.zeros(4, 8, device="cuda"), torch.zeros(10, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="fallback"):
        ext.remapped_embedding(torch.zeros(3, dtype=torch.long, device="cuda"), id_map, w, 4)


def _head_inputs(gen, T, H, V, Kk, dtype):
    h = _rand(T, H, gen=gen, dtype=dtype)
    w_full = _rand(V, H, gen=gen, dtype=dtype, scale=H ** -0.5)
    kept = torch.randperm(V, generator=gen)[:Kk].sort().values.cuda()
    return h, w_full, w_full[kept].contiguous(), kept


def _assert_argmax_equivalent(got, want, logits_kept, kept):
    """Exact ids, except near-ties of the reference logits (see the module docstring)."""
    pos = torch.searchsorted(kept, got) if kept is not None else got  # original id -> kept row (kept sorted)
    bad = (got != want).nonzero().flatten()
    assert bad.numel() <= max(1, got.numel() // 100), f"{bad.numel()} of {got.numel()} ids differ"
    if bad.numel():
        rows = logits_kept[bad]
        top = rows.amax(1)
        tol = 1e-6 * rows.abs().amax(1) * rows.shape[1] ** 0.5 + 1e-6
        assert (top - rows.gather(1, pos[bad][:, None])[:, 0] <= tol).all()


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,H,V,Kk", [(1, 64, 2000, 700), (37, 576, 5000, 1999), (300, 256, 3000, 3000)])
@pytest.mark.parametrize("kept_dtype", [torch.long, torch.int32, None])
def test_lm_head_argmax(ext, gen, dtype, T, H, V, Kk, kept_dtype):
    h, _, w, kept = _head_inputs(gen, T, H, V, Kk, dtype)
    kid = kept.to(kept_dtype) if kept_dtype is not None else None
    got = ext.lm_head_argmax(h.reshape(1, T, H), w, kid)
    assert got.shape == (1, T) and got.dtype == torch.long
    want = ref.lm_head_argmax(h, w, kid)
    _assert_argmax_equivalent(got[0], want, h.float() @ w.float().T, kept if kid is not None else None)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_lm_head_argmax_ties_and_nan(ext, gen, dtype):
    """Exact ties go to the lowest kept row (torch.argmax returns the first maximum); NaN counts as the max."""
    T, H, Kk = 8, 64, 1001
    h = _rand(T, H, gen=gen, dtype=dtype)
    w = _rand(Kk, H, gen=gen, dtype=dtype, scale=0.01)
    w[5] = w[900] = w[17] = h[0] * 4  # identical rows: identical logits, row 0's maximum three times
    kept = torch.arange(Kk, device="cuda") * 3 + 1
    assert ext.lm_head_argmax(h, w, kept)[0].item() == ref.lm_head_argmax(h, w, kept)[0].item() == 5 * 3 + 1
    w[600] = float("nan")
    got, want = ext.lm_head_argmax(h, w, kept), ref.lm_head_argmax(h, w, kept)
    assert torch.equal(got, want) and (got == 600 * 3 + 1).all()


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 8, 33, 64, 100])
@pytest.mark.parametrize("T,H,V,Kk", [(1, 64, 2000, 700), (45, 576, 5000, 1999)])
def test_lm_head_topk(ext, gen, dtype, k, T, H, V, Kk):
    h, _, w, kept = _head_inputs(gen, T, H, V, Kk, dtype)
    vals, ids = ext.lm_head_topk(h, w, kept, k)
    want_vals, want_ids = ref.lm_head_topk(h, w, kept, k)
    assert vals.shape == ids.shape == (T, k) and vals.dtype == torch.float32 and ids.dtype == torch.long
    logits = h.float() @ w.float().T  # [T, K] in kept order
    scale = logits.abs().amax(1, keepdim=True)
    tol = 1e-6 * scale * H ** 0.5 + 1e-6  # fp32 accumulation-order differences (module docstring)
    assert ((vals - want_vals).abs() <= tol).all()
    assert (vals[:, :-1] >= vals[:, 1:]).all()  # descending
    pos = torch.searchsorted(kept, ids)
    assert torch.equal(kept[pos], ids)  # every id is a kept original id
    assert ((logits.gather(1, pos) - vals).abs() <= tol).all()  # and carries its own logit
    assert all(len(set(r)) == k for r in pos.tolist())  # no id twice
    same = (ids == want_ids).float().mean().item()
    assert same >= 0.99, f"only {same:.3f} of the ids equal the reference's"


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", [(1, 7), (37, 576), (5000, 1030), (2048, 4096), (0, 16)])
@pytest.mark.parametrize("with_shift", [False, True])
def test_channel_moments(ext, gen, dtype, N, C, with_shift):
    x = _rand(N, C, gen=gen, dtype=dtype, scale=3.0) + 2.0
    shift = _rand(C, gen=gen) if with_shift else None
    got = ext.channel_moments(x.reshape(1, N, C) if N else x, shift)
    want = ref.channel_moments(x, shift)
    d = x.float() - (shift if shift is not None else 0.0)
    bounds = (d.abs().sum(0), (d * d).sum(0))
    for g, w_, b in zip(got[:2], want[:2], bounds):
        assert g.dtype == torch.float32 and g.shape == (C,)
        assert ((g - w_).abs() <= 1e-5 * b + 1e-30).all(), ((g - w_).abs() / (b + 1e-30)).max()
    assert torch.equal(got[2], want[2])


@gpu
def test_channel_moments_strided_input_and_nan(ext, gen):
    x = _rand(64, 300, gen=gen, dtype=torch.bfloat16)[:, ::3]  # channel stride 3: copied to contiguous first
    x_t = _rand(100, 64, gen=gen, dtype=torch.float16).T  # [64, 100] with row stride 1: also copied
    for t in (x, x_t, _rand(50, 100, gen=gen)[:, :98]):  # the last: rows 400 bytes apart, 392 long (8-byte loads)
        for g, w_ in zip(ext.channel_moments(t, None), ref.channel_moments(t)):
            torch.testing.assert_close(g, w_, rtol=1e-5, atol=1e-4)
    y = _rand(40, 24, gen=gen)
    y[7, 3] = float("nan")
    s, q, a = ext.channel_moments(y, None)
    assert torch.isnan(a[3]) and torch.isnan(s[3]) and not torch.isnan(a[[0, 1, 2, 4]]).any()


@gpu
def test_opcheck(ext, gen):
    h, _, w, kept = _head_inputs(gen, 5, 64, 500, 200, torch.bfloat16)
    torch.library.opcheck(ext.lm_head_argmax.default, (h, w, kept))
    torch.library.opcheck(ext.lm_head_argmax.default, (h, w, None))
    torch.library.opcheck(ext.lm_head_topk.default, (h, w, kept, 5))
    id_map = build_id_map(kept, 500)
    torch.library.opcheck(ext.remapped_embedding.default, (kept[torch.tensor([[3, 1], [0, 2]], device="cuda")],
                                                            id_map, w, 0))
    x = _rand(33, 40, gen=gen, dtype=torch.float16)
    torch.library.opcheck(ext.channel_moments.default, (x, None))
    torch.library.opcheck(ext.channel_moments.default, (x, _rand(40, gen=gen)))


@gpu
def test_public_api_prefers_the_extension(ext, gen, monkeypatch):
    """auto picks 'cuda' for CUDA tensors, and the public functions return the extension's results."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    h, _, w, kept = _head_inputs(gen, 9, 128, 800, 300, torch.bfloat16)
    for op in OPS:
        assert dispatch.backend_for(op, h, w) == "cuda"
    assert torch.equal(K.lm_head_argmax(h, w, kept), ext.lm_head_argmax(h, w, kept))
    x = _rand(70, 48, gen=gen, dtype=torch.bfloat16)
    stats = K.ChannelStats().update(x[:30]).update(x[30:])
    torch.testing.assert_close(stats.mean, x.float().mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.variance, x.float().var(0, unbiased=False), rtol=1e-4, atol=1e-5)
