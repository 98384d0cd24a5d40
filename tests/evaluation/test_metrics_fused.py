"""The one-pass evaluation gives the numbers of the separate passes; next-line completion stops early exactly."""
import pytest
import torch
from helpers import tiny_model

from greenprune.evaluation.metrics import (
    LineDecided,
    agreement,
    bits_per_byte,
    pair_metrics,
)

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
