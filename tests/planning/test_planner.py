"""Planning: the budget DP is exact and optimal, budgets hold, impossible ratios are refused."""
import itertools
import random

import pytest
import torch
from helpers import tiny_model

from greenprune.errors import GreenpruneError
from greenprune.families import shape_of
from greenprune.planning.kl_tables import LayerwiseKL, measure_kl_tables
from greenprune.planning.options import PlanOptions
from greenprune.planning.planner import _solve, check_layer_drops, make_plan
from greenprune.pruning.prune import prune_model
from greenprune.scoring.scorers import score_model


@pytest.mark.parametrize("seed", range(5))
def test_dp_matches_brute_force(seed):
    rng = random.Random(seed)
    layers = [[(rng.random(), rng.randint(0, 50), (i, j)) for j in range(rng.randint(1, 4))] + [(0.0, 0, (i, "keep"))]
              for i in range(4)]
    need = rng.randint(20, 120)
    best = None
    for combo in itertools.product(*layers):
        if sum(c[1] for c in combo) >= need and (best is None or sum(c[0] for c in combo) < best[0]):
            best = (sum(c[0] for c in combo), [c[2] for c in combo])
    picks = _solve(layers, need)
    if best is None:
        assert picks == []
    else:
        chosen = [next(o for o in opts if o[2] == p) for opts, p in zip(layers, picks)]
        assert sum(c[1] for c in chosen) >= need
        assert sum(c[0] for c in chosen) == pytest.approx(best[0])


def test_ffn_widths_are_aligned():
    shape = shape_of(tiny_model(ffn=200).config)
    w = PlanOptions(align=64, max_ffn_prune=0.75).widths(shape)
    assert w[0] == 200 and all(x % 64 == 0 for x in w[1:]) and min(w) >= 50


@pytest.fixture(scope="module")
def scored():
    torch.manual_seed(0)
    m = tiny_model(layers=4, hidden=64, ffn=128, heads=4, kv_heads=2)
    blocks = torch.randint(0, 97, (4, 16))
    return m, blocks, score_model(m, blocks, "wanda", progress=False)


@pytest.mark.parametrize("method", ["unified", "uniform", "layers"])
@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_plans_meet_the_budget(scored, method, ratio):
    m, blocks, scores = scored
    shape = shape_of(m.config)
    opts = PlanOptions(ratio=ratio, align=16, method=method)
    tables = measure_kl_tables(LayerwiseKL(m, blocks), scores, shape, opts, progress=False) if method == "unified" else None
    plan = make_plan(shape, scores, opts, None, tables)
    assert plan.params() <= (1 - ratio) * shape.dense_params
    assert all(lp.ffn_width % 16 == 0 or lp.ffn_width == 128 for lp in plan.layers)
    if method == "uniform":
        assert plan.is_uniform and not plan.dropped_layers


def test_layerwise_kl_is_zero_for_no_change_and_positive_otherwise(scored):
    m, blocks, scores = scored
    kl = LayerwiseKL(m, blocks)
    assert kl.kl(1, ffn_keep=range(128)) == pytest.approx(0.0, abs=1e-6)
    assert kl.kl(1, ffn_keep=range(64)) > 1e-6
    assert kl.kl(2, drop=True) > 1e-6


def test_layerwise_kl_matches_a_full_forward_of_the_changed_model(scored):
    """The cached partial forward must equal running the whole model with the same change."""
    m, blocks, scores = scored
    kl = LayerwiseKL(m, blocks)
    keep = list(range(0, 128, 2))
    mask = torch.zeros(128)
    mask[keep] = 1
    h = m.model.layers[2].mlp.down_proj.register_forward_pre_hook(lambda mod, a: (a[0] * mask,))
    with torch.no_grad():
        lp = torch.log_softmax(m(blocks).logits.float(), -1)
    h.remove()
    with torch.no_grad():
        ld = torch.log_softmax(m(blocks).logits.float(), -1)
    full = (ld.exp() * (ld - lp)).sum(-1).mean().item()
    assert kl.kl(2, ffn_keep=keep) == pytest.approx(full, rel=1e-4, abs=1e-7)


