"""Training-free reconstruction: the least-squares refit is exact when nothing is removed and lowers the
layer output error (and the KL to the dense model) when channels are removed."""
import pytest
import torch

from greenprune.families import shape_of
from greenprune.scoring.scorers import score_model
from greenprune.planning.options import PlanOptions
from greenprune.planning.planner import make_plan
from greenprune.pruning.prune import prune_model
from greenprune.pruning.compensation import reconstruct_, refit

from helpers import tiny_model


def test_refit_keeping_everything_returns_the_weights():
    torch.manual_seed(0)
    x = torch.randn(200, 24)
    w = torch.randn(7, 24)
    torch.testing.assert_close(refit(w, x.T @ x, torch.arange(24), ridge=0.5), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ridge", [1e-3, 1.0])
def test_refit_lowers_output_error_on_correlated_channels(ridge):
    torch.manual_seed(1)
    base = torch.randn(500, 8)
    x = base @ torch.randn(8, 32)  # 32 channels spanning 8 dims: strongly correlated
    w = torch.randn(5, 32)
    keep = torch.arange(0, 32, 2)
    plain = ((x[:, keep] @ w[:, keep].T - x @ w.T) ** 2).mean()
    fitted = ((x[:, keep] @ refit(w, x.T @ x, keep, ridge).T - x @ w.T) ** 2).mean()
    assert fitted < 0.5 * plain


def test_reconstruction_lowers_kl_to_dense_on_held_out_tokens():
    torch.manual_seed(0)
    m = tiny_model(layers=3, hidden=64, ffn=128, heads=4, kv_heads=2)
    calib = torch.randint(0, 97, (16, 32))
    held = torch.randint(0, 97, (8, 32))
    shape = shape_of(m.config)
    scores = score_model(m, calib, "flap", progress=False, gram=True)
    plan = make_plan(shape, scores, PlanOptions(ratio=0.3, align=16, method="uniform"), None)
    plain = prune_model(m, plan)
    fixed = prune_model(m, plan)
    assert reconstruct_(fixed, m, plan, scores.stats, ridge=1.0) == 3

    def kl(p):
        with torch.no_grad():
            ld = torch.log_softmax(m(held).logits, -1)
            lp = torch.log_softmax(p(held).logits, -1)
        return (ld.exp() * (ld - lp)).sum(-1).mean().item()

    assert kl(fixed) < kl(plain)
