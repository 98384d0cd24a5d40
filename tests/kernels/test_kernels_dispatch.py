"""Backend selection (dispatch.py), the GREENPRUNE_BACKEND switch, imports without triton, fake impls."""
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import greenprune.kernels as K
from greenprune.kernels import dispatch, reference as ref

OPS = ["channel_moments", "wanda_scores", "taylor_scores", "kl_divergence", "swiglu_ffn", "remapped_embedding",
       "lm_head_argmax", "lm_head_topk"]


def test_exports_keep_the_core_names():
    for name in ["KLResult", "channel_moments", "kl_divergence", "ChannelStats", "backend_for", "swiglu_ffn",
                 "remapped_embedding", "lm_head_argmax", "lm_head_topk"]:
        assert hasattr(K, name), name
    assert K.KLResult is ref.KLResult


@pytest.mark.parametrize("op", OPS)
def test_auto_picks_triton_under_the_interpreter(op):
    assert dispatch.backend_for(op, torch.zeros(3)) == "triton"


@pytest.mark.parametrize("op", OPS)
def test_auto_falls_back_to_torch_on_cpu_without_the_interpreter(op, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    assert dispatch.backend_for(op, torch.zeros(3)) == "torch"


def test_env_switch_forces_a_backend(monkeypatch):
    x = torch.zeros(3)
    monkeypatch.setenv("GREENPRUNE_BACKEND", "torch")
    assert K.backend_for("kl_divergence", x) == "torch"
    monkeypatch.setenv("GREENPRUNE_BACKEND", "TRITON")  # case-insensitive
    assert K.backend_for("kl_divergence", x) == "triton"
    monkeypatch.setenv("GREENPRUNE_BACKEND", "cuda")  # no extension is built yet
    with pytest.raises(K.BackendUnavailable, match="CUDA extension"):
        K.backend_for("kl_divergence", x)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setenv("GREENPRUNE_BACKEND", "triton")
    with pytest.raises(K.BackendUnavailable, match="CUDA tensors"):
        K.backend_for("kl_divergence", x)
    monkeypatch.setenv("GREENPRUNE_BACKEND", "fastest")
    with pytest.raises(ValueError, match="GREENPRUNE_BACKEND"):
        K.backend_for("kl_divergence", x)
    monkeypatch.setenv("GREENPRUNE_BACKEND", "auto")
    assert K.backend_for("kl_divergence", x) == "torch"


def test_unknown_op():
    with pytest.raises(KeyError):
        K.backend_for("no_such_op")


@pytest.mark.interpreter
def test_public_ops_run_the_chosen_backend(monkeypatch, gen):
    """The switch really changes which implementation runs (spies on the registry)."""
    calls = []
    for table, name in ((dispatch._TORCH, "torch"), (dispatch._TRITON, "triton")):
        fn = table["channel_moments"]
        monkeypatch.setitem(table, "channel_moments", lambda *a, fn=fn, name=name: calls.append(name) or fn(*a))
    x = torch.randn(5, 48, generator=gen)
    for backend in ("torch", "triton", "auto"):
        monkeypatch.setenv("GREENPRUNE_BACKEND", backend)
        K.channel_moments(x)
    assert calls == ["torch", "triton", "triton"]


def test_lazy_jit_follows_the_interpreter_switch(monkeypatch):
    """Kernels are decorated at launch, per mode: a kernel first touched under the interpreter is an
    interpreted function, and the compiled variant is created separately (never mixed up)."""
    from greenprune.kernels.channel_stats import _channel_moments_kernel

    assert type(_channel_moments_kernel.jit()).__name__ == "InterpretedFunction"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert type(_channel_moments_kernel.jit()).__name__ == "JITFunction"


def test_import_without_triton_falls_back_to_torch():
    """A broken or missing triton is logged and every op runs on torch; forcing triton says why it can't."""
    code = (
        "import sys, logging; sys.modules['triton'] = None\n"
        "import os, torch; os.environ['TRITON_INTERPRET'] = '1'\n"
        "import greenprune.kernels as K\n"
        "x = torch.randn(4, 8)\n"
        "assert K.backend_for('channel_moments', x) == 'torch'\n"
        "assert torch.allclose(K.channel_moments(x)[0], x.sum(0))\n"
        "os.environ['GREENPRUNE_BACKEND'] = 'triton'\n"
        "try:\n    K.channel_moments(x)\nexcept K.BackendUnavailable as e:\n    print('OK', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "triton failed to import" in out.stdout


def test_fake_impls_give_the_right_shapes():
    """Every custom op's fake (meta) impl, under FakeTensorMode: shapes and dtypes only, no kernel runs."""
    ops = torch.ops.greenprune
    with FakeTensorMode():
        x = torch.empty(2, 7, 48)
        s, q, a = ops.channel_moments(x, None)
        assert s.shape == q.shape == a.shape == (48,) and s.dtype == torch.float32
        assert ops.wanda_scores(torch.empty(37, 48), torch.empty(48), 16).shape == (3,)
        w = torch.empty(37, 48, dtype=torch.bfloat16)
        assert ops.taylor_scores(w, w, 0, 16, False).shape == (3,) and ops.taylor_scores(w, w, 1, 1, True).shape == (37,)
        assert ops.taylor_scores(w, w, 0, 1, False).dtype == torch.float32
        kl = ops.kl_divergence(torch.empty(7, 48), torch.empty(131, 48), torch.empty(7, 48),
                               torch.empty(53, 48), torch.empty(53, dtype=torch.long))
        assert [t.shape for t in kl] == [(7,)] * 4
        assert [t.dtype for t in kl] == [torch.float32, torch.float32, torch.int64, torch.int64]
        y = ops.swiglu_ffn(torch.empty(3, 7, 48, dtype=torch.float16), torch.empty(90, 48), torch.empty(48, 45))
        assert y.shape == (3, 7, 48) and y.dtype == torch.float16
        e, kept = ops.remapped_embedding(torch.empty(3, 5, dtype=torch.long), torch.empty(131, dtype=torch.int32),
                                         torch.empty(53, 48), 0)
        assert e.shape == (3, 5, 48) and kept.shape == (3, 5) and kept.dtype == torch.int64
        assert ops.lm_head_argmax(torch.empty(2, 7, 48), torch.empty(53, 48), None).shape == (2, 7)
        v, i = ops.lm_head_topk(torch.empty(7, 48), torch.empty(53, 48), None, 5)
        assert v.shape == i.shape == (7, 5) and v.dtype == torch.float32 and i.dtype == torch.int64


@pytest.mark.interpreter
@pytest.mark.falls_back
def test_unaligned_operands_fall_back_to_torch(gen, caplog):
    """TMA needs 16-byte row strides: fp16 with H = 45 (90-byte rows) runs the torch reference inside the op,
    with the same results, says so once in the log, and counts each such call (fallback_counts)."""
    h = 2 * torch.linalg.qr(torch.randn(45, 7, generator=gen, dtype=torch.float64))[0].T  # [7, 45] orthogonal
    w = 0.1 * torch.randn(53, 45, generator=gen, dtype=torch.float64)
    w[:7] += 3 * h  # token t's winner is row t
    h, w = h.half(), w.half()
    dispatch._log_once.cache_clear()  # the note is logged once per process
    before = K.fallback_counts()
    with caplog.at_level("INFO", logger="greenprune.kernels"):
        assert K.lm_head_argmax(h, w).tolist() == list(range(7))
        y = K.swiglu_ffn(h, torch.cat([w[:20], w[20:40]]), w[:20].T.contiguous())
        torch.testing.assert_close(y, ref.swiglu_ffn(h, torch.cat([w[:20], w[20:40]]), w[:20].T.contiguous()))
        kl = K.kl_divergence(h, w, h, w[:40], torch.arange(40))
        assert kl.argmax_dense.tolist() == list(range(7))
    assert "16-byte aligned" in caplog.text
    assert K.fallback_counts(since=before) == {"lm_head_argmax": 1, "swiglu_ffn": 1, "kl_divergence": 1}


@pytest.mark.interpreter
def test_autotuned_launch_path(monkeypatch, gen):
    """The CUDA launch path (triton.autotune, grids from META, the granules of the GPU splits) run under the
    interpreter with one small config per kernel, so its plumbing is checked without a GPU."""
    import triton

    from greenprune.kernels import channel_stats, kl, swiglu, vocab

    for mod in (channel_stats, kl, swiglu, vocab):
        monkeypatch.setattr(mod, "use_autotune", lambda *t: True)
    one = lambda **kw: (lambda: [triton.Config(kw, num_warps=4, num_stages=2)])  # noqa: E731
    monkeypatch.setattr(channel_stats, "_reduce_configs", one(BLOCK_N=16, BLOCK_C=32))
    monkeypatch.setattr(channel_stats, "_row_configs", one(BLOCK_R=4, BLOCK_K=32))
    monkeypatch.setattr(kl, "_kl_configs", one(BLOCK_T=16, BLOCK_V=32, BLOCK_H=32))
    monkeypatch.setattr(swiglu, "_swiglu_configs", one(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2))
    monkeypatch.setattr(vocab, "_head_configs", one(BLOCK_T=16, BLOCK_V=32, BLOCK_H=32))

    x = torch.randn(70, 48, generator=gen)
    for got, want in zip(K.channel_moments(x), ref.channel_moments(x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    l2 = torch.rand(48, generator=gen)
    torch.testing.assert_close(K.wanda_scores(x, l2, 16), ref.wanda_scores(x, l2, 16), rtol=1e-5, atol=1e-4)
    g = torch.randn(70, 48, generator=gen)
    for dim, gs in ((0, 16), (1, 7)):
        torch.testing.assert_close(K.taylor_scores(x, g, dim, gs), ref.taylor_scores(x, g, dim, gs), rtol=1e-5, atol=1e-4)
    h, w = torch.randn(7, 48, generator=gen), torch.randn(300, 48, generator=gen)
    kept = torch.randperm(300, generator=gen)[:170]
    got, want = K.kl_divergence(h, w, h, w[kept] + 0.1, kept), ref.kl_divergence(h, w, h, w[kept] + 0.1, kept)
    torch.testing.assert_close(got.kl, want.kl, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.dropped_mass, want.dropped_mass, rtol=1e-4, atol=1e-4)
    wgu, wd = torch.randn(90, 48, generator=gen) / 7, torch.randn(48, 45, generator=gen) / 7
    torch.testing.assert_close(K.swiglu_ffn(h, wgu, wd), ref.swiglu_ffn(h, wgu, wd), rtol=1e-5, atol=1e-5)
    vals, _ = K.lm_head_topk(h, w[kept], kept, 3)
    torch.testing.assert_close(vals, ref.lm_head_topk(h, w[kept], kept, 3)[0], rtol=1e-5, atol=1e-4)
    logits = h @ w.T  # random logits, no margin: the chosen id's logit must be the maximum (to rounding)
    picked = logits.gather(1, K.lm_head_argmax(h, w[kept], kept)[:, None])[:, 0]
    torch.testing.assert_close(picked, logits[:, kept].amax(1), rtol=0, atol=1e-5)


def _compiles_like_eager(calls: dict) -> None:
    """Each call, compiled with fullgraph=True (aot_eager), gives the uncompiled call's outputs."""
    import torch._dynamo

    for name, make in calls.items():
        torch._dynamo.reset()
        want = make()
        got = torch.compile(make, backend="aot_eager", fullgraph=True)()
        for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.interpreter
def test_ops_compile_without_graph_breaks(gen):
    """torch.compile(fullgraph=True) traces every greenprune op through its fake impl (aot_eager: Dynamo and
    AOTAutograd on fake tensors, then the real kernels run) and gives the uncompiled op's results."""
    ops = torch.ops.greenprune
    x, w = torch.randn(2, 7, 48, generator=gen), torch.randn(53, 48, generator=gen)
    g, l2, wv = torch.randn(53, 48, generator=gen), torch.rand(48, generator=gen), torch.randn(131, 48, generator=gen)
    kept = torch.randperm(131, generator=gen)[:53].sort().values
    id_map = torch.full((131,), -1, dtype=torch.int32)
    id_map[kept] = torch.arange(53, dtype=torch.int32)
    ids = torch.randint(0, 131, (3, 5), generator=gen)
    wgu, wd = torch.randn(90, 48, generator=gen) / 7, torch.randn(48, 45, generator=gen) / 7
    calls = {
        "channel_moments": lambda: ops.channel_moments(x, None),
        "wanda_scores": lambda: ops.wanda_scores(w, l2, 16),
        "taylor_scores": lambda: (ops.taylor_scores(w, g, 0, 16, False), ops.taylor_scores(w, g, 1, 1, True)),
        "kl_divergence": lambda: ops.kl_divergence(x[0], wv, x[0], w, kept),
        "swiglu_ffn": lambda: ops.swiglu_ffn(x, wgu, wd),
        "remapped_embedding": lambda: ops.remapped_embedding(ids, id_map, w, 0),
        "lm_head_argmax": lambda: ops.lm_head_argmax(x, w, kept),
        "lm_head_topk": lambda: ops.lm_head_topk(x[0], w, kept, 5),
    }
    _compiles_like_eager(calls)


def test_measured_order_puts_the_measured_backends_first_by_size_class():
    table = {"GPU A": {"ops": {"lm_head_argmax": {"decode": ["cuda", "triton"], "bulk": ["triton", "torch", "cuda"]},
                               "swiglu_ffn": {"decode": ["torch", "bogus"]}}}}
    assert dispatch.measured_order("lm_head_argmax", "GPU A", 64, table) == ("cuda", "triton", "torch")
    assert dispatch.measured_order("lm_head_argmax", "GPU A", 65, table) == ("triton", "torch", "cuda")
    assert dispatch.measured_order("swiglu_ffn", "GPU A", 1, table) == ("torch", "cuda", "triton")  # unknown names dropped
    assert dispatch.measured_order("swiglu_ffn", "GPU B", 1, table) == dispatch.BACKENDS
    assert dispatch.call_rows(torch.zeros(2, 3, 576)) == 6 and dispatch.call_rows(torch.zeros(2, 7, dtype=torch.long)) == 14


def test_committed_dispatch_table_reads(monkeypatch):
    """The table shipped with the package parses (an unreadable one is logged and ignored, never fatal)."""
    dispatch._measured_table.cache_clear()
    assert isinstance(dispatch._measured_table(), dict)
    monkeypatch.setattr(dispatch, "DISPATCH_TABLE", dispatch.DISPATCH_TABLE.with_name("no-such-table.json"))
    dispatch._measured_table.cache_clear()
    assert dispatch._measured_table() == {}
    dispatch._measured_table.cache_clear()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_follows_the_measured_order_on_this_gpu(monkeypatch):
    h, w = torch.randn(1, 64, device="cuda"), torch.randn(100, 64, device="cuda")
    name = torch.cuda.get_device_name()
    for order, want in ((["torch"], "torch"), (["triton", "cuda"], "triton")):
        monkeypatch.setattr(dispatch, "_measured_table", lambda: {name: {"ops": {"lm_head_argmax": {"decode": order}}}})
        assert dispatch.backend_for("lm_head_argmax", h, w) == want
    monkeypatch.setattr(dispatch, "_measured_table", lambda: {name: {"ops": {"lm_head_argmax": {"bulk": ["torch"]}}}})
    assert dispatch.backend_for("lm_head_argmax", h, w) == ("cuda" if K.dispatch._cuda_op("lm_head_argmax") else "triton")


@pytest.mark.interpreter
@pytest.mark.parametrize("interpret", [True, False], ids=["triton", "torch"])
def test_dispatching_wrappers_compile_without_graph_breaks(gen, monkeypatch, interpret):
    """What models call (greenprune.kernels.swiglu_ffn etc., which pick a backend per call) traces with
    torch.compile(fullgraph=True): the choice is made once at trace time (assume_constant_result) and the chosen
    op (an opaque custom op, or the torch reference) is traced; results equal the uncompiled call."""
    if not interpret:
        monkeypatch.delenv("TRITON_INTERPRET")
    x, w, l2 = torch.randn(2, 7, 48, generator=gen), torch.randn(53, 48, generator=gen), torch.rand(48, generator=gen)
    wgu, wd = torch.randn(90, 48, generator=gen) / 7, torch.randn(48, 45, generator=gen) / 7
    kept = torch.randperm(131, generator=gen)[:53].sort().values
    calls = {
        "channel_moments": lambda: tuple(K.channel_moments(x)),
        "wanda_scores": lambda: K.wanda_scores(w, l2, 1),
        "swiglu_ffn": lambda: K.swiglu_ffn(x, wgu, wd),
        "lm_head_argmax": lambda: K.lm_head_argmax(x, w, kept),
        "lm_head_topk": lambda: K.lm_head_topk(x[0], w, kept, 5),
    }
    _compiles_like_eager(calls)
