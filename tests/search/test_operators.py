"""Search space, seeds and operators: every child within the exact parameter budget; LLM replies validated."""
import random

import pytest
import torch

from greenprune.errors import GreenpruneError
from greenprune.search.llm_client import LocalChat, extract_json, extract_objects
from greenprune.search.operators import LLMOperator, NumericOperator, child_from_spec, seed_global_threshold, seed_owl, seed_uniform
from greenprune.families import ModelShape
from greenprune.planning.options import PlanOptions
from greenprune.search.search import Individual
from greenprune.search.space import Genome, SearchSpace

SHAPE = ModelShape(num_hidden_layers=8, hidden_size=64, intermediate_size=256, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, vocab_size=1000, tie_word_embeddings=True)


def space(ratio=0.3, reserve=0, **kw):
    return SearchSpace(SHAPE, 800, PlanOptions(ratio=ratio, align=16, **kw), reserve)


def tight(sp: SearchSpace, g: Genome) -> bool:
    kinds = ["ffn", "kv"] if sp.kv else ["ffn"]
    for i in range(sp.L):
        for w in kinds:
            h = sp.grow(g, i, w)
            if h is not None and sp.slack(h) >= 0:
                return False
    return True


def in_space(sp: SearchSpace, g: Genome) -> bool:
    return (sp.slack(g) >= 0 and all(f == 0 or f in sp.widths for f in g.ffn)
            and all(k in sp.kv_counts for f, k in zip(g.ffn, g.kv) if f) and any(g.ffn))


@pytest.mark.parametrize("kw", [{}, {"kv": True}, {"drop_layers": False}])
def test_repair_brings_any_genome_into_the_budget_tightly(kw):
    sp, rng = space(**kw), random.Random(0)
    for _ in range(30):
        g = Genome(tuple(rng.choice([0, 5, 17, 100, 256, 999]) for _ in range(8)), tuple(rng.choice([0, 1, 2, 7]) for _ in range(8)))
        r = sp.repair(g, rng)
        assert in_space(sp, r) and tight(sp, r)
        if not sp.drop_layers:
            assert all(r.ffn)


def test_impossible_budget_is_a_clear_error():
    with pytest.raises(GreenpruneError, match="unreachable"):
        space(ratio=0.7, drop_layers=False).validate()
    with pytest.raises(GreenpruneError, match="ratio"):
        space(ratio=1.5).validate()
    space(ratio=0.7).validate()  # reachable by removing layers


def test_seeds_fit_the_budget_and_follow_their_rules():
    sp, rng = space(0.4), random.Random(1)
    u = seed_uniform(sp, rng)
    assert in_space(sp, u) and max(u.ffn) - min(u.ffn) <= sp.align  # widths differ by at most one step
    scores = [torch.full((256,), float(i + 1)) + torch.rand(256) * 0.1 for i in range(8)]  # later layers matter more
    g = seed_global_threshold(sp, scores, rng)
    assert in_space(sp, g) and g.ffn[-1] > g.ffn[0]
    owl = seed_owl(sp, [0.01 * i for i in range(8)], rng)  # more outliers -> pruned less
    assert in_space(sp, owl) and owl.ffn[-1] >= owl.ffn[0]


def population(sp, n=6, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        g = sp.repair(Genome(tuple(rng.choice(sp.widths) for _ in range(8)), (2,) * 8), rng)
        out.append(Individual(g, 1.0 + i, "seed", 0))
    return out


def test_numeric_operator_children_stay_in_the_space_and_vary():
    sp, rng = space(0.3, kv=True), random.Random(2)
    pop = population(sp)
    kids = NumericOperator().propose(pop, 40, sp, rng)
    assert all(in_space(sp, g) and tight(sp, g) for g, _ in kids)
    assert {o for _, o in kids} == {"crossover", "mutation"}
    assert len({g.key for g, _ in kids}) > 20  # not the same child over and over


def test_llm_reply_entries_are_validated_and_repaired():
    sp, rng = space(), random.Random(3)
    pop = population(sp)
    g = child_from_spec({"parents": [0, 1], "cut": 4, "shrink": [0], "grow": [7]}, pop, sp, 6, rng)
    assert in_space(sp, g)
    bad = [[1, 2], {"parents": [9, 0]}, {"parents": [True, 0]}, {"parents": [0], "cut": 99},
           {"parents": [0], "shrink": [1, 2, 30]}, {"parents": [0], "shrink": "3"},
           {"parents": [0], "widths": [1, 2]}, {"parents": "0"}, {"cut": 3}]
    for spec in bad:
        with pytest.raises(GreenpruneError):
            child_from_spec(spec, pop, sp, 6, rng)
    w = child_from_spec({"parents": [0], "widths": [16] * 8}, pop, sp, 6, rng)  # a whole plan: widened back to the budget
    assert in_space(sp, w) and tight(sp, w)


def test_json_is_found_in_chatty_and_cut_off_replies():
    assert extract_json('Sure! ```json\n{"children": [{"parents": [0, 1]}]}\n```') == {"children": [{"parents": [0, 1]}]}
    assert extract_json("no json here") is None
    cut = '{"children": [{"parents": [0, 2], "cut": 3}, {"parents": [1, 2], "shrink": [2, 2, 2'
    assert extract_json(cut) == {"parents": [0, 2], "cut": 3}  # the outer object is cut off: no "children" list
    assert extract_objects(cut, "parents") == [{"parents": [0, 2], "cut": 3}]  # the complete entry is recovered
    assert extract_objects('{"a": {"parents": [1]}} {"parents": [2]}', "parents") == [{"parents": [1]}, {"parents": [2]}]


@pytest.fixture(scope="module")
def default_chat(default_dir):
    from greenprune.modelio.load import load_model

    m, t = load_model(str(default_dir))
    return LocalChat(m, t, "default")


def test_llm_operator_with_the_real_model_counts_invalid_replies_and_falls_back(default_chat):
    """A reply cut to 3 tokens cannot hold a valid child: the operator must count it and fall back."""
    sp, pop = space(), population(space())
    op = LLMOperator(default_chat, max_tokens=3)
    kids = op.propose(pop, 4, sp, random.Random(0))
    st = op.stats()
    assert len(kids) == 4 and all(in_space(sp, g) for g, _ in kids)
    assert st["calls"] == 1 and st["children_llm"] == 0 and st["children_fallback"] == 4
    assert st["invalid_replies"] + st["invalid_children"] >= 1
    assert all(o.startswith("llm-fallback-") for _, o in kids)


def test_llm_operator_real_reply_is_parsed_or_rejected_never_trusted(default_chat):
    sp, pop = space(), population(space())
    op = LLMOperator(default_chat, max_tokens=96, temperature=0.0)
    kids = op.propose(pop, 3, sp, random.Random(0))
    st = op.stats()
    assert st["children_llm"] + st["children_fallback"] == 3
    assert all(in_space(sp, g) and tight(sp, g) for g, _ in kids)
