"""The evolutionary search on a tiny random Llama: masked fitness = pruned model, budget, outputs, resume, errors."""
import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from greenprune.families import shape_of
import greenprune
from greenprune.errors import GreenpruneError
from greenprune.kernels import kl_divergence
from greenprune.modelio.load import load_model, num_params
from greenprune.planning.plan import PruningPlan
from greenprune.pruning.prune import prune_model
from greenprune.planning.options import PlanOptions
from greenprune.search.search import Search, SearchContext, SearchOptions, run_search
from greenprune.search.space import Genome

DATA = str(Path(greenprune.__file__).parent)  # real Python source, small enough for a quick test


def _ratio(tiny_dir) -> float:
    """The tiny model is mostly vocabulary: a ratio that removes the unused tokens and 35% of the layers."""
    from greenprune.data.corpus import calibration_and_heldout
    from greenprune.pruning.vocab import choose_vocabulary

    m, tok = load_model(str(tiny_dir))
    shape = shape_of(m.config)
    keep = choose_vocabulary(tok, (d.text for d in calibration_and_heldout(DATA)[0]), shape.vocab_size)
    vocab = shape.vocab_params(shape.vocab_size) - shape.vocab_params(len(keep))
    layers = shape.dense_params - shape.vocab_params(shape.vocab_size) - shape.hidden_size
    return round((vocab + 0.35 * layers) / shape.dense_params, 4)


@pytest.fixture(scope="module")
def base(tiny_dir, tmp_path_factory):
    return SearchOptions(model=str(tiny_dir), data=DATA, plan=PlanOptions(ratio=_ratio(tiny_dir), align=8, kv=True),
                         generations=3, population=4, seq_len=32, fitness_tokens=128, stage1_tokens=32, calib_tokens=256,
                         vocab_extra=0, progress=False, out=str(tmp_path_factory.mktemp("s") / "run"))


@pytest.fixture(scope="module")
def ctx(base):
    return SearchContext(base)


def test_masked_fitness_equals_the_physically_pruned_models_kl(base):
    """A masked candidate (narrowed FFN, one KV group fewer, a layer removed, pruned vocabulary) must score
    exactly what the pruned model scores."""
    c = SearchContext(base)
    sp = c.space(base)
    g = Genome((48, 0, 96, 24), (2, 2, 1, 2))
    assert sp.slack(g) >= 0
    plan = c.plan(sp, g, {})
    pruned = prune_model(c.model, plan)
    pos = {t: i for i, t in enumerate(plan.vocab_keep)}
    keep = torch.tensor(plan.vocab_keep)
    total, n = 0.0, 0
    with torch.no_grad():
        for blk in c.blocks:
            hd = c.model.model(blk[None], use_cache=False).last_hidden_state[0]
            hp = pruned.model(torch.tensor([[pos[int(t)] for t in blk]]), use_cache=False).last_hidden_state[0]
            r = kl_divergence(hd, c.model.lm_head.weight, hp, pruned.lm_head.weight, keep)
            total, n = total + r.kl.sum().item(), n + r.kl.numel()
    masked = c.fitness.evaluate(g, len(c.blocks))
    assert masked == pytest.approx(total / n, rel=1e-4, abs=1e-6)
    assert masked > 1e-4  # the change is real
    assert c.fitness.evaluate(sp.dense(), len(c.blocks)) == pytest.approx(0.0, abs=1e-5)
    assert c.fitness.evaluate(g, 1) != masked or len(c.blocks) == 1  # stage 1 sees fewer tokens


def test_search_writes_a_plan_that_prune_applies(base, ctx, tmp_path):
    from greenprune.cli import main

    out = tmp_path / "s"
    opts = replace(base, out=str(out))
    s = run_search(opts, ctx)
    for f in ("plan.json", "plan.png", "convergence.png", "candidates.jsonl", "search_summary.json", "checkpoint.json"):
        assert (out / f).stat().st_size > 0, f
    plan = PruningPlan.load(out / "plan.json")
    assert plan.params() <= ctx.space(opts).max_params and plan.ratio() >= base.ratio
    assert len(plan.layers) < 4 or any(lp.ffn_width < 96 or lp.kv_heads < 2 for lp in plan.layers)
    assert plan.meta["method"] == "search" and plan.is_resolved
    lines = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    scored = [x for x in lines if x["stage"] > 0]
    assert scored and all(x["fitness"] >= 0 and x["tokens"] > 0 and x["seconds"] >= 0 for x in scored)
    assert {x["stage"] for x in scored} == {1, 2}  # staged: stage-1 screening and stage-2 re-scoring
    assert s["cost"]["candidates_evaluated"] == len({x["key"] for x in scored})
    assert s["cost"]["tokens"] == sum(x["new_tokens"] for x in scored)
    best = [h["best"] for h in s["history"]]
    assert best == sorted(best, reverse=True)  # (mu + lambda): never worse
    assert s["best"]["fitness"] <= min(s["seed_fitness"].values()) + 1e-12
    assert set(s["seed_fitness"]) == {"uniform", "global", "owl", "dp"}
    rc = main(["prune", "--model", base.model, "--data", DATA, "--plan", str(out / "plan.json"), "--out",
               str(tmp_path / "pruned"), "--no-eval", "--calib-tokens", "64", "--seq-len", "32", "--no-progress"])
    assert rc == 0
    m, _ = load_model(str(tmp_path / "pruned"))
    biases = sum(p.numel() for n, p in m.named_parameters() if n.endswith(".bias"))  # bias compensation
    assert num_params(m) - biases == plan.params()
    assert num_params(m) <= ctx.space(opts).max_params + ctx.space(opts).reserve  # still at least the ratio


