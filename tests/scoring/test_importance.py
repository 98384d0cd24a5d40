"""Importance scores: the output-error scorer's quadratic form is the real output energy it claims, its greedy
order beats the diagonal-only order where channels cancel, the dense token mass is the model's own output
probability, and `auto` picks a scorer by memory."""
import itertools

import pytest
import torch

from greenprune.families import shape_of
from greenprune.errors import GreenpruneError
from greenprune.scoring.stats import collect_activation_stats
from greenprune.scoring.scorers import get_scorer, greedy_removal_order, resolve_scorer_name, score_model
from greenprune.planning.shapes import LLAMA2_7B, LLAMA2_70B

from helpers import tiny_model


@pytest.fixture(scope="module")
def model_and_blocks():
    torch.manual_seed(0)
    m = tiny_model(layers=2, hidden=32, ffn=24, heads=4, kv_heads=2)
    return m, torch.randint(0, 97, (3, 20))


def test_output_error_form_is_the_removed_channels_output_energy(model_and_blocks):
    m, blocks = model_and_blocks
    stats, _ = collect_activation_stats(m, blocks, progress=False, gram=True)
    xs = []
    h = m.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda mod, a: xs.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        m(blocks, use_cache=False)
    h.remove()
    x = torch.cat(xs).double()
    w = m.model.layers[1].mlp.down_proj.weight.double()
    form = stats[1].ffn_gram.double() * (w.T @ w)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        r = torch.randperm(w.shape[1], generator=gen)[:7]
        ind = torch.zeros(w.shape[1], dtype=torch.float64)
        ind[r] = 1
        energy = (x[:, r] @ w[:, r].T).pow(2).sum()
        assert (ind @ form @ ind).item() == pytest.approx(energy.item(), rel=1e-4)


def _cost(m: torch.Tensor, removed) -> float:
    ind = torch.zeros(m.shape[0], dtype=torch.float64)
    ind[list(removed)] = 1
    return (ind @ m @ ind).item()


def test_greedy_order_each_step_adds_least_and_beats_the_diagonal_where_channels_cancel():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 400, generator=gen, dtype=torch.float64)
    a = 1.5 * a / a.norm(dim=1, keepdim=True)  # the channels' outputs, norm 1.5, nearly orthogonal
    a[0] /= 1.5  # the smallest channel
    a[1] = -2 * a[0] + 0.01 * a[1]  # large alone, but it cancels most of channel 0
    m = a @ a.T
    score = greedy_removal_order(m)
    order = torch.argsort(score).tolist()  # removal order, least important first
    assert sorted(order) == list(range(6))
    for k in range(6):
        done = order[:k]
        best = min(_cost(m, done + [j]) for j in range(6) if j not in done)
        assert _cost(m, done + [order[k]]) == pytest.approx(best)
    diag_order = torch.argsort(m.diagonal()).tolist()
    assert diag_order[0] == 0 and diag_order[-1] == 1  # the diagonal (Wanda-sp / FLAP-like) keeps channel 1 last
    assert order[:2] == [0, 1]  # with the cross term, 1 goes right after 0
    best_pair = min(itertools.combinations(range(6), 2), key=lambda p: _cost(m, p))
    assert set(best_pair) == {0, 1} and _cost(m, order[:2]) < 0.5 * _cost(m, diag_order[:2])


def test_token_mass_is_the_dense_output_probability_summed_over_positions(model_and_blocks):
    m, blocks = model_and_blocks
    _, mass = collect_activation_stats(m, blocks, batch_size=2, progress=False)
    with torch.no_grad():
        expected = m(blocks, use_cache=False).logits.double().softmax(-1).sum((0, 1))
    assert mass.dtype == torch.float64 and mass.shape == (97,)
    torch.testing.assert_close(mass, expected, rtol=1e-5, atol=1e-6)
    assert mass.sum().item() == pytest.approx(blocks.numel(), rel=1e-6)
    assert score_model(m, blocks, "flap", progress=False).token_mass is not None


