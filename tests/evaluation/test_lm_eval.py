"""lm-eval through the harness's own HFLM: a local multiple-choice task whose right answers are set from the
model's own log-likelihoods (computed here, independently), on a tiny llama and a tiny greenprune_llama."""
import json

import pytest
import torch

from greenprune.errors import GreenpruneError

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install lm-eval==0.4.13)")
from greenprune.evaluation.lm_eval_tasks import metrics_of, run_lm_eval  # noqa: E402

QUESTIONS = ["The sky is", "Two plus two is", "Water is", "A cat says", "Paris is in", "Snow is"]
CHOICES = [" blue", " green", " loud and clear"], [" four", " seven", " purple"], [" wet", " dry", " square"], \
    [" meow", " woof", " nothing at all"], [" France", " Peru", " the sea"], [" cold", " hot", " a number"]


def _own_choice(model, tokenizer, context: str, choices) -> int:
    """argmax over choices of log P(choice | context), as the harness scores multiple choice (the whole string
    encoded, the continuation being the tokens after the context's)."""
    scores = []
    for c in choices:
        ctx = tokenizer.encode(context)
        whole = tokenizer.encode(context + c)
        cont = whole[len(ctx):]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), -1)
        scores.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
    return max(range(len(choices)), key=scores.__getitem__)


def _task(tmp_path, model, tokenizer, right: int):
    """A task of len(QUESTIONS) questions: the first `right` have the model's own choice as the answer, the
    others another one, so accuracy is right / len(QUESTIONS) exactly."""
    rows = []
    for i, (q, ch) in enumerate(zip(QUESTIONS, CHOICES)):
        own = _own_choice(model, tokenizer, q, ch)
        rows.append({"question": q, "choices": [c[1:] for c in ch], "answer": own if i < right else (own + 1) % 3})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(f"""task: greenprune_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return tasks


def _pruned_greenprune_llama(tiny_dir, tmp_path):
    """The tiny model pruned per layer (different FFN widths): saved as model_type greenprune_llama."""
    from greenprune.modelio.load import load_model
    from greenprune.planning.plan import LayerPlan, PruningPlan
    from greenprune.families import shape_of
    from greenprune.pruning.prune import prune_model

    model, tok = load_model(str(tiny_dir))
    shape = shape_of(model.config)
    layers = tuple(LayerPlan(i, w, 2, tuple(range(w)), (0, 1)) for i, w in enumerate((96, 48, 64, 32)))
    pruned = prune_model(model, PruningPlan(shape, layers))
    out = tmp_path / "pruned"
    pruned.save_pretrained(out)
    tok.save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "greenprune_llama"
    return out


@pytest.mark.parametrize("kind", ["llama", "greenprune_llama"])
def test_local_multiple_choice_task_scores_what_the_model_says(tiny_dir, tmp_path, kind):
    from greenprune.modelio.load import load_model

    model_dir = tiny_dir if kind == "llama" else _pruned_greenprune_llama(tiny_dir, tmp_path)
    model, tok = load_model(str(model_dir))
    tasks = _task(tmp_path, model, tok, right=4)
    r = run_lm_eval(model_dir, ["greenprune_tiny_mc"], include_dir=tasks, batch_size=2)
    acc = r["metrics"]["greenprune_tiny_mc"]["acc"]
    assert 0.0 <= acc <= 1.0
    assert acc == pytest.approx(4 / 6)
    assert r["n_samples"]["greenprune_tiny_mc"]["effective"] == 6
    assert r["results"]["greenprune_tiny_mc"]["acc,none"] == acc

    r2 = run_lm_eval(model_dir, "greenprune_tiny_mc", include_dir=tasks, limit=3)  # the first 3: all right
    assert r2["metrics"]["greenprune_tiny_mc"]["acc"] == pytest.approx(1.0)
    assert r2["n_samples"]["greenprune_tiny_mc"]["effective"] == 3


def test_errors_are_one_line(tiny_dir, tmp_path):
    with pytest.raises(GreenpruneError, match="unknown lm-eval task 'no_such_task'"):
        run_lm_eval(tiny_dir, ["no_such_task"], include_dir=tmp_path, include_defaults=False)
    with pytest.raises(GreenpruneError, match="no such task directory"):
        run_lm_eval(tiny_dir, ["x"], include_dir=tmp_path / "absent")
    with pytest.raises(GreenpruneError, match="no lm-eval task"):
        run_lm_eval(tiny_dir, " , ")


def test_metrics_of_drops_the_none_filter():
    res = {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict-match": 1.0}}
    assert metrics_of(res) == {"t": {"acc": 0.5, "acc_stderr": 0.1, "exact_match,strict-match": 1.0}}