def _strip(lines):
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines.splitlines()]


def test_an_interrupted_search_resumes_to_the_same_result(base, ctx, tmp_path):
    a, b = replace(base, out=str(tmp_path / "a"), generations=4), replace(base, out=str(tmp_path / "b"), generations=4)

    def stop(gen):
        if gen == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(a, ctx, on_generation=stop)
    ck = json.loads((tmp_path / "a" / "checkpoint.json").read_text())
    assert ck["generation"] == 2 and not (tmp_path / "a" / "plan.json").exists()
    with open(tmp_path / "a" / "candidates.jsonl", "a") as f:  # a generation cut short left a partial line
        f.write('{"generation": 3, "partial": tru')
    resumed = run_search(replace(a, resume=True), ctx)
    whole = run_search(b, ctx)
    assert resumed["history"] and [h["best"] for h in resumed["history"]] == [h["best"] for h in whole["history"]]
    assert resumed["best"] == whole["best"]
    assert resumed["cost"]["candidates_evaluated"] == whole["cost"]["candidates_evaluated"]
    assert _strip((tmp_path / "a" / "candidates.jsonl").read_text()) == _strip((tmp_path / "b" / "candidates.jsonl").read_text())
    pa, pb = (PruningPlan.load(tmp_path / d / "plan.json") for d in "ab")
    assert pa.layers == pb.layers
    more = run_search(replace(a, resume=True, generations=5), ctx)  # a finished search can be extended
    assert len(more["history"]) == 6 and more["best"]["fitness"] <= resumed["best"]["fitness"]


def test_checkpoint_and_output_errors_are_clear(base, ctx, tmp_path):
    out = tmp_path / "c"
    opts = replace(base, out=str(out), generations=1)
    run_search(opts, ctx)
    with pytest.raises(GreenpruneError, match="--resume"):
        Search(opts, ctx)  # the directory holds a search
    with pytest.raises(GreenpruneError, match="other options.*seed"):
        Search(replace(opts, resume=True, seed=7), ctx).run()
    good = (out / "checkpoint.json").read_text()
    for corrupt in (good[: len(good) // 2], "[]", json.dumps({**json.loads(good), "population": [{"x": 1}]})):
        (out / "checkpoint.json").write_text(corrupt)
        with pytest.raises(GreenpruneError, match="corrupt"):
            Search(replace(opts, resume=True), ctx).run()
    with pytest.raises(GreenpruneError, match="no checkpoint"):
        Search(replace(opts, resume=True, out=str(tmp_path / "none")), ctx)
    again = run_search(replace(opts, overwrite=True), ctx)  # --overwrite starts afresh
    assert len(again["history"]) == 2


def test_impossible_budget_and_bad_options_fail_before_the_work(base, ctx, tmp_path):
    with pytest.raises(GreenpruneError, match="unreachable"):
        Search(replace(base, plan=replace(base.plan, ratio=0.95, drop_layers=False), out=str(tmp_path / "x")), ctx)
    for bad in ({"plan": replace(base.plan, ratio=1.2)}, {"operator": "genetic"}, {"fitness_tokens": 8}, {"population": 1}, {"seeds": ("nope",)}):
        with pytest.raises(GreenpruneError):
            Search(replace(base, out=str(tmp_path / "y"), **bad), ctx)


def test_unreachable_endpoint_is_a_clear_error_before_the_search(base, ctx, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(GreenpruneError, match="unreachable"):
        Search(replace(base, operator="llm", llm=f"http://127.0.0.1:{port}", out=str(tmp_path / "u")), ctx)


def test_bits_per_byte_fitness(base, ctx):
    c = SearchContext(replace(base, fitness="bpb"))
    sp = c.space(base)
    dense = c.fitness.evaluate(sp.dense(), len(c.blocks))
    g = Genome((24, 24, 24, 24), (1, 1, 1, 1))
    assert dense > 0 and c.fitness.evaluate(g, len(c.blocks)) != pytest.approx(dense)


def test_cli_search(base, tmp_path, capsys):
    from greenprune.cli import main

    out = tmp_path / "cli"
    args = ["search", "--model", base.model, "--data", DATA, "--ratio", str(base.ratio), "--generations", "1",
            "--population", "3", "--seq-len", "32", "--fitness-tokens", "64", "--stage1-tokens", "32", "--calib-tokens",
            "128", "--align", "8", "--vocab-extra", "0", "--seeds", "uniform,global", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "candidates" in capsys.readouterr().out and (out / "plan.json").exists()
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    (out / "checkpoint.json").write_text("{not json")
    assert main(args + ["--resume"]) == 2 and "corrupt" in capsys.readouterr().err
