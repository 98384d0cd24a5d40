"""Plans for published shapes at parameter targets (the end-to-end benchmark's plans), checked on the CPU."""
import pytest

from greenprune.families import shape_of
from greenprune.errors import GreenpruneError
from greenprune.planning.shapes import LLAMA2_7B, LLAMA2_70B, VARIANTS, target_plan


def test_llama2_70b_dense_parameter_count():
    assert LLAMA2_70B.dense_params == 68_976_648_192  # Llama-2-70B's published 68.98B
    assert LLAMA2_7B.dense_params == 6_738_415_616  # Llama-2-7B's published 6.74B


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("keep", [49 / 70, 35 / 70])
def test_target_plans_land_just_under_the_target(keep, variant):
    s = LLAMA2_70B
    plan = target_plan(s, keep, variant)
    plan.validate()
    kept = plan.params() / s.dense_params
    widths = {lp.ffn_width for lp in plan.layers}
    assert len(widths) == 1 and next(iter(widths)) % 256 == 0
    assert kept <= keep
    # one more aligned step of FFN in every kept layer would exceed the target: the plan is as large as allowed
    w, kv = plan.layers[0].ffn_width, plan.layers[0].kv_heads
    bigger = s.total_params([(w + 256, kv)] * len(plan.layers), s.vocab_size)
    assert bigger > keep * s.dense_params
    if variant == "ffn+layers":
        assert len(plan.layers) == 72 and all(i >= 40 for i in plan.dropped_layers)
    else:
        assert len(plan.layers) == 80
    assert plan.layers[0].kv_heads == (4 if variant == "ffn+kv" else 8)


def test_bad_targets():
    with pytest.raises(GreenpruneError, match="keep fraction"):
        target_plan(LLAMA2_70B, 1.2)
    with pytest.raises(GreenpruneError, match="unknown variant"):
        target_plan(LLAMA2_70B, 0.5, "vocab")
    with pytest.raises(GreenpruneError, match="unreachable"):
        target_plan(LLAMA2_70B, 0.02, "ffn+layers")


def test_committed_default_model_plan_builds_the_pruned_shape():
    """benches/plans: the default model's config and 22% plan that bench_e2e builds (with random weights where
    the model is not installed) agree with each other and give a model of exactly the plan's parameter count."""
    import json
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from greenprune.planning.plan import PruningPlan
    from greenprune.pruning.prune import derive_config

    plans = Path(__file__).resolve().parents[2] / "benches" / "plans"
    cfg = LlamaConfig.from_dict(json.loads((plans / "smollm2_135m.config.json").read_text()))
    plan = PruningPlan.load(plans / "smollm2_135m_22.plan.json")
    plan.validate()
    assert shape_of(cfg) == plan.shape
    assert 0.22 <= 1 - plan.params() / plan.shape.dense_params < 0.23
    with torch.device("meta"):
        dense = AutoModelForCausalLM.from_config(cfg)
        pruned = AutoModelForCausalLM.from_config(derive_config(cfg, plan))
    assert sum(p.numel() for p in dense.parameters()) == plan.shape.dense_params
    assert sum(p.numel() for p in pruned.parameters()) == plan.params()
    assert pruned.config.vocab_size == len(plan.vocab_keep) < cfg.vocab_size
