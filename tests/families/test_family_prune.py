"""The default prune command end to end on a tiny random model of every family (a real byte-level BPE tokenizer
of 300 tokens trained here, so vocabulary work stays small; small budgets): the output loads, its size is the
report's, and it runs."""
import json
from pathlib import Path

import pytest
import torch
from test_family_saves import CONFIGS
from transformers import AutoModelForCausalLM

import greenprune  # noqa: F401
from greenprune.cli import main
from greenprune.families import family_for

@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = [p.read_text() for p in sorted((Path(json.__file__).parent).glob("*.py"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


FAST = ["--calib-tokens", "256", "--eval-tokens", "256", "--seq-len", "64", "--nextline-samples", "2",
        "--eval-data", "pypkg:json", "--no-progress", "--kl-tokens", "32", "--drop-check-tokens", "32", "--data", "pypkg:json", "--no-vocab", "--no-eval"]


# evaluation and the vocabulary stage are left out (seconds each here; both are tested with the default model).
# Four layouts unlike Llama's (about 5 s each on a busy 2-core machine; Llama itself runs in tests/cli):
# Qwen2's biases, Gemma's four norms, Phi-3's fused projections and StarCoder2's ungated MLP (Mistral, Qwen3
# and Granite share Llama's code; their pruning and saves are in test_family_saves.py).
E2E = ("gemma3_text", "phi3", "qwen2", "starcoder2")


@pytest.mark.parametrize("kind", E2E)
def test_default_prune_runs_end_to_end(tmp_path, small_tokenizer, kind):
    real_tokenizer = small_tokenizer
    cfg = CONFIGS[kind]()
    cfg.vocab_size, cfg.intermediate_size = len(real_tokenizer), 96
    cfg.num_hidden_layers, cfg.tie_word_embeddings = 2, True
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:2]
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg)
    src = tmp_path / "dense"
    m.save_pretrained(src)
    real_tokenizer.save_pretrained(src)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(src), "--ratio", "0.15", "--align", "16", "--out", str(out), *FAST]) == 0
    rep = json.loads((out / "greenprune_report.json").read_text())
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert family_for(pruned) is family_for(m)
    assert sum(p.numel() for p in pruned.parameters()) == rep["params"]["pruned"] < rep["params"]["dense"]
    x = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        assert torch.isfinite(pruned(x).logits).all()