def test_auto_scorer_uses_output_error_where_the_grams_fit_and_flap_otherwise(model_and_blocks):
    m, blocks = model_and_blocks
    tiny = shape_of(m.config)
    assert resolve_scorer_name("auto", tiny) == "output-error"
    assert resolve_scorer_name("auto", LLAMA2_7B) == "flap"  # 32 x 11008^2 float32 Grams: 15.5 GB
    assert resolve_scorer_name("auto", LLAMA2_70B) == "flap"
    assert resolve_scorer_name("wanda", LLAMA2_7B) == "wanda"
    assert score_model(m, blocks, "auto", progress=False).scorer == "output-error"
    with pytest.raises(GreenpruneError, match="auto"):
        get_scorer("nope")


def test_taylor_scores_are_weight_times_gradient_sums(model_and_blocks):
    """The taylor scorer (through greenprune.kernels.taylor_scores) equals |w * dL/dw| summed by hand over each FFN
    channel's gate/up rows and down column, and per KV group over o_proj's columns, with dL/dw of the LM loss
    summed over the scorer's batches of 4 blocks."""
    import copy

    m, _ = model_and_blocks
    blocks = torch.randint(0, 97, (6, 20), generator=torch.Generator().manual_seed(1))  # two batches: 4 + 2
    got = score_model(copy.deepcopy(m), blocks, "taylor", progress=False)
    ref = copy.deepcopy(m)
    for p in ref.parameters():
        p.requires_grad_(True)
    loss = 0
    for s in (0, 4):
        x = blocks[s : s + 4]
        logits = ref(x, use_cache=False).logits.float()
        loss = loss + torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), x[:, 1:].reshape(-1))
    loss.backward()
    shape = shape_of(m.config)
    for i, layer in enumerate(ref.model.layers):
        t = lambda w: (w * w.grad).abs()  # noqa: E731
        ffn = t(layer.mlp.gate_proj.weight).sum(1) + t(layer.mlp.up_proj.weight).sum(1) + t(layer.mlp.down_proj.weight).sum(0)
        kv = t(layer.self_attn.o_proj.weight).sum(0).view(shape.num_key_value_heads, -1).sum(1)
        torch.testing.assert_close(got.ffn[i], ffn.detach(), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(got.kv[i], kv.detach(), rtol=1e-4, atol=1e-7)
        assert got.ffn[i].shape == (24,) and got.kv[i].shape == (2,)


def test_bf16_statistics_pass_scores_the_fp32_weights_and_leaves_the_model_as_it_was(model_and_blocks):
    """score_model(dtype=bfloat16) runs the statistics pass on a bf16 copy: the model stays fp32 and unchanged, the
    statistics stay fp32/fp64 and within bf16 rounding of the fp32 pass, and a gradient scorer ignores the dtype."""
    m, blocks = model_and_blocks
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ref = score_model(m, blocks, "output-error", progress=False, gram=True)
    low = score_model(m, blocks, "output-error", progress=False, gram=True, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    for a, b in zip(ref.stats, low.stats):
        assert b.ffn_gram.dtype == torch.float32
        assert not torch.equal(a.ffn_gram, b.ffn_gram)  # the pass did run in bf16
        assert (a.ffn_gram - b.ffn_gram).norm() <= 0.05 * a.ffn_gram.norm()
    assert low.token_mass.dtype == torch.float64
    assert (low.token_mass - ref.token_mass).abs().sum() <= 0.02 * ref.token_mass.sum()
    taylor = score_model(m, blocks, "taylor", progress=False)
    taylor_low = score_model(m, blocks, "taylor", progress=False, dtype=torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(taylor.ffn, taylor_low.ffn))


def test_a_bad_stats_dtype_is_refused_before_the_model_loads(tmp_path):
    from greenprune.jobs.options import JobOptions
    from greenprune.jobs.prune import run_prune

    with pytest.raises(GreenpruneError, match="--stats-dtype"):
        run_prune(JobOptions(model=str(tmp_path / "missing"), stats_dtype="float8", out=str(tmp_path / "out")))
