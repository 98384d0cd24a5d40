"""The one-pass evaluation gives the numbers of the separate passes; next-line completion stops early exactly."""
import pytest
import torch
from helpers import tiny_model

from greenprune.evaluation.cache import ResultCache
from greenprune.evaluation.metrics import (
    LineDecided,
    agreement,
    bits_per_byte,
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
