"""The command line end to end on a tiny model (real tokenizer, real files), and its bad-input errors."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from greenprune.cli import main

FAST = ["--calib-tokens", "256", "--eval-tokens", "256", "--seq-len", "64", "--nextline-samples", "2",
        "--eval-data", "pypkg:json", "--no-progress"]
TINY_VOCAB = ["--vocab-extra", "0"]  # the tiny model is mostly vocabulary: no extra tokens, or 30% is unreachable


def run_cli(*args):
    """The installed console entry point in a subprocess: exit code, stdout, stderr."""
    p = subprocess.run([sys.executable, "-m", "greenprune.cli", *args], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def test_extra_vocabulary_that_makes_the_budget_unreachable_is_named(tmp_path, tiny_dir):
    args = ["prune", "--model", str(tiny_dir), "--ratio", "0.3", "--align", "16", "--vocab", "--kl-tokens", "128",
            "--out", str(tmp_path / "o"), *FAST]
    rc, _, err = run_cli(*args, "--vocab-extra", "30000")
    assert rc == 2 and "unreachable" in err and "--vocab-extra 30000" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", ["unified", "uniform"])
def test_prune_end_to_end_writes_a_loadable_model_and_report(tmp_path, tiny_dir, method):
    out = tmp_path / "pruned"
    # the tiny model's embedding (SmolLM2's 49k vocabulary) dominates: 30% needs vocabulary pruning
    rc = main(["prune", "--model", str(tiny_dir), "--ratio", "0.3", "--align", "16", "--method", method, "--vocab",
               "--kl-tokens", "128", "--out", str(out), *FAST, *TINY_VOCAB])
    assert rc == 0
    rep = json.loads((out / "greenprune_report.json").read_text())
    for path in (("params", "dense"), ("params", "pruned"), ("plan",), ("eval", "dense", "bpb"), ("eval", "pruned", "bpb"),
                 ("eval", "pruned", "kl"), ("eval", "pruned", "top1_agreement"), ("timings_s",)):
        d = rep
        for k in path:
            d = d[k]
    assert rep["params"]["pruned"] <= 0.7 * rep["params"]["dense"]
    m = AutoModelForCausalLM.from_pretrained(out)
    # defaults: the output-error scorer's Gram statistics are there, so the kept weights are refitted; per-layer
    # plans also get bias compensation (saved as greenprune_llama), uniform ones stay a plain llama config
    assert rep["compensation"] == {"refit": True, "bias": m.config.model_type == "greenprune_llama"}
    tok = AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in m.parameters()) == rep["params"]["pruned"]
    assert len(tok) == m.config.vocab_size == rep["plan"]["summary"]["vocab_size"]
    ids = tok("def f(x):\n    return x\n", return_tensors="pt").input_ids
    assert ids.max() < m.config.vocab_size
    # the same plan applied again through --plan gives the same weights
    out2 = tmp_path / "again"
    assert main(["prune", "--model", str(tiny_dir), "--plan", str(out / "plan.json"), "--out", str(out2), "--no-eval", *FAST, *TINY_VOCAB]) == 0
    m2 = AutoModelForCausalLM.from_pretrained(out2)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


@pytest.mark.parametrize("extra, refit", [(["--scorer", "wanda"], False), (["--no-reconstruct"], False),
                                           (["--scorer", "wanda", "--reconstruct"], True)])
def test_refit_default_follows_the_gram_statistics(tmp_path, tiny_dir, extra, refit):
    """The refit is on by default only where the scorer collected Gram statistics; the flags override it."""
    out = tmp_path / "p"
    assert main(["prune", "--model", str(tiny_dir), "--ratio", "0.3", "--align", "16", "--method", "uniform", "--vocab",
                 "--out", str(out), "--no-eval", *FAST, *TINY_VOCAB, *extra]) == 0
    rep = json.loads((out / "greenprune_report.json").read_text())
    assert rep["compensation"] == {"refit": refit, "bias": False}
    dense = AutoModelForCausalLM.from_pretrained(tiny_dir)
    m = AutoModelForCausalLM.from_pretrained(out)
    keep = rep["plan"]["layers"][0]["ffn_keep"]
    sliced = dense.model.layers[0].mlp.down_proj.weight[:, keep]
    assert torch.equal(m.model.layers[0].mlp.down_proj.weight, sliced) != refit  # refitted weights differ


def test_eval_subcommand_against_reference(tmp_path, tiny_dir):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_dir), "--ratio", "0.25", "--align", "16", "--method", "uniform", "--vocab",
                 "--out", str(out), "--no-eval", *FAST, *TINY_VOCAB]) == 0
    res_file = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--reference", str(tiny_dir), "--out", str(res_file), *FAST]) == 0
    res = json.loads(res_file.read_text())
    assert res["pruned"]["kl"] >= 0 and 0 <= res["pruned"]["top1_agreement"] <= 1
    assert res["params"]["pruned"] < res["params"]["dense"]


@pytest.mark.parametrize("args, msg", [
    (["--model", "./does/not/exist"], "model path not found"),
    (["--ratio", "1.5"], "--ratio must be in (0, 1)"),
    (["--ratio", "0"], "--ratio must be in (0, 1)"),
    (["--ratio", "0.95", "--method", "uniform"], "unreachable"),
    (["--data", "EMPTY"], "empty"),
    (["--plan", "NOPLAN"], "plan file not found"),
])
def test_bad_input_is_one_clear_line_and_nothing_written(tmp_path, tiny_dir, args, msg, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    args = [a.replace("EMPTY", str(tmp_path / "empty.jsonl")).replace("NOPLAN", str(tmp_path / "no.json")) for a in args]
    if "--model" not in args:
        args = ["--model", str(tiny_dir), *args]
    out = tmp_path / "out"
    argv = ["prune", *args, "--out", str(out), *FAST, *TINY_VOCAB]
    if msg == "model path not found":  # one case through a real process: exit code and stderr as a shell sees them
        rc, stdout, stderr = run_cli(*argv)
    else:  # the rest in this process: the same main(), without 5-9 s of interpreter and torch start-up each
        rc = main(argv)
        stderr = capsys.readouterr().err
    assert rc == 2
    lines = [l for l in stderr.splitlines() if l.startswith("greenprune: error:")]
    assert len(lines) == 1 and msg in lines[0], stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_existing_output_directory_is_refused_without_overwrite(tmp_path, tiny_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    rc, _, stderr = run_cli("prune", "--model", str(tiny_dir), "--out", str(out), *FAST, *TINY_VOCAB)
    assert rc == 2 and "exists" in stderr and "--overwrite" in stderr
    assert (out / "precious.txt").read_text() == "keep me"
