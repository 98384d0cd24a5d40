"""kl_loss (kernels/kl_loss.py) against a plain-torch reference that materialises the logits, with gradients.

Inputs are fresh random draws (the seed comes from the test's node id, or GREENPRUNE_TEST_SEED). Both sides
compute in fp32 (fp64 inputs are rounded to fp32 by both): they differ only by summation order over chunks and
the vocabulary, ~1e-6 relative, so rtol 1e-4 / atol 1e-5 on the loss and on every gradient element.
"""
import pytest
import torch

from greenprune.kernels import kl_loss


def reference(hd, wd, hp, wp, kept, weights, labels, ce_weight):
    ld = hd.detach().float() @ wd.detach().float().T
    if kept is not None:
        ld = ld[:, kept]
    logp = torch.log_softmax(ld, -1)
    logq = torch.log_softmax(hp.float() @ wp.float().T, -1)
    per_tok = (logp.exp() * (logp - logq)).sum(-1)
    if labels is not None:
        ce = torch.nn.functional.cross_entropy(hp.float() @ wp.float().T, labels, reduction="none", ignore_index=-100)
        per_tok = per_tok + ce_weight * ce
    w = torch.ones_like(per_tok) if weights is None else weights
    return (w * per_tok).sum() / w.sum()


@pytest.mark.parametrize("T,H,Hp,V,K,chunk,pruned_vocab,use_w,use_ce", [
    (1, 8, 8, 16, 16, 4, False, False, False),
    (37, 16, 16, 50, 50, 8, False, True, False),
    (37, 16, 12, 50, 29, 5, True, True, True),
    (64, 24, 24, 101, 63, 64, True, False, True),
    (65, 24, 24, 101, 63, 1000, True, True, False),
])
def test_kl_loss_matches_reference(gen, T, H, Hp, V, K, chunk, pruned_vocab, use_w, use_ce):
    hd = torch.randn(T, H, generator=gen)
    wd = torch.randn(V, H, generator=gen) * 0.7
    kept = torch.randperm(V, generator=gen)[:K] if pruned_vocab else None
    hp0 = torch.randn(T, Hp, generator=gen)
    wp0 = torch.randn(K, Hp, generator=gen) * 0.7
    weights = torch.rand(T, generator=gen) * (torch.rand(T, generator=gen) > 0.2) + (1e-3 if T == 1 else 0) if use_w else None
    labels = torch.randint(0, K, (T,), generator=gen) if use_ce else None
    if labels is not None and T > 3:
        labels[::3] = -100
    got_args = [t.clone().requires_grad_(True) for t in (hp0, wp0)]
    want_args = [t.clone().requires_grad_(True) for t in (hp0, wp0)]
    got = kl_loss(hd, wd, got_args[0], got_args[1], kept, weights, labels, 0.5 if use_ce else 0.0, chunk=chunk)
    want = reference(hd, wd, want_args[0], want_args[1], kept, weights, labels, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    g = torch.randn((), generator=gen)  # a non-unit upstream gradient
    (got * g).backward()
    (want * g).backward()
    for a, b in zip(got_args, want_args):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_kl_loss_parts_give_the_kl_term_of_a_loss_with_cross_entropy(gen):
    T, H, V, K = 33, 16, 40, 25
    hd, wd = torch.randn(T, H, generator=gen), torch.randn(V, H, generator=gen)
    kept = torch.randperm(V, generator=gen)[:K]
    hp = torch.randn(T, H, generator=gen).requires_grad_(True)
    wp = torch.randn(K, H, generator=gen)
    labels = torch.randint(0, K, (T,), generator=gen)
    total, kl = kl_loss(hd, wd, hp, wp, kept, labels=labels, ce_weight=0.5, chunk=7, parts=True)
    torch.testing.assert_close(kl, kl_loss(hd, wd, hp, wp, kept, chunk=7), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, kl_loss(hd, wd, hp, wp, kept, labels=labels, ce_weight=0.5), rtol=1e-5, atol=1e-6)
    assert total.item() > kl.item() > 0 and not kl.requires_grad
    total.backward()  # the loss stays differentiable when its parts are asked for
    assert hp.grad is not None and hp.grad.abs().sum() > 0


def test_kl_loss_is_zero_for_identical_models_and_positive_otherwise(gen):
    hd, wd = torch.randn(20, 8, generator=gen), torch.randn(30, 8, generator=gen)
    kept = torch.arange(0, 30, 2)
    same = kl_loss(hd, wd, hd.clone(), wd[kept].clone(), kept)
    assert abs(same.item()) < 1e-6
    other = kl_loss(hd, wd, hd + 0.5 * torch.randn(20, 8, generator=gen), wd[kept], kept)
    assert other.item() > 1e-3


def test_kl_loss_gradient_flows_only_into_the_pruned_side(gen):
    hd = torch.randn(10, 8, generator=gen).requires_grad_(True)
    wd = torch.randn(12, 8, generator=gen).requires_grad_(True)
    hp = torch.randn(10, 8, generator=gen).requires_grad_(True)
    kl_loss(hd, wd, hp, wd.detach().clone()).backward()
    assert hd.grad is None and wd.grad is None and hp.grad is not None and hp.grad.abs().sum() > 0


def test_kl_loss_rejects_mismatched_shapes(gen):
    hd, wd = torch.randn(4, 8, generator=gen), torch.randn(12, 8, generator=gen)
    with pytest.raises(ValueError, match="kept_ids is needed"):
        kl_loss(hd, wd, hd, wd[:5])
    with pytest.raises(ValueError, match="dense id"):
        kl_loss(hd, wd, hd, wd[:2], torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="tokens"):
        kl_loss(hd, wd, hd[:3], wd)
