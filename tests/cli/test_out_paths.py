"""Output paths never destroy an input, saves are atomic under a full disk and signals, and scratch of killed runs
is removed: real files, the real command line, the source model hashed before and after."""
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import resource
from transformers import AutoModelForCausalLM, AutoTokenizer

from greenprune.cli import main, terminate_as_interrupt
from greenprune.errors import GreenpruneError
from greenprune.modelio.save import save_model_dir

FAST = ["--calib-tokens", "128", "--eval-tokens", "128", "--seq-len", "64", "--nextline-samples", "0", "--no-progress"]
# 1.5% fits in the FFNs of the tiny model (mostly vocabulary) without the vocabulary pass, which takes seconds
PRUNE = ["--ratio", "0.015", "--align", "16", "--method", "uniform", "--no-vocab", "--no-eval", *FAST]


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def model(tmp_path, tiny_dir):
    """A private copy of the tiny model, so a failure here cannot spoil the shared fixture."""
    d = tmp_path / "work" / "model"
    shutil.copytree(tiny_dir, d)
    return d


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "code"
    d.mkdir()
    for i in range(4):
        (d / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + 1\n\n" * 40)
    return d


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("greenprune: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("cmd", ["prune", "eval", "recover", "export", "stream", "search", "bench"])
@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_out_over_the_model_is_refused_with_overwrite_and_both_paths_named(model, capsys, cmd, where):
    out = {"same": model, "parent": model.parent, "inside": model / "model.safetensors"}[where]
    before = tree_hash(model.parent)
    args = [cmd, "--model", str(model), "--out", str(out)]
    if cmd in ("prune", "recover", "export", "stream", "search"):
        args.append("--overwrite")
    if cmd == "recover":
        args += ["--reference", str(model)]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out) in line and str(model) in line
    assert tree_hash(model.parent) == before


@pytest.mark.parametrize("what", ["data-dir", "data-file", "plan", "reference"])
def test_out_over_any_other_input_is_refused(tmp_path, model, data, capsys, what):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    before = tree_hash(tmp_path)
    if what == "reference":
        args = ["eval", "--model", str(model), "--reference", str(data), "--out", str(data / "r.json")]
    else:
        out = {"data-dir": data / "out", "data-file": data / "m0.py", "plan": plan}[what]
        args = ["prune", "--model", str(model), "--data", str(data if what != "data-file" else data / "m0.py"),
                "--out", str(out), "--overwrite"] + (["--plan", str(plan)] if what == "plan" else [])
    assert main(args) == 2
    assert "input" in one_error_line(capsys.readouterr().err)
    assert tree_hash(tmp_path) == before


def test_out_naming_an_existing_file_is_refused_unless_it_is_the_commands_kind(tmp_path, model, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert main(["prune", "--model", str(model), "--out", str(f), "--overwrite"]) == 2
    assert "existing file" in one_error_line(capsys.readouterr().err)
    assert main(["eval", "--model", str(model), "--out", str(f)]) == 2
    assert "existing file" in one_error_line(capsys.readouterr().err)
    assert f.read_text() == "mine"
    d = tmp_path / "results"
    d.mkdir()
    (d / "keep.txt").write_text("keep")
    assert main(["eval", "--model", str(model), "--out", str(d)]) == 2
    assert "existing directory" in one_error_line(capsys.readouterr().err)
    assert (d / "keep.txt").read_text() == "keep"


def test_unwritable_out_is_found_before_the_work(model, capsys):
    if os.access("/sys", os.W_OK) and os.path.ismount("/sys") is False:
        pytest.skip("/sys is writable here")
    assert main(["prune", "--model", str(model), "--out", "/sys/greenprune-out", *PRUNE]) == 2
    assert "not writable" in one_error_line(capsys.readouterr().err)


@contextmanager
def file_size_limit(nbytes: int):
    """Writes past nbytes fail with EFBIG, as on a full disk (the soft limit only: it is raised back after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_full_disk_during_save_is_one_line_keeps_the_old_output_and_a_rerun_cleans_up(tmp_path, model, data, capsys):
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "old.txt").write_text("the previous output")
    src = tree_hash(model)
    args = ["prune", "--model", str(model), "--data", str(data), "--out", str(out), "--overwrite", *PRUNE]
    with file_size_limit(1 << 20):
        assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "could not write" in line and str(out) in line
    assert (out / "old.txt").read_text() == "the previous output"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["code", "pruned", "work"]  # no scratch left
    # a run killed mid-save (SIGKILL) leaves its scratch: the next run removes it and says so
    stale = tmp_path / f".pruned.partial-{dead_pid()}-x1y2"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    assert main(args) == 0
    assert "left by an earlier run" in capsys.readouterr().err
    assert not stale.exists() and (out / "model.safetensors").is_file() and not (out / "old.txt").exists()
    assert tree_hash(model) == src


def test_sigterm_during_a_save_leaves_no_scratch(tmp_path, model):
    m, t = AutoModelForCausalLM.from_pretrained(model), AutoTokenizer.from_pretrained(model)
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        save_model_dir(tmp_path / "o", model=m, tokenizer=t, writers=[lambda d: os.kill(os.getpid(), signal.SIGTERM)])
    assert sorted(q.name for q in tmp_path.iterdir()) == ["work"]


def test_sigterm_exits_like_ctrl_c(tmp_path, model, capsys):
    fifo = tmp_path / "data.txt"
    os.mkfifo(fifo)

    def terminate_once_reading():
        with open(fifo, "w"):  # returns once the command opened the data: it now waits for text
            os.kill(os.getpid(), signal.SIGTERM)

    th = threading.Thread(target=terminate_once_reading)
    th.start()
    rc = main(["prune", "--model", str(model), "--data", str(fifo), "--out", str(tmp_path / "o"), *PRUNE])
    th.join()
    err = capsys.readouterr().err
    assert rc == 128 + signal.SIGTERM and "interrupted" in err, err
    assert sorted(q.name for q in tmp_path.iterdir()) == ["data.txt", "work"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is only there while a command runs


def test_full_disk_during_a_recovery_checkpoint_keeps_the_last_good_one_and_stale_scratch_goes(tmp_path):
    import torch

    from greenprune.recovery.checkpoint import latest_step, save_checkpoint

    w = torch.nn.Parameter(torch.zeros(300_000))  # 1.2 MB of adapter and 2.4 MB of moments: past a 1 MiB limit
    opt = torch.optim.AdamW([w])
    w.grad = torch.ones_like(w)
    opt.step()
    ck = tmp_path / "out.ckpt"
    save_checkpoint(ck, 1, {"w": w[:10]}, torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))]), {"loss": [1.0]})
    stale = ck / f".step-0000005.partial-{dead_pid()}"
    stale.mkdir()
    with file_size_limit(1 << 20), pytest.raises(GreenpruneError, match="step 2.*last good checkpoint \\(step 1\\)"):
        save_checkpoint(ck, 2, {"w": w}, opt, {"loss": [1.0, 0.5]})
    assert latest_step(ck) == 1 and sorted(p.name for p in ck.iterdir()) == ["latest.json", "step-0000001"]


def _with_header(model: Path, header) -> None:
    raw = json.dumps(header).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)


@pytest.mark.parametrize("header, msg", [
    ([1, 2], "a JSON list, not an object"),
    ({"w": {"dtype": "F32", "shape": [4]}}, "'w' has no valid data_offsets"),
])
def test_corrupt_safetensors_headers_are_one_line(model, capsys, header, msg):
    _with_header(model, header)
    assert main(["eval", "--model", str(model), "--tasks", "bpb", "--no-progress"]) == 2
    assert msg in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("cmd", ["eval", "recover"])
def test_an_unparsable_report_is_one_line(tmp_path, model, capsys, cmd):
    (model / "greenprune_report.json").write_text("{not json")
    assert main([cmd, "--model", str(model), "--out", str(tmp_path / "o")]) == 2
    assert "greenprune_report.json: unreadable report" in one_error_line(capsys.readouterr().err)
