"""remapped_embedding, lm_head_argmax, lm_head_topk (kernels/vocab.py) against the torch reference.

Integer outputs (kept ids, argmax / top-k ORIGINAL ids) must match exactly; inputs are built with clear
margins: orthogonal hidden states of norm 2, and for token t kept rows r_t,j = (3 - 0.5 j) h_t + noise, so the
top logits are ~12, 10, 8, ... with noise of std ~0.2 (margin_ok checks it on fp64 logits). Embedding rows are
copied, so they match bit for bit. Top-k values: both sides are fp32 dot products of the same inputs in a
different order: rtol/atol 1e-5 x scale (2e-3 for 16-bit inputs on the GPU, where H is longer).
"""
import pytest
import torch

from greenprune.kernels import (build_id_map, compact_logits, lm_head_argmax, lm_head_topk, reference as ref,
                                remap_ids, remapped_embedding, to_original_ids)

pytestmark = pytest.mark.interpreter
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def make_head(gen, T, H, V, K, k, dtype, ids=True):
    q, _ = torch.linalg.qr(torch.randn(H, T, generator=gen, dtype=torch.float64))
    h = 2 * q.T  # [T, H]
    w = 0.1 * torch.randn(K, H, generator=gen, dtype=torch.float64)  # kept rows [K, H]
    rows = torch.randperm(K, generator=gen)[: T * k].view(T, k)
    for j in range(k):
        w[rows[:, j]] += (3 - 0.5 * j) * h
    kept = torch.randperm(V, generator=gen)[:K] if ids else None
    logits = (h @ w.T).topk(min(k + 1, K), dim=1).values
    assert (logits[:, :-1] - logits[:, 1:]).min() > 0.5, "inputs lack a margin"
    return h.to(dtype), w.to(dtype), kept


def test_build_id_map_and_remap(gen):
    kept = torch.randperm(131, generator=gen)[:53]
    id_map = build_id_map(kept, 131)
    assert id_map.dtype == torch.int32 and (id_map >= 0).sum() == 53
    assert torch.equal(id_map[kept].long(), torch.arange(53))
    assert remap_ids(torch.tensor([kept[4], -1, 131]), id_map).tolist() == [4, -1, -1]
    assert torch.equal(to_original_ids(torch.tensor([4, 0]), kept), kept[[4, 0]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(3, 5), (11,)])
def test_remapped_embedding_matches_reference(shape, dtype, gen):
    kept = torch.randperm(131, generator=gen)[:53]
    id_map, w = build_id_map(kept, 131), torch.randn(53, 48, generator=gen).to(dtype)
    ids = kept[torch.randint(0, 53, shape, generator=gen)]
    got = remapped_embedding(ids, id_map, w)
    assert got.shape == (*shape, 48) and got.dtype == dtype
    assert torch.equal(got, w[id_map[ids].long()])
    assert torch.equal(got, ref.remapped_embedding(ids, id_map, w)[0])


def test_remapped_embedding_missing_ids(gen):
    kept = torch.randperm(131, generator=gen)[:53]
    dropped = int(torch.ones(131, dtype=torch.bool).index_fill_(0, kept, False).nonzero()[0])
    id_map, w = build_id_map(kept, 131), torch.randn(53, 48, generator=gen)
    ids = torch.stack([kept[0], torch.tensor(dropped), torch.tensor(131), torch.tensor(-2), kept[7]])
    with pytest.raises(ValueError, match="not in the pruned vocabulary"):
        remapped_embedding(ids, id_map, w)
    got = remapped_embedding(ids, id_map, w, on_missing="clamp", fallback=3)
    assert torch.equal(got, w[[0, 3, 3, 3, 7]])
    out, kept_ids = torch.ops.greenprune.remapped_embedding(ids, id_map, w, -1)  # the op itself: zeros, -1
    assert kept_ids.tolist() == [0, -1, -1, -1, 7] and not out[1:4].any()
    with pytest.raises(ValueError, match="fallback"):
        remapped_embedding(ids, id_map, w, on_missing="clamp", fallback=53)
    with pytest.raises(ValueError, match="on_missing"):
        remapped_embedding(ids, id_map, w, on_missing="skip")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("ids", [True, False])
def test_lm_head_argmax_matches_reference(dtype, ids, gen):
    h, w, kept = make_head(gen, 7, 48, 131, 53 if ids else 131, 2, dtype, ids)
    got = lm_head_argmax(h, w, kept)
    assert got.dtype == torch.int64 and torch.equal(got, ref.lm_head_argmax(h, w, kept))
    sampled = compact_logits(h, w).argmax(-1)  # the compact-logits path agrees once mapped back
    assert torch.equal(to_original_ids(sampled, kept), got)
    got3 = lm_head_argmax(h.view(1, 7, 48).expand(2, 7, 48), w, kept)  # [..., H] inputs, strided batch
    assert got3.shape == (2, 7) and torch.equal(got3[1], got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k", [1, 5])
def test_lm_head_topk_matches_reference(dtype, k, gen):
    h, w, kept = make_head(gen, 7, 48, 131, 53, k, dtype)
    vals, ids = lm_head_topk(h, w, kept, k)
    want_v, want_i = ref.lm_head_topk(h, w, kept, k)
    assert vals.shape == ids.shape == (7, k) and vals.dtype == torch.float32 and ids.dtype == torch.int64
    assert torch.equal(ids, want_i)
    torch.testing.assert_close(vals, want_v, rtol=1e-5, atol=1e-4)
    assert (vals[:, :-1] >= vals[:, 1:]).all()
    with pytest.raises(ValueError, match="k="):
        lm_head_topk(h, w, kept, 54)


def test_opcheck_vocab_ops(gen):
    h, w, kept = make_head(gen, 7, 48, 131, 53, 3, torch.float32)
    ops = torch.ops.greenprune
    torch.library.opcheck(ops.lm_head_argmax.default, (h, w, kept))
    torch.library.opcheck(ops.lm_head_topk.default, (h, w, kept, 3))
    id_map = build_id_map(kept, 131)
    torch.library.opcheck(ops.remapped_embedding.default, (kept[torch.tensor([[3, 1], [0, 2]])], id_map, w, 0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("T", [1, 300])
@pytest.mark.parametrize("mark", [pytest.param(0, marks=CUDA)])
def test_vocab_ops_cuda(dtype, T, mark, gen):
    h, w, kept = (t.cuda() for t in make_head(gen, T, 512, 30011, 10007, 4, dtype))
    assert torch.equal(lm_head_argmax(h, w, kept), ref.lm_head_argmax(h, w, kept))
    vals, ids = lm_head_topk(h, w, kept, 4)
    want_v, want_i = ref.lm_head_topk(h, w, kept, 4)
    assert torch.equal(ids, want_i)
    torch.testing.assert_close(vals, want_v, rtol=1e-4, atol=2e-3)
    id_map = build_id_map(kept, 30011)
    toks = kept[torch.randint(0, 10007, (T, 3), generator=gen).cuda()]
    assert torch.equal(remapped_embedding(toks, id_map, w), w[id_map[toks].long()])
