"""The plan object: JSON round trip, validation, resolution from scores."""
import json

import pytest
import torch

from greenprune.errors import GreenpruneError
from greenprune.planning.plan import LayerPlan, PruningPlan, identity_plan, resolve_plan
from greenprune.families import ModelShape

SHAPE = ModelShape(num_hidden_layers=3, hidden_size=48, intermediate_size=40, num_attention_heads=6,
                   num_key_value_heads=2, head_dim=8, vocab_size=97, tie_word_embeddings=True)


def test_json_round_trip(tmp_path):
    plan = PruningPlan(SHAPE, (LayerPlan(0, 8, 1, tuple(range(8)), (1,)), LayerPlan(2, 40, 2, tuple(range(40)), (0, 1))),
                       tuple(range(0, 97, 2)), {"method": "test"})
    plan.save(tmp_path / "p.json")
    again = PruningPlan.load(tmp_path / "p.json")
    assert again == plan
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["summary"]["layers_dropped"] == [1] and d["summary"]["params_pruned"] == plan.params()


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d.update(format="x"), "not a greenprune plan"),
    (lambda d: d["layers"].__setitem__(0, {**d["layers"][0], "ffn_width": 99}), "ffn_width"),
    (lambda d: d["layers"].__setitem__(0, {**d["layers"][0], "kv_heads": 0}), "kv_heads"),
    (lambda d: d["layers"].__setitem__(0, {**d["layers"][0], "ffn_keep": [3, 1] + list(range(4, 42))}), "ffn_keep"),
    (lambda d: d.update(layers=[]), "no decoder layer"),
    (lambda d: d.update(layers=d["layers"][::-1]), "increasing"),
    (lambda d: d.update(vocab_keep=[5, 2]), "vocab_keep"),
    (lambda d: d.pop("shape"), "malformed"),
])
def test_invalid_plans_are_refused(mutate, msg):
    d = identity_plan(SHAPE).to_dict()
    mutate(d)
    with pytest.raises(GreenpruneError, match=msg):
        PruningPlan.from_dict(d)


def test_missing_and_corrupt_plan_files(tmp_path):
    with pytest.raises(GreenpruneError, match="not found"):
        PruningPlan.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GreenpruneError, match="not valid JSON"):
        PruningPlan.load(tmp_path / "bad.json")


def test_widths_only_plan_resolves_to_top_scores():
    plan = PruningPlan(SHAPE, (LayerPlan(0, 3, 1), LayerPlan(1, 40, 2)))
    assert not plan.is_resolved
    ffn = [torch.arange(40.0), torch.zeros(40), torch.zeros(40)]
    kv = [torch.tensor([5.0, 1.0]), torch.ones(2), torch.ones(2)]
    r = resolve_plan(plan, ffn, kv)
    assert r.is_resolved
    assert r.layers[0].ffn_keep == (37, 38, 39) and r.layers[0].kv_keep == (0,)
    assert r.layers[1].ffn_keep == tuple(range(40))


def test_identity_plan_removes_nothing():
    p = identity_plan(SHAPE)
    assert p.params() == SHAPE.dense_params and p.ratio() == 0.0 and p.is_uniform


@pytest.mark.parametrize("tied", [True, False])
def test_vocabulary_share_of_removed_counts_rows_once_or_twice(tied):
    from dataclasses import replace

    shape = replace(SHAPE, tie_word_embeddings=tied)
    full = identity_plan(shape)
    assert full.vocab_share_of_removed() == 0.0  # nothing removed: no division by zero
    vocab_only = PruningPlan(shape, full.layers, tuple(range(0, 97, 2)))
    assert vocab_only.vocab_share_of_removed() == 1.0
    both = PruningPlan(shape, (full.layers[0], full.layers[2]), tuple(range(0, 97, 2)))  # and one layer dropped
    rows = (97 - 49) * 48 * (1 if tied else 2)
    assert both.vocab_share_of_removed() == round(rows / (shape.dense_params - both.params()), 4)
    assert both.to_dict()["summary"]["vocab_share_of_removed"] == both.vocab_share_of_removed()
