"""What the command line tells the user: absolute sources in reports, budgets it could not fill, next-line
samples, a bench without a dense reference, silenced progress bars, every default in --help."""
import json
import os
import re
import subprocess
import sys

from greenprune.cli import build_parser, main


def test_report_records_absolute_sources_and_tokens_used(tmp_path, tiny_dir, monkeypatch, capfd, caplog):
    data = tmp_path / "short.py"
    data.write_text("x = 1\n" * 60)  # fewer tokens than asked for
    monkeypatch.chdir(tiny_dir.parent)
    out = tmp_path / "o"
    assert main(["prune", "--model", tiny_dir.name, "--data", str(data), "--ratio", "0.015", "--align", "16",
                 "--method", "uniform", "--no-vocab", "--calib-tokens", "1024", "--seq-len", "64", "--no-eval",
                 "--out", str(out), "--no-progress"]) == 0
    rep = json.loads((out / "greenprune_report.json").read_text())
    assert rep["source_model"] == str(tiny_dir.resolve()) and rep["data"]["calibration"] == str(data.resolve())
    assert "source_revision" not in rep  # local files: no hub revision
    assert rep["data"]["calibration_tokens"]["requested"] == 1024 > rep["data"]["calibration_tokens"]["used"]
    assert "fewer than the 1024 asked for" in caplog.text  # a WARNING line on the command line's stderr
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "it/s" not in err  # --no-progress silences transformers' bars too


def test_report_records_the_hub_revision_of_a_hub_model(tmp_path, tiny_dir):
    """A model named by hub id (served here from a local hub cache, offline) is recorded with the commit it was
    loaded at, so the report names exactly which weights were pruned."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--local--tiny"
    (repo / "snapshots" / rev).mkdir(parents=True)
    for f in tiny_dir.iterdir():
        (repo / "snapshots" / rev / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), HF_HUB_OFFLINE="1")  # read at import
    args = ["--ratio", "0.015", "--align", "16", "--method", "uniform", "--no-vocab", "--calib-tokens", "256",
            "--seq-len", "64", "--no-eval", "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "greenprune.cli", "prune", "--model", "local/tiny", "--out",
                        str(tmp_path / "hub"), *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "hub" / "greenprune_report.json").read_text())
    assert rep["source_model"] == "local/tiny" and rep["source_revision"] == rev


def test_next_line_match_without_samples_is_na_with_its_count(capsys):
    from greenprune.cli.tables import print_prune
    from greenprune.evaluation.metrics import next_line_samples

    assert next_line_samples(["x = 1\n" * 60], 4) == []  # lines too short to be a target: nothing ran
    side = {"bpb": 1.0, "next_line_exact_match": None, "next_line_samples": 0, "cpu_tokens_per_s": 10.0}
    report = {"params": {"dense": 10, "pruned": 8, "ratio": 0.2},
              "plan": {"meta": {"method": "unified"}, "summary": {"layers_dropped": [], "vocab_size": 5}},
              "eval": {"dense": dict(side), "pruned": dict(side)}}
    print_prune(report, None)
    row = next(ln for ln in capsys.readouterr().out.splitlines() if "next-line" in ln)
    assert "(0 samples)" in row and row.count("n/a") == 2 and "0.000" not in row


def test_bench_says_when_it_has_no_dense_reference(tmp_path, tiny_dir, capsys):
    assert main(["bench", "--model", str(tiny_dir), "--prompt-lens", "8", "--batch", "1", "--decode-prompt", "4",
                 "--decode-tokens", "2", "--repeats", "1", "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "no dense reference" in capsys.readouterr().out


def test_help_shows_every_default():
    ap = build_parser()
    sub = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.option_strings and a.help and a.dest != "help" and not a.required \
                    and not a.option_strings[0].startswith("--no-") and "default" not in a.help:
                missing.append(f"{name} {a.option_strings[0]}")
    assert not missing, missing


def test_readme_lists_every_option_of_every_command():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- options:begin -->", 1)[1].split("<!-- options:end -->", 1)[0]
    sections = dict(zip(*[iter(re.split(r"^`greenprune (\w+)`$", block, flags=re.M)[1:])] * 2))
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [f"{name} {opt}" for name, p in sub.choices.items() for a in p._actions for opt in a.option_strings
               if opt not in ("-h", "--help") and f"`{opt}" not in sections.get(name, "") and f" {opt}`" not in
               sections.get(name, "") and f", {opt}" not in sections.get(name, "")]
    assert not missing, f"not in the README's options table (run scripts/options_table.py --write): {missing}"
