"""Recovery (LoRA self-distillation toward the dense model) on a tiny model with the real tokenizer and real
code: it lowers the held-out KL to the dense model, a resumed run equals an uninterrupted one, bad inputs fail
clearly, and training-free bias compensation saves and reloads with identical logits."""
import errno
import json
import sysconfig
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from greenprune.recovery import checkpoint
from greenprune.cli import main
from greenprune.errors import GreenpruneError
from greenprune.data.instructions import build_examples, example_blocks
from greenprune.modelio.load import load_model
from greenprune.planning.plan import PruningPlan
from greenprune.recovery.options import RecoverOptions
from greenprune.recovery.train import recover_model
from greenprune.recovery.job import run_recover
from greenprune.pruning.vocab_map import vocab_mapping

from helpers import tiny_model

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "colorsys.py", "heapq.py", "calendar.py",
         "string.py", "random.py", "statistics.py", "fractions.py")
FAST = ["--calib-tokens", "256", "--eval-tokens", "256", "--seq-len", "64", "--nextline-samples", "0",
        "--eval-data", "pypkg:json", "--no-progress", "--vocab-extra", "0"]


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("code")
    for name in FILES:
        (d / name).write_text((STDLIB / name).read_text())
    return d


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory, real_tokenizer):
    """A tiny Llama with larger random weights than the default init, so its outputs are far from uniform."""
    d = tmp_path_factory.mktemp("dense") / "model"
    m = tiny_model(vocab_size=len(real_tokenizer), layers=2, hidden=64, ffn=128, heads=4, kv_heads=2,
                   initializer_range=0.08)
    m.save_pretrained(d)
    real_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, dense_dir, code_dir):
    out = tmp_path_factory.mktemp("pruned") / "model"
    assert main(["prune", "--model", str(dense_dir), "--ratio", "0.3", "--align", "16", "--method", "uniform",
                 "--vocab", "--data", str(code_dir), "--out", str(out), "--no-eval", *FAST]) == 0
    return out


def opts(code_dir, **kw):
    base = RecoverOptions(data=(str(code_dir),), eval_data=("pypkg:json",), steps=6, lr=2e-3, rank=4, batch_tokens=128,
                          seq_len=64, checkpoint_every=2, eval_tokens=0, progress=False,
                          ce_weight=0.0)  # pure self-distillation: the tiny dense model is random, so CE on code pulls away from it
    return replace(base, **kw)


