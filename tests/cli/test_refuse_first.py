"""Bad inputs are refused before the work (most before the model loads), each as one line: options, plans,
search checkpoints, data."""
import json
import random

import pytest

from greenprune.cli import main
from greenprune.errors import GreenpruneError
from greenprune.planning.options import PlanOptions
from greenprune.planning.plan import PLAN_FORMAT, PruningPlan
from greenprune.search.search import CHECKPOINT_FORMAT, Search, SearchOptions, _rng_state

NO_MODEL = "/nonexistent/model"  # a refusal that names something else was found before the model was looked at


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("greenprune: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("args, msg", [
    (["--recover", "--recover-steps", "0"], "steps must be >= 1"),
    (["--max-ffn-prune", "nan"], "--max-ffn-prune must be in [0, 1], got nan"),
    (["--eval-data", "/nonexistent/code"], "data path not found: /nonexistent/code"),
    (["--eval-data", "pypkg:no_such_package_here"], "no installed package"),
    (["--plan", "PLAN"], "must be an integer"),
])
def test_refused_before_the_model_loads(tmp_path, capsys, args, msg):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_layer(index=0.5)))
    args = [str(plan) if a == "PLAN" else a for a in args]
    assert main(["prune", "--model", NO_MODEL, "--out", str(tmp_path / "o"), *args]) == 2
    assert msg in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


@pytest.mark.parametrize("args, msg", [
    (["--ratio", "0.99"], "--ratio 0.99 is unreachable for this model"),
    (["--ratio", "0.3", "--no-vocab"], "--ratio 0.3 is unreachable for this model"),
    (["--align", "512"], "--align 512 is larger than the FFN width 96"),
])
def test_refused_from_the_shape_before_scoring(tmp_path, tiny_dir, capsys, args, msg):
    (tmp_path / "a.py").write_text("def f(x):\n    return x + 1\n" * 20)
    assert main(["prune", "--model", str(tiny_dir), "--data", str(tmp_path / "a.py"), "--out", str(tmp_path / "o"),
                 "--no-progress", *args]) == 2
    line = error_line(capsys)
    assert msg in line and "0.30003" not in line  # the user's own number


def test_reachable_bound_is_an_upper_bound(tiny_dir):
    """The shape-only bound never refuses what the planner reaches: the plain uniform bound is what it removes."""
    from greenprune.families import ModelShape

    s = ModelShape(num_hidden_layers=4, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, vocab_size=1000, tie_word_embeddings=True)
    o = PlanOptions(method="uniform", align=16, max_ffn_prune=0.75)
    w = min(o.widths(s))
    assert o.max_removable(s) == pytest.approx(4 * (s.layer_params(96, 2) - s.layer_params(w, 2)) / s.dense_params)
    assert PlanOptions(align=16).max_removable(s) > o.max_removable(s)  # layers may go too


GOOD = {"format": PLAN_FORMAT,
        "shape": {"num_hidden_layers": 2, "hidden_size": 8, "intermediate_size": 4, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "head_dim": 4, "vocab_size": 10, "tie_word_embeddings": True},
        "layers": [{"index": 0, "ffn_width": 2, "kv_heads": 1, "ffn_keep": [0, 3], "kv_keep": [0]}],
        "vocab_keep": [0, 1, 2]}


def _layer(**kw):
    return {**GOOD, "layers": [{**GOOD["layers"][0], **kw}]}


@pytest.mark.parametrize("text, msg", [
    (json.dumps(_layer(index=0.0)), "layers[0].index must be an integer"),
    (json.dumps(_layer(ffn_width=float("inf"))), "must be an integer, got Infinity"),
    (json.dumps(_layer(ffn_keep=[0.0, 3.0])), "ffn_keep[0] must be an integer"),
    (json.dumps(_layer(ffn_keep=[[0], [3]])), "ffn_keep[0] must be an integer"),
    (json.dumps(_layer(ffn_keep=[3, 3])), "sorted unique"),
    (json.dumps(_layer(index=5)), "in [0, 2)"),
    (json.dumps(_layer(kv_heads=-1)), "kv_heads -1"),
    (json.dumps({**GOOD, "vocab_keep": "0,1,2"}), "vocab_keep must be a list of integers"),
    (json.dumps({**GOOD, "layers": [GOOD["layers"][0]] * 3}), "unique"),
    (json.dumps({**GOOD, "shape": {**GOOD["shape"], "tie_word_embeddings": "yes"}}), "true or false"),
    (json.dumps({**GOOD, "layers": {"0": 1}}), "layers must be a list"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("{", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
])
def test_plan_files_are_validated_as_one_line(tmp_path, text, msg):
    p = tmp_path / "plan.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(GreenpruneError) as e:
        PruningPlan.load(p)
    assert msg in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "ok.json").write_text(json.dumps(GOOD))
    assert PruningPlan.load(tmp_path / "ok.json").layers[0].ffn_keep == (0, 3)


def test_prune_model_with_a_dict_is_a_clear_error(tiny_dir):
    from greenprune.modelio.load import load_model
    from greenprune.pruning.prune import prune_model

    m, _ = load_model(str(tiny_dir))
    with pytest.raises(GreenpruneError, match="needs a PruningPlan, got dict"):
        prune_model(m, GOOD)


def _checkpoint(opts: SearchOptions, **over) -> dict:
    ind = {"genome": {"ffn": [12, 12, 12, 12], "kv": [2, 2, 2, 2]}, "fitness": 0.5, "origin": "seed-dp", "generation": 0}
    ck = {"format": CHECKPOINT_FORMAT, "fingerprint": opts.fingerprint(), "generation": 0, "population": [ind],
          "history": [{"generation": 0, "best": 0.5}], "seed_fitness": {}, "rng_state": _rng_state(random.Random(0)),
          "fitness_cache": {}, "counters": {"candidates": 1, "tokens": 64, "wall_s": 1.0, "candidate_lines": 1}}
    return {**ck, **over}


BAD_INDIVIDUAL = {"genome": {"ffn": [-3, 12, 12, 12], "kv": [2, 2, 2, 2]}, "fitness": 0.5, "origin": "x", "generation": 0}


@pytest.mark.parametrize("over, msg", [
    ({"generation": 10**6}, "generation 1000000"),
    ({"population": []}, "population is empty"),
    ({"population": [{**BAD_INDIVIDUAL, "genome": {"ffn": [12] * 4, "kv": [2] * 4}, "fitness": float("nan")}]},
     "not a finite number"),
    ({"population": [BAD_INDIVIDUAL]}, "negative"),
    ({"history": {"0": 1}}, "history must be"),
])
def test_corrupt_search_checkpoint_is_refused_before_the_model_loads_and_nothing_is_written(tmp_path, over, msg):
    out = tmp_path / "s"
    out.mkdir()
    opts = SearchOptions(model=NO_MODEL, out=str(out), resume=True, progress=False)
    (out / "checkpoint.json").write_text(json.dumps(_checkpoint(opts, **over)))
    with pytest.raises(GreenpruneError, match="corrupt") as e:
        Search(opts)
    assert msg in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.json"]
