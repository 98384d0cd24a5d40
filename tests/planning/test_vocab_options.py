"""Vocabulary options (planning/vocab_options.py): what each costs is what the physically pruned model gives, the
options stay within the budget, the probe documents are ones the calibration never read, and the planner trades
an option against FFN channels by its cost."""
import pytest
import torch
from helpers import tiny_model

from greenprune.data import corpus
from greenprune.errors import GreenpruneError
from greenprune.evaluation.metrics import bits_per_byte
from greenprune.families import shape_of
from greenprune.planning.kl_tables import LayerwiseKL, measure_kl_tables
from greenprune.planning.options import PlanOptions
from greenprune.planning.plan import LayerPlan, PruningPlan
from greenprune.planning.planner import make_plan
from greenprune.planning.vocab_options import VocabOption
from greenprune.pruning.vocab_cost import (MIN_STEP, _probe_nll, measure_vocab_options,
                                               option_extras, probe_snippets, probe_split)
from greenprune.pruning.prune import prune_model
from greenprune.pruning.vocab import close_vocabulary, prune_tokenizer, token_counts
from greenprune.scoring.scorers import score_model


def _vocab_only_plan(model, keep) -> PruningPlan:
    shape = shape_of(model.config)
    F, G = shape.intermediate_size, shape.num_key_value_heads
    layers = tuple(LayerPlan(i, F, G, tuple(range(F)), tuple(range(G))) for i in range(shape.num_hidden_layers))
    return PruningPlan(shape, layers, tuple(keep))


def _used(tok, docs) -> set[int]:
    counts = token_counts(tok, (d.text for d in docs), len(tok))
    return set(counts.nonzero()[0].tolist())


@pytest.fixture(scope="module")
def probe(real_tokenizer):
    calib, _ = corpus.calibration_and_heldout("stdlib")
    docs = corpus.hashed_order(calib)
    small = close_vocabulary(real_tokenizer, _used(real_tokenizer, docs[:3]))
    bigger = close_vocabulary(real_tokenizer, _used(real_tokenizer, docs[:30]))
    texts = probe_snippets(real_tokenizer, docs[40:70], 900, 64)
    return [small, bigger], texts


def test_probe_nll_is_the_physically_pruned_models(real_tokenizer, probe):
    """Each option's NLL (dense hidden states reused, renormalised over kept rows, changed windows re-run) equals
    bits_per_byte's NLL of the model with its embedding / head rows removed, under the pruned tokenizer."""
    keeps, texts = probe
    model = tiny_model(vocab_size=len(real_tokenizer), layers=2, hidden=64, ffn=96, heads=4, kv_heads=2)
    dense, nll, n_tokens, reruns = _probe_nll(model, real_tokenizer, texts, keeps, 64, progress=False)
    assert reruns > 0  # the small vocabulary lacks probe tokens: both paths are exercised
    ref = bits_per_byte(model, real_tokenizer, texts, 64, progress=False)
    assert n_tokens == ref["tokens"] and dense == pytest.approx(ref["nll_per_token"] * ref["tokens"], rel=1e-5)
    for keep, got in zip(keeps, nll):
        pruned = prune_model(model, _vocab_only_plan(model, keep))
        r = bits_per_byte(pruned, prune_tokenizer(real_tokenizer, keep), texts, 64, progress=False)
        assert got == pytest.approx(r["nll_per_token"] * r["tokens"], rel=1e-5)


def test_probe_nll_refuses_vocabularies_that_are_not_nested(real_tokenizer, probe):
    keeps, texts = probe
    model = tiny_model(vocab_size=len(real_tokenizer), layers=1, hidden=32, ffn=64, heads=2, kv_heads=1)
    with pytest.raises(GreenpruneError, match="nested"):
        _probe_nll(model, real_tokenizer, texts[:1], keeps[::-1], 64, progress=False)


def test_options_stay_within_the_budget_and_apart(real_tokenizer):
    shape = shape_of(tiny_model(vocab_size=49152, layers=2, hidden=64, ffn=96, heads=4, kv_heads=2).config)
    V, floor = shape.vocab_size, 18000
    for allowed in (10**9, 20000, 1000):
        extras = option_extras(shape, floor, V, allowed)
        removed = [V - floor - e for e in extras]
        widest = min(allowed, V - floor)
        assert max(removed) == widest and all(0 < r <= widest for r in removed)
        assert all(abs(a - b) >= MIN_STEP * widest for i, a in enumerate(removed) for b in removed[i + 1:])
        assert extras == sorted(extras)
    assert option_extras(shape, floor, V, 0) == [] and option_extras(shape, V, V, 10**9) == []
    with_margin = option_extras(shape, floor, V, 10**9, margin=2048)
    assert min(with_margin) == 2048 and max(V - floor - e for e in with_margin) == V - floor - 2048


