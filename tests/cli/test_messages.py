"""What the command line tells the user: absolute sources in reports, budgets it could not fill, next-line
samples, a bench without a dense reference, silenced progress bars, every default in --help."""
import json
import re

from greenprune.cli import build_parser, main


def test_report_records_absolute_sources_tokens_used_and_next_line_samples(tmp_path, tiny_dir, monkeypatch, capfd,
                                                                          caplog):
    data = tmp_path / "short.py"
    data.write_text("x = 1\n" * 60)  # lines too short for a next-line sample; fewer tokens than asked for
    monkeypatch.chdir(tiny_dir.parent)
    out = tmp_path / "o"
    assert main(["prune", "--model", tiny_dir.name, "--data", str(data),
                 "--ratio", "0.015", "--align", "16", "--method", "uniform", "--no-vocab", "--calib-tokens", "1024",
                 "--seq-len", "64", "--eval-tokens", "128", "--eval-data", str(data), "--nextline-samples", "4",
                 "--out", str(out), "--no-progress"]) == 0
    rep = json.loads((out / "greenprune_report.json").read_text())
    assert rep["source_model"] == str(tiny_dir.resolve())
    assert rep["data"]["calibration_tokens"]["requested"] == 1024 > rep["data"]["calibration_tokens"]["used"]
    assert rep["eval"]["dense"]["next_line_samples"] == 0 and rep["eval"]["pruned"]["next_line_exact_match"] is None
    o, e = capfd.readouterr()
    assert "fewer than the 1024 asked for" in caplog.text  # a WARNING line on the command line's stderr
    assert "0 samples" in o and "n/a" in o
    assert "Writing model shards" not in e and "it/s" not in e  # --no-progress silences transformers' bars too


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