def test_recovery_lowers_heldout_kl_and_saves_a_loadable_model(tmp_path, pruned_dir, dense_dir, code_dir):
    out = tmp_path / "recovered"
    rep = run_recover(opts(code_dir, model=str(pruned_dir), reference=str(dense_dir), steps=60, lr=2e-3, rank=8, eval_tokens=512,
                           out=str(out)))
    kl = rep["heldout_kl"]
    assert kl["after"] < 0.85 * kl["before"], kl  # held-out: the stdlib held-out split, not the training files
    assert rep["loss"][-1] < rep["loss"][0]
    m, tok = load_model(str(out))
    src, _ = load_model(str(pruned_dir))
    assert m.config.vocab_size == src.config.vocab_size and sum(p.numel() for p in m.parameters()) == rep["params"]
    assert not any("lora" in k for k in m.state_dict())
    for name in ("loss.png", "recovery_report.json", "plan.json", "greenprune_report.json", "tokenizer.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "greenprune_report.json").read_text())["source_model"] == str(dense_dir)
    assert not (tmp_path / "recovered.ckpt").exists()  # finished runs leave no checkpoint behind


def _trained(pruned_dir, dense_dir, o, ckpt, on_step=None):
    pruned, ptok = load_model(str(pruned_dir))
    dense, dtok = load_model(str(dense_dir))
    keep = vocab_mapping(pruned, ptok, dense, dtok, PruningPlan.load(pruned_dir / "plan.json"))
    ex, _ = build_examples(o.data[0], o.eval_data)
    blocks = example_blocks(ptok, ex, o.seq_len, o.max_data_tokens)
    return recover_model(pruned, dense, keep, blocks, o, ckpt, on_step)


def test_resume_after_interruption_gives_the_same_weights(tmp_path, pruned_dir, dense_dir, code_dir):
    o = opts(code_dir, steps=6, checkpoint_every=2)
    whole, h1 = _trained(pruned_dir, dense_dir, o, tmp_path / "a.ckpt")

    def interrupt(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trained(pruned_dir, dense_dir, o, tmp_path / "b.ckpt", interrupt)
    assert checkpoint.latest_step(tmp_path / "b.ckpt") == 2  # step 3 was done but not yet checkpointed
    resumed, h2 = _trained(pruned_dir, dense_dir, o, tmp_path / "b.ckpt")
    assert h1["loss"] == h2["loss"]
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    untrained, _ = load_model(str(pruned_dir))
    assert not torch.equal(a["model.layers.0.mlp.down_proj.weight"], untrained.state_dict()["model.layers.0.mlp.down_proj.weight"])
    _, ta, _ = checkpoint.load_checkpoint(tmp_path / "a.ckpt")
    _, tb, _ = checkpoint.load_checkpoint(tmp_path / "b.ckpt")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # identical adapters
    with pytest.raises(GreenpruneError, match="other recovery options"):
        _trained(pruned_dir, dense_dir, replace(o, lr=1e-3), tmp_path / "b.ckpt")


def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, pruned_dir, dense_dir, code_dir, monkeypatch):
    o = opts(code_dir, steps=6, checkpoint_every=2)
    real = checkpoint.save_file
    calls = {"n": 0}

    def failing(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (two files) is written, the second one fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", failing)
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(GreenpruneError, match=r"step 4.*No space left on device.*last good checkpoint \(step 2\) is intact"):
        _trained(pruned_dir, dense_dir, o, ckpt)
    assert checkpoint.latest_step(ckpt) == 2
    state, tensors, _ = checkpoint.load_checkpoint(ckpt)
    assert state["step"] == 2 and len(state["loss"]) == 2 and tensors
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest.json", "step-0000002"]  # no partial folder left
    monkeypatch.setattr(checkpoint, "save_file", real)
    _, h = _trained(pruned_dir, dense_dir, o, ckpt)  # space is back: the rerun resumes and finishes
    assert len(h["loss"]) == 6 and h["loss"][:2] == state["loss"]


def test_reference_that_does_not_match_is_refused(tmp_path, pruned_dir, code_dir, real_tokenizer):
    other = tmp_path / "other"  # same tokenizer, another width: not the model the plan was made from
    tiny_model(vocab_size=len(real_tokenizer), layers=2, hidden=32, ffn=64, heads=4, kv_heads=2).save_pretrained(other)
    real_tokenizer.save_pretrained(other)
    o = opts(code_dir, model=str(pruned_dir), out=str(tmp_path / "o"))
    with pytest.raises(GreenpruneError, match="hidden size"):
        run_recover(replace(o, reference=str(other)))
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(len(real_tokenizer))}  # a tokenizer with none of the pruned tokens
    t = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    wrong_vocab = tmp_path / "wrong_vocab"
    tiny_model(vocab_size=len(real_tokenizer), layers=2, hidden=64, ffn=128, heads=4, kv_heads=2).save_pretrained(wrong_vocab)
    PreTrainedTokenizerFast(tokenizer_object=t, bos_token="w1", eos_token="w2").save_pretrained(wrong_vocab)
    with pytest.raises(GreenpruneError, match="tokens the reference's lacks"):
        run_recover(replace(o, reference=str(wrong_vocab)))
    assert not (tmp_path / "o").exists()


def test_bad_data_and_missing_reference(tmp_path, pruned_dir, dense_dir, code_dir):
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"question": "no response field"}) + "\n")
    o = opts(code_dir, model=str(pruned_dir), reference=str(dense_dir), out=str(tmp_path / "o"))
    with pytest.raises(GreenpruneError, match="no usable rows"):
        run_recover(replace(o, data=(str(bad),)))
    bare = tmp_path / "bare"
    m, tok = load_model(str(pruned_dir))
    m.save_pretrained(bare)
    tok.save_pretrained(bare)
    with pytest.raises(GreenpruneError, match="pass --reference"):
        run_recover(replace(o, model=str(bare), reference=None))
    with pytest.raises(GreenpruneError, match="steps must be >= 1"):
        run_recover(replace(o, steps=0))
    assert not (tmp_path / "o").exists()


