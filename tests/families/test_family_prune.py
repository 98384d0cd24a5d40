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


def _qwen2_dir(tmp_path, tokenizer, rows=None):
    cfg = CONFIGS["qwen2"]()
    cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.tie_word_embeddings = rows, 96, 2, True
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:2]
    torch.manual_seed(0)
    src = tmp_path / "dense"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    tokenizer.save_pretrained(src)
    return src


def test_vocabulary_pruning_refuses_tokens_past_the_embedding_before_any_work(tmp_path, small_tokenizer, capsys):
    """Qwen2's tokenizer class adds <|endoftext|> on loading: 301 tokens for 300 embedding rows. Before, the KL
    tables failed with 'index 300 is out of bounds' after the importance pass; now a one-line error comes
    first and names the token."""
    from transformers import AutoTokenizer

    src = _qwen2_dir(tmp_path, small_tokenizer, rows=len(small_tokenizer))
    loaded = AutoTokenizer.from_pretrained(src)
    assert len(loaded) > len(small_tokenizer)  # the situation this test is about
    fast = [a for a in FAST if a != "--no-vocab"]
    assert main(["prune", "--model", str(src), "--ratio", "0.15", "--out", str(tmp_path / "o"), *fast]) != 0
    err = capsys.readouterr().err
    assert "past the model's 300 embedding rows" in err and "<|endoftext|>" in err and "--no-vocab" in err
    assert not (tmp_path / "o").exists()


def test_qwen2_vocabulary_pruning_end_to_end(tmp_path, small_tokenizer):
    """With the embedding sized to the tokenizer as loaded, the vocabulary is pruned, saved and reloaded."""
    from transformers import AutoTokenizer

    probe = _qwen2_dir(tmp_path / "probe", small_tokenizer, rows=len(small_tokenizer))
    rows = len(AutoTokenizer.from_pretrained(probe))
    src = _qwen2_dir(tmp_path, small_tokenizer, rows=rows)
    out = tmp_path / "pruned"
    # calibrated on another package than the tokenizer was trained on, so some tokens go unused
    fast = [a if a != "pypkg:json" else "pypkg:html" for a in FAST if a != "--no-vocab"]
    assert main(["prune", "--model", str(src), "--ratio", "0.15", "--align", "16", "--vocab-extra", "0",
                 "--out", str(out), *fast]) == 0
    rep = json.loads((out / "greenprune_report.json").read_text())
    pruned = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert pruned.config.vocab_size == len(tok) < rows  # the vocabulary was pruned, tokenizer and rows agree
    assert sum(p.numel() for p in pruned.parameters()) == rep["params"]["pruned"]
    text = json.__doc__
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # still round-trips
    with torch.no_grad():
        assert torch.isfinite(pruned(torch.tensor([tok(text)["input_ids"][:32]])).logits).all()