def test_probe_documents_are_unread_and_apart():
    calib, _ = corpus.calibration_and_heldout("stdlib")
    read = {d.name for d in corpus.hashed_order(calib)[:5]}
    fit, probe_docs = probe_split(calib, read)
    names = {d.name for d in probe_docs}
    assert probe_docs and not names & read and not names & {d.name for d in fit}
    assert len(fit) + len(probe_docs) == len(calib)
    assert 0.15 < len(probe_docs) / len(calib) < 0.35
    assert probe_split(calib[:1], set()) == (calib[:1], [])


def test_measured_options_on_a_real_corpus(real_tokenizer, default_dir):
    """On the default model: options ordered widest removal first, whole vocabulary last, each within the budget,
    the probe fold's floor smaller than the whole corpus's, and a recorded cost for each option."""
    from greenprune.modelio.load import load_model
    from greenprune.pruning.vocab import model_token_ids

    model, tok = load_model(str(default_dir))
    calib, _ = corpus.calibration_and_heldout("stdlib")
    blocks = corpus.token_blocks(tok, calib, 64, 256)
    scores = score_model(model, blocks, "wanda", progress=False)
    shape = shape_of(model.config)
    read = corpus.block_documents(tok, calib, 64, 256)
    allowed = 20000
    options, record = measure_vocab_options(model, tok, shape, calib, read, scores.token_mass, allowed, 1,
                                            model_token_ids(model), 64, 512, progress=False)
    assert record["measured"] and record["fit_floor"] < record["floor"] and record["probe_tokens"] >= 0.9 * 512
    assert options[-1].keep is None and options[-1].cost == 0
    assert [o.removed_rows for o in options] == sorted((o.removed_rows for o in options), reverse=True)
    # the whole budget from the vocabulary is one of the options (within the merge parts of the last token added)
    assert allowed - 32 <= options[0].removed_rows <= allowed
    for o in options[:-1]:
        assert 0 < o.removed_rows <= allowed and len(o.keep) == shape.vocab_size - o.removed_rows
        assert set(model_token_ids(model)) <= set(o.keep) and o.keep == tuple(close_vocabulary(tok, o.keep))
    assert len({o.cost for o in options}) == len(options)


@pytest.fixture(scope="module")
def scored():
    torch.manual_seed(0)
    m = tiny_model(layers=4, hidden=64, ffn=128, heads=4, kv_heads=2, vocab_size=512)
    blocks = torch.randint(0, 512, (4, 16))
    return m, blocks, score_model(m, blocks, "wanda", progress=False)


@pytest.mark.parametrize("cost, picked", [(-1.0, "vocabulary"), (1e3, "whole")])
def test_the_planner_trades_vocabulary_rows_by_their_cost(scored, cost, picked):
    m, blocks, scores = scored
    shape = shape_of(m.config)
    opts = PlanOptions(ratio=0.1, align=16)
    tables = measure_kl_tables(LayerwiseKL(m, blocks), scores, shape, opts, progress=False)
    rows = -(-int(0.1 * shape.dense_params) // shape.vocab_params(1))  # the whole budget in vocabulary rows
    keep = tuple(range(shape.vocab_size - rows))
    options = [VocabOption(0, keep, cost, rows), VocabOption(None, None, 0.0, 0)]
    plan = make_plan(shape, scores, opts, None, tables, 0, options)
    assert plan.params() <= (1 - 0.1) * shape.dense_params
    if picked == "vocabulary":
        assert plan.vocab_keep == keep and plan.meta["vocab_option"]["cost"] == cost
        assert all(lp.ffn_width == 128 for lp in plan.layers)  # the budget came from the vocabulary alone
    else:
        assert plan.vocab_keep is None and plan.meta["vocab_option"]["extra"] is None
    with pytest.raises(GreenpruneError, match="not both"):
        make_plan(shape, scores, opts, list(keep), tables, 0, options)
