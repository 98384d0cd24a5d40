"""The one-pass evaluation gives the numbers of the separate passes; next-line completion stops early exactly
and batched completion gives the one-by-one tokens."""
import os

import pytest
import torch
from helpers import tiny_model

from greenprune.evaluation.cache import ResultCache
from greenprune.evaluation.metrics import (
    LineDecided,
    agreement,
    bits_per_byte,
    greedy_continuations,
    next_line_completions,
    next_line_samples,
    pair_metrics,
)
from greenprune.jobs.evaluate import evaluate_pair
from greenprune.jobs.options import JobOptions, Timer

TEXTS = ["def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n" * 3, "import os\nprint(os.getcwd())\n"]


@pytest.fixture(scope="module")
def pair(real_tokenizer):
    kw = dict(vocab_size=len(real_tokenizer), layers=2, hidden=32, ffn=48, heads=4, kv_heads=2)
    return tiny_model(seed=0, **kw), tiny_model(seed=1, **kw)


def test_pair_metrics_equal_the_separate_passes(pair, real_tokenizer):
    dense, pruned = pair
    d, p, a = pair_metrics(dense, real_tokenizer, pruned, real_tokenizer, TEXTS, None, seq_len=24, progress=False)
    d_ref = bits_per_byte(dense, real_tokenizer, TEXTS, 24, progress=False)
    p_ref = bits_per_byte(pruned, real_tokenizer, TEXTS, 24, progress=False)
    a_ref = agreement(dense, pruned, real_tokenizer, TEXTS, None, 24, progress=False)
    for got, ref in ((d, d_ref), (p, p_ref), (a, a_ref)):
        assert set(got) == set(ref)
        for k in ref:
            assert got[k] == pytest.approx(ref[k], rel=1e-5), k
    assert d["bpb"] != pytest.approx(p["bpb"], rel=1e-3)  # two different models: the test can tell them apart


def test_pair_metrics_uses_a_cached_dense_result(pair, real_tokenizer):
    dense, pruned = pair
    cached = {"bpb": 1.25, "tokens": 7, "bytes": 9, "nll_per_token": 0.5}
    d, p, _ = pair_metrics(dense, real_tokenizer, pruned, real_tokenizer, TEXTS, None, seq_len=24, progress=False,
                           dense_bpb=cached)
    assert d == cached
    assert p["bpb"] == pytest.approx(bits_per_byte(pruned, real_tokenizer, TEXTS, 24, progress=False)["bpb"], rel=1e-5)


@pytest.mark.parametrize("generated, done", [("\n    return a + b\n", True), ("\n    return a", False), ("", False),
                                             ("x = 1", True), ("\n", False)])
def test_line_decided(real_tokenizer, generated, done):
    prompt = real_tokenizer("def f():", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + real_tokenizer(generated, add_special_tokens=False)["input_ids"]])
    assert bool(LineDecided(real_tokenizer, len(prompt))(ids, None)[0]) is done


def test_evaluate_pair_reuses_the_cached_dense_results(pair, real_tokenizer, tmp_path):
    dense, pruned = pair
    opts = JobOptions(seq_len=24, nextline_samples=2, progress=False)
    code = "".join(f"def f{i}(x):\n    return x + {i}  # add\n" for i in range(8))
    held = {"a": TEXTS, "b": [code]}
    calls = []
    hook = dense.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        runs = []
        for _ in range(2):
            calls.clear()
            runs.append((evaluate_pair(dense, real_tokenizer, pruned, real_tokenizer, None, held, opts, Timer(),
                                       dense_identity={"path": "m", "files": "0"}, cache=ResultCache(tmp_path)),
                         len(calls)))
    finally:
        hook.remove()
    (first, n1), (second, n2) = runs
    assert len(list(tmp_path.glob("*.json"))) == 3  # two corpora's dense bits/byte, the dense next-line result
    for side in ("dense", "pruned"):
        for k in ("bpb", "next_line_exact_match"):
            assert second[side][k] == pytest.approx(first[side][k], rel=1e-6)
    assert n2 < n1  # the dense completions came from the cache


def test_batched_greedy_continuations_equal_one_by_one(pair, real_tokenizer):
    """Left padding changes nothing: prompts of different lengths continued 16 at a time give the tokens each
    gives alone (no early stop, so every row runs all 12 steps and padding sits under every one of them)."""
    dense, _ = pair
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, len(real_tokenizer), (n,), generator=g).tolist() for n in (3, 9, 17, 4, 30, 11)]
    batched = greedy_continuations(dense, real_tokenizer, prompts, 12, batch_size=16, stop_line=False)
    alone = [greedy_continuations(dense, real_tokenizer, [p], 12, batch_size=1, stop_line=False)[0] for p in prompts]
    assert batched == alone
    assert len(set(batched)) > 1 and all(batched)  # real continuations, not one repeated or empty string


def test_next_line_match_is_the_same_batched_and_one_by_one(default_dir):
    """On the real model, whose completions do start new lines: every scored line agrees."""
    from greenprune.modelio.load import load_model

    model, tok = load_model(str(default_dir))
    code = open(os.__file__, encoding="utf-8").read()
    samples = next_line_samples([code], 4)
    batched = next_line_completions(model, tok, samples, max_new_tokens=24, batch_size=16, progress=False)
    alone = [next_line_completions(model, tok, [s], max_new_tokens=24, batch_size=1, progress=False)[0]
             for s in samples]
    assert batched == alone
    assert sum(line is not None for line in batched) >= len(samples) // 2  # most completions started a line