def test_cli_recover_and_prune_with_recover(tmp_path, pruned_dir, dense_dir, code_dir, capsys):
    good = tmp_path / "rows.jsonl"
    good.write_text("".join(json.dumps({"instruction": f"Write function number {i}.", "response":
                                        f"def f{i}(x):\n    return x * {i} + len(str(x))\n"}) + "\n" for i in range(40)))
    out = tmp_path / "rec"
    rc = main(["recover", "--model", str(pruned_dir), "--data", str(good), "--steps", "3", "--batch-tokens", "128",
               "--seq-len", "64", "--rank", "2", "--eval-tokens", "0", "--out", str(out), "--no-progress"])
    assert rc == 0 and "recovered" in capsys.readouterr().out
    rep = json.loads((out / "recovery_report.json").read_text())
    assert rep["reference"] == str(dense_dir) and rep["steps"] == 3 and len(rep["loss"]) == 3
    assert rep["options"]["ce_weight"] == 0.5  # the default loss: KL + 0.5 CE, its KL term logged apart
    assert len(rep["kl"]) == 3 and all(0 < k < total for k, total in zip(rep["kl"], rep["loss"]))
    assert main(["recover", "--model", str(pruned_dir), "--out", str(out), "--steps", "1", "--no-progress"]) == 2  # exists
    out2 = tmp_path / "pruned-recovered"
    assert main(["prune", "--model", str(dense_dir), "--ratio", "0.3", "--align", "16", "--method", "uniform", "--vocab",
                 "--data", str(code_dir), "--recover", "--recover-steps", "2", "--recover-batch-tokens", "128",
                 "--out", str(out2), *FAST]) == 0
    rep = json.loads((out2 / "greenprune_report.json").read_text())
    assert rep["recovery"]["steps"] == 2 and (out2 / "loss.png").exists() and "eval" in rep
    AutoModelForCausalLM.from_pretrained(out2)


@pytest.mark.parametrize("refit", [False, True])
def test_bias_compensation_saves_and_reloads_with_identical_logits(tmp_path, dense_dir, code_dir, refit):
    out = tmp_path / "b"
    args = ["prune", "--model", str(dense_dir), "--ratio", "0.3", "--align", "16", "--method", "uniform", "--vocab",
            "--data", str(code_dir), "--bias-compensation", "--out", str(out), "--no-eval", *FAST]
    assert main(args + (["--reconstruct"] if refit else [])) == 0
    m, tok = load_model(str(out))
    assert m.config.model_type == "greenprune_llama" and m.config.down_proj_bias
    bias = m.model.layers[0].mlp.down_proj.bias
    assert bias is not None and bias.abs().sum() > 0
    ids = tok("def f(x):\n    return x + 1\n", return_tensors="pt").input_ids
    again = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(m(ids).logits, again(ids).logits)
    plain = tmp_path / "plain"
    assert main(["prune", "--model", str(dense_dir), "--plan", str(out / "plan.json"), "--data", str(code_dir),
                 "--out", str(plain), "--no-eval", *FAST]) == 0
    p, _ = load_model(str(plain))
    assert not torch.equal(p(ids).logits, m(ids).logits)