def test_layerwise_kl_is_the_kl_of_the_models_own_logits_under_logits_scaling():
    """Granite divides its head's output by logits_scaling: the KL tables and the whole-plan check must measure
    the distributions the model gives, not the bare head's (4x sharper here)."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, GraniteConfig

    from greenprune.planning.plan import identity_plan
    from greenprune.planning.planner import plan_kls

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(GraniteConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, logits_scaling=4.0, residual_multiplier=0.5, initializer_range=0.3)).eval()
    blocks = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    keep = list(range(0, 64, 2))
    mask = torch.zeros(64)
    mask[keep] = 1
    with torch.no_grad():
        ld = torch.log_softmax(m(blocks).logits.float(), -1)
        h = m.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda mod, a: (a[0] * mask,))
        lp = torch.log_softmax(m(blocks).logits.float(), -1)
        h.remove()
    full = (ld.exp() * (ld - lp)).sum(-1).mean().item()
    assert full > 1e-3  # a change the test can see
    assert LayerwiseKL(m, blocks).kl(1, ffn_keep=keep) == pytest.approx(full, rel=1e-4)
    plan = identity_plan(shape_of(m))
    narrowed = replace(plan, layers=tuple(replace(lp_, ffn_width=len(keep), ffn_keep=tuple(keep)) if lp_.index == 1
                                          else lp_ for lp_ in plan.layers))
    assert plan_kls(m, blocks, [narrowed])[0] == pytest.approx(full, rel=1e-4)


def test_bfloat16_replay_measures_the_same_kl_within_its_rounding():
    """The KL tables' bf16 replay (kl_dtype): no change is 0, a real change is the fp32 value within bf16's
    rounding, the model itself stays fp32 and untouched, and the tables say which precision measured them."""
    torch.manual_seed(0)
    m = tiny_model(layers=4, hidden=64, ffn=128, heads=4, kv_heads=2, initializer_range=0.1)
    blocks = torch.randint(0, 97, (4, 16))
    scores = score_model(m, blocks, "wanda", progress=False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    exact, low = LayerwiseKL(m, blocks), LayerwiseKL(m, blocks, dtype=torch.bfloat16)
    assert low.kl(1, ffn_keep=range(128)) == pytest.approx(0.0, abs=1e-6)
    for i, keep in ((0, range(64)), (3, range(0, 128, 3))):
        want = exact.kl(i, ffn_keep=keep)
        assert want > 1e-4
        assert low.kl(i, ffn_keep=keep) == pytest.approx(want, rel=0.1)
    assert low.kl(2, drop=True) == pytest.approx(exact.kl(2, drop=True), rel=0.1)
    assert next(m.parameters()).dtype == torch.float32
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    opts = PlanOptions(ratio=0.2, kl_levels=2, max_ffn_prune=0.5)
    assert measure_kl_tables(low, scores, shape_of(m), opts, progress=False)["replay_dtype"] == "bfloat16"
    assert measure_kl_tables(exact, scores, shape_of(m), opts, progress=False)["replay_dtype"] == "float32"


def test_bfloat16_replay_takes_its_logits_as_the_dense_ones_plus_the_head_on_the_change():
    """The 16-bit replay's head product on the change (LayerwiseKL.delta) gives the fp32 head product's KL within
    a bf16 rounding of the change, not of the logits (tolerance 2%, against the 10% of the replay itself), keeps
    "no change" at 0 (within the fp64 identity's 1e-6), and is off past DELTA_LOGITS_BYTES (then the fp32 product is used)."""
    from greenprune.planning import kl_tables
    torch.manual_seed(0)
    m = tiny_model(layers=4, hidden=64, ffn=128, heads=4, kv_heads=2, initializer_range=0.1)
    blocks = torch.randint(0, 97, (4, 16))
    low = LayerwiseKL(m, blocks, dtype=torch.bfloat16)
    assert low.delta and len(low.dense_logits) == len(low.replay)
    assert low.kl(2, ffn_keep=range(128)) == pytest.approx(0.0, abs=1e-6)
    for i, change in ((0, dict(ffn_keep=range(64))), (3, dict(ffn_keep=range(0, 128, 3))), (1, dict(drop=True))):
        low.delta = True
        via_change = low.kl(i, **change)
        low.delta = False
        via_fp32 = low.kl(i, **change)
        assert via_fp32 > 1e-4
        assert via_change == pytest.approx(via_fp32, rel=0.02)
    assert not LayerwiseKL(m, blocks).delta  # an fp32 replay has no rounding to avoid
    old = kl_tables.DELTA_LOGITS_BYTES
    try:
        kl_tables.DELTA_LOGITS_BYTES = 4 * 64 * 97 - 1  # one byte short of this replay's dense logits
        assert not LayerwiseKL(m, blocks, dtype=torch.bfloat16).delta
    finally:
        kl_tables.DELTA_LOGITS_BYTES = old


def test_kl_dtype_choices():
    from greenprune.precision import resolve_dtype

    m = tiny_model()
    assert resolve_dtype("float32", m) == torch.float32
    assert resolve_dtype("bfloat16", m) == torch.bfloat16
    assert resolve_dtype("auto", m) in (torch.float32, torch.bfloat16)  # measured on this CPU
    assert resolve_dtype("auto", m.to(torch.float16)) == torch.float16  # a 16-bit model replays as it is
    with pytest.raises(GreenpruneError, match="--kl-dtype"):
        PlanOptions(kl_dtype="float8").validate()


def test_kl_blocks_are_spread_over_the_calibration_blocks():
    from greenprune.jobs.prune import spread_blocks

    blocks = torch.arange(64 * 4).view(64, 4)
    picked = spread_blocks(blocks, 8)  # two blocks of 4 tokens: the first and the last, not blocks 0 and 1
    assert picked[:, 0].tolist() == [0, 63 * 4]
    assert spread_blocks(blocks, 3).shape == (1, 4)  # at least one block
    assert torch.equal(spread_blocks(blocks, 10_000), blocks)  # never more than there are, each once
    assert len(set(spread_blocks(blocks, 4 * 9)[:, 0].tolist())) == 9


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_unit_interval(scored, ratio):
    m, _, scores = scored
    with pytest.raises(GreenpruneError, match="must be in"):
        make_plan(shape_of(m.config), scores, PlanOptions(ratio=ratio, method="uniform"), None)


def test_unreachable_ratio_is_a_clear_error(scored):
    m, _, scores = scored
    shape = shape_of(m.config)
    with pytest.raises(GreenpruneError, match="unreachable"):
        make_plan(shape, scores, PlanOptions(ratio=0.9, align=16, method="uniform", max_ffn_prune=0.5), None)


def _kl_of_pruned(dense, pruned, blocks) -> float:
    """Mean per-token KL(dense || physically pruned model), full vocabulary, plain eager forwards."""
    with torch.no_grad():
        ld = torch.log_softmax(dense(blocks).logits.double(), -1)
        lp = torch.log_softmax(pruned(blocks).logits.double(), -1)
    return (ld.exp() * (ld - lp)).sum(-1).mean().item()


@pytest.mark.parametrize("drop_cost", [0.0, 1e3])
def test_layer_drop_check_keeps_the_plan_with_the_lower_measured_kl(scored, drop_cost):
    """Tables that make one layer's removal look free (or prohibitive) give a plan with (without) removal; the
    check re-solves without removal, measures both whole plans and keeps the lower: its KLs are those of the
    physically pruned models, and the dense model is left as it was."""
    m, blocks, scores = scored
    shape = shape_of(m.config)
    opts = PlanOptions(ratio=0.3, align=16)
    tables = measure_kl_tables(LayerwiseKL(m, blocks), scores, shape, opts, progress=False)
    tables["drop"] = [drop_cost if i == 2 else 1e3 for i in range(shape.num_hidden_layers)]
    plan = make_plan(shape, scores, opts, None, tables)
    assert plan.dropped_layers == ([2] if drop_cost == 0.0 else [])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    chosen, rec = check_layer_drops(m, blocks, scores, shape, opts, None, tables, plan)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not any(l.mlp.down_proj._forward_pre_hooks for l in m.model.layers)  # its masks are gone
    if drop_cost != 0.0:  # nothing removed: the check still measures, and the re-solved plan is the same
        assert chosen.dropped_layers == [] and rec["kl_with_layer_removal"] == pytest.approx(rec["kl_without"])
        return
    alt = make_plan(shape, scores, PlanOptions(ratio=0.3, align=16, drop_layers=False), None, {**tables, "drop": []})
    assert rec["kl_with_layer_removal"] == pytest.approx(_kl_of_pruned(m, prune_model(m, plan), blocks), rel=1e-3)
    assert rec["kl_without"] == pytest.approx(_kl_of_pruned(m, prune_model(m, alt), blocks), rel=1e-3)
    best = plan if rec["kl_with_layer_removal"] < rec["kl_without"] else alt
    assert chosen.to_dict() == best.to_dict() and rec["kept"] == ("with layer removal" if best is plan else "without layer removal")
    assert chosen.params() <= (1 - 0.3) * shape.dense_params


def test_bounded_depth_kl_is_exact_where_it_reaches_the_top_and_a_proxy_below(scored):
    """kl_depth N re-runs N layers above a change: exact when those are all the layers left; otherwise a
    different (proxy) number, still zero for no change; and its cost does not grow with the layers above."""
    m, blocks, scores = scored
    exact, proxy = LayerwiseKL(m, blocks), LayerwiseKL(m, blocks, depth=1)
    n = len(m.model.layers)
    keep = list(range(0, 128, 2))
    assert proxy.kl(n - 1, ffn_keep=keep) == pytest.approx(exact.kl(n - 1, ffn_keep=keep), rel=1e-5)
    assert proxy.kl(0, ffn_keep=range(128)) == pytest.approx(0.0, abs=1e-6)
    assert proxy.kl(0, ffn_keep=keep) > 1e-6
    assert proxy.kl(0, ffn_keep=keep) != pytest.approx(exact.kl(0, ffn_keep=keep), rel=1e-4)
    calls = []
    hooks = [l.register_forward_hook(lambda *a: calls.append(1)) for l in m.model.layers]
    try:
        proxy.kl(0, ffn_keep=keep)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == len(proxy.replay)  # one layer per batch, not n
    with pytest.raises(GreenpruneError, match="kl-depth"):
        PlanOptions(kl_depth=-1).validate()