def test_pair_metrics_under_vocabulary_pruning_share_the_dense_pass_per_window(real_tokenizer):
    """A text that tokenizes the same under the pruned vocabulary takes no dense pass of its own; one that meets a
    dropped token late takes one only for its windows from that token on. The numbers are the separate
    functions' either way."""
    from greenprune.pruning.vocab import close_vocabulary, prune_tokenizer

    inside = TEXTS[0]
    outside = inside + "import os\nprint(os.getcwd())  # zebra quokka\n"  # its dropped tokens come after `inside`
    kept = close_vocabulary(real_tokenizer, set(real_tokenizer(inside, add_special_tokens=False)["input_ids"])
                            | {real_tokenizer.bos_token_id or real_tokenizer.eos_token_id})
    ptok = prune_tokenizer(real_tokenizer, kept)
    dense_ids = real_tokenizer(outside, add_special_tokens=False)["input_ids"]
    mapped = [kept[i] for i in ptok(outside, add_special_tokens=False)["input_ids"]]
    assert mapped != dense_ids  # the second text does meet dropped tokens (else the test shows nothing)
    first_diff = next(i for i, (x, y) in enumerate(zip(dense_ids + [-1], mapped + [-2])) if x != y)
    leading = first_diff // 23  # windows of 23 tokens wholly before it: shared
    assert leading >= 1  # else the test shows nothing a per-text rule would not
    kw = dict(layers=2, hidden=32, ffn=48, heads=4, kv_heads=2)
    dense, pruned = tiny_model(seed=0, vocab_size=len(real_tokenizer), **kw), tiny_model(seed=1, vocab_size=len(kept), **kw)
    rows = []  # windows per dense layer call (equal-length windows run batched)
    hook = dense.model.layers[0].register_forward_hook(
        lambda m, a, o: rows.append((o[0] if isinstance(o, tuple) else o).shape[0]))
    try:
        d, p, a = pair_metrics(dense, real_tokenizer, pruned, ptok, [inside, outside], kept, seq_len=24, progress=False)
    finally:
        hook.remove()
    n_windows = {t: -(-len(ptok(t, add_special_tokens=False)["input_ids"]) // 23) for t in (inside, outside)}
    n_dense_own = -(-len(dense_ids) // 23) - leading
    assert sum(rows) == n_windows[inside] + n_windows[outside] + n_dense_own
    assert max(rows) > 1  # windows ran batched; agreement() below runs them one at a time
    d_ref = bits_per_byte(dense, real_tokenizer, [inside, outside], 24, progress=False)
    p_ref = bits_per_byte(pruned, ptok, [inside, outside], 24, progress=False)
    a_ref = agreement(dense, pruned, ptok, [inside, outside], kept, 24, progress=False)
    for got, ref in ((d, d_ref), (p, p_ref), (a, a_ref)):
        for k in ref:
            assert got[k] == pytest.approx(ref[k], rel=1e-5), k


@pytest.mark.parametrize("kind", ["granite", "gemma2"])
def test_pair_metrics_score_the_models_own_logits(real_tokenizer, kind):
    """Granite divides its head's output by logits_scaling and Gemma 2 soft-caps it: bits/byte and KL are those
    of the models' logits (model(x).logits), not of the bare head's, which differ by far more than the bound."""
    from transformers import AutoModelForCausalLM, Gemma2Config, GraniteConfig

    from greenprune.evaluation.metrics import text_windows

    kw = dict(vocab_size=len(real_tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    make = {"granite": lambda: GraniteConfig(**kw, logits_scaling=4.0),
            "gemma2": lambda: Gemma2Config(**kw, head_dim=8, final_logit_softcapping=0.5)}[kind]
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(AutoModelForCausalLM.from_config(make()).eval())
    dense, pruned = models
    d, p, a = pair_metrics(dense, real_tokenizer, pruned, real_tokenizer, TEXTS, None, seq_len=24, progress=False)
    for got, m in ((d, dense), (p, pruned)):
        assert got["bpb"] == pytest.approx(bits_per_byte(m, real_tokenizer, TEXTS, 24, progress=False)["bpb"], rel=1e-5)
    kl, n = 0.0, 0
    with torch.no_grad():
        for w in text_windows(real_tokenizer, TEXTS, 24):
            logp = dense(w[None]).logits[0].float().log_softmax(-1)
            logq = pruned(w[None]).logits[0].float().log_softmax(-1)
            kl += (logp.exp() * (logp - logq)).sum().item()
            n += len(w)
    assert a["kl"] == pytest.approx(kl / n, rel=1e-4)


def test_equal_length_batches_group_in_order_within_the_logits_budget(monkeypatch):
    from greenprune.evaluation import metrics

    monkeypatch.setattr(metrics, "EVAL_BATCH_LOGITS_BYTES", 4 * 10 * 8 * 3)  # three windows of 8 at vocabulary 10
    w = [torch.zeros(n, dtype=torch.long) for n in (8, 8, 8, 8, 5, 8, 8)]
    assert metrics.equal_length_batches(w, 10) == [[0, 1, 2], [3], [4], [5, 6]]
    assert metrics.equal_length_batches(w, 10**6) == [[i] for i in range(7)]  # over budget alone: one at a time
