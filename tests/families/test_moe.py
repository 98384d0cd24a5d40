"""Mixture-of-experts families (qwen3_moe, mixtral) on tiny random models: expert removal slices the router and
the fused experts consistently, channel narrowing inside experts, uniform saves as the family's own checkpoint,
impossible requests refused, the default prune job end to end."""
import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from test_family_prune import FAST, small_tokenizer  # noqa: F401 (a fixture)
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

import greenprune  # noqa: F401
from greenprune.cli import main
from greenprune.errors import GreenpruneError
from greenprune.families import FAMILIES, check_architecture, family_for, shape_of
from greenprune.jobs.options import JobOptions
from greenprune.jobs.prune import run_prune
from greenprune.modelio.load import num_params
from greenprune.modelio.per_layer import heterogeneous_config
from greenprune.modelio.save import save_model_dir
from greenprune.planning.moe import check_moe_reachable, collect_moe_stats, make_moe_plan
from greenprune.planning.options import PlanOptions
from greenprune.planning.plan import LayerPlan, PruningPlan, identity_plan
from greenprune.pruning.prune import prune_model

E, I, K = 8, 32, 2  # experts, expert width, top-k
COMMON = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, max_position_embeddings=256, tie_word_embeddings=False, num_experts_per_tok=K)
CONFIGS = {
    # Qwen3-MoE's default norm_topk_prob=False: the top-k weights are softmax over all experts, so removing an
    # expert also changes the others' weights unless its probability is ~0 (checked in the test that relies on it)
    "qwen3_moe": lambda: Qwen3MoeConfig(**COMMON, intermediate_size=96, moe_intermediate_size=I, num_experts=E),
    "qwen3_moe-norm": lambda: Qwen3MoeConfig(**COMMON, intermediate_size=96, moe_intermediate_size=I, num_experts=E,
                                             norm_topk_prob=True),
    "mixtral": lambda: MixtralConfig(**COMMON, intermediate_size=I, num_local_experts=E),
    # a shared expert beside the routed ones, q/k/v biases
    "qwen2_moe": lambda: Qwen2MoeConfig(**COMMON, intermediate_size=96, moe_intermediate_size=I, num_experts=E,
                                        shared_expert_intermediate_size=48, qkv_bias=True),
}
KINDS = sorted(CONFIGS)


def test_every_moe_family_is_covered_here():
    assert {family_for(CONFIGS[k]()).name for k in CONFIGS} == {f.name for f in FAMILIES.values() if f.moe}
    with pytest.raises(GreenpruneError, match="no per-layer save"):
        heterogeneous_config(CONFIGS["mixtral"](), [16, 32], [4, 4], [2, 2])


def _model(kind, seed=0):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(CONFIGS[kind]()).eval()
    with torch.no_grad():  # zero-initialised biases and the shared expert's gate would hide a lost part
        for n, p in m.named_parameters():
            if n.endswith(".bias") or "shared_expert_gate" in n:
                p.normal_(0, 0.5)
    return m


def _x(seed=1):
    return torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(seed))


def _layer(i, experts_keep, ffn_keep, shape):
    return LayerPlan(i, len(ffn_keep[0]), shape.num_key_value_heads, None, tuple(range(shape.num_key_value_heads)),
                     experts=len(experts_keep), experts_keep=tuple(experts_keep), expert_ffn_keep=tuple(map(tuple, ffn_keep)))


def _random_plan(shape, experts_keep=(1, 2, 4, 6, 7), width=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(shape.num_hidden_layers):
        keep = [sorted(torch.randperm(I, generator=g)[:width].tolist()) for _ in experts_keep]
        layers.append(_layer(i, experts_keep, keep, shape))
    return PruningPlan(shape, tuple(layers))


@pytest.mark.parametrize("kind", KINDS)
def test_shape_and_plan_count_every_parameter(kind):
    m = _model(kind)
    shape = shape_of(m)
    assert (shape.num_experts, shape.experts_per_tok, shape.intermediate_size) == (E, K, I)
    assert shape.dense_params == num_params(m)
    plan = _random_plan(shape)
    assert num_params(prune_model(m, plan)) == plan.params() < shape.dense_params


@pytest.mark.parametrize("kind", KINDS)
def test_identity_plan_reproduces_the_dense_logits(kind):
    m = _model(kind)
    p = prune_model(m, identity_plan(shape_of(m)))
    with torch.no_grad():
        assert torch.equal(m(_x()).logits, p(_x()).logits)


def _route_away(m, removed):
    """Router rows such that experts `removed` get no routing weight: the kept experts come in pairs (+a, -a), so
    every token has a kept logit >= 0 per pair, scaled so that the removed experts' logit 0 has probability ~0
    (the top-k is taken over probabilities, so a removed expert may still fill a top-k slot tied at weight 0);
    zero channels 3j+e of every kept expert e (their weights are all zero)."""
    kept = [e for e in range(E) if e not in removed]
    zeroed = {e: sorted({(3 * j + e) % I for j in range(8)}) for e in kept}
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in family_for(m).layers(m):
            w = layer.mlp.gate.weight
            w.zero_()
            for a, b in zip(kept[0::2], kept[1::2]):
                d = torch.randn(w.shape[1], generator=g)
                w[a], w[b] = 1e4 * d / d.norm(), -1e4 * d / d.norm()
            if len(kept) % 2:
                w[kept[-1]] = torch.randn(w.shape[1], generator=g)
            ex = layer.mlp.experts
            for e, chans in zeroed.items():
                c = torch.tensor(chans)
                ex.gate_up_proj[e, c] = 0
                ex.gate_up_proj[e, c + I] = 0
                ex.down_proj[e][:, c] = 0
    return kept, zeroed


@pytest.mark.parametrize("kind", KINDS)
def test_removing_unrouted_experts_and_zero_channels_changes_nothing(kind):
    m = _model(kind)
    removed = (1, 4, 6)
    kept, zeroed = _route_away(m, removed)
    x = _x()
    with torch.no_grad():
        out = m(x, output_router_logits=True)
    for logits in out.router_logits:  # the premise: the removed experts carry no routing weight anywhere
        probs = logits.float().softmax(-1)
        assert probs[:, list(removed)].max() < 1e-7
        assert not set(probs.argmax(-1).tolist()) & set(removed)
    shape = shape_of(m)
    keep = [[j for j in range(I) if j not in zeroed[e]] for e in kept]
    plan = PruningPlan(shape, tuple(_layer(i, kept, keep, shape) for i in range(2)))
    with torch.no_grad():
        torch.testing.assert_close(prune_model(m, plan)(x).logits, out.logits, rtol=0, atol=1e-5)
    # the router rule finds such experts and channels itself: they carry no routed mass / channel energy, and at a
    # budget that (5 experts, 24 channels) just meets it is the only candidate keeping all the importance (the
    # routing is saturated here, so some kept experts get no mass either: which of those it keeps is a tie)
    stats, _ = collect_moe_stats(m, x, progress=False)
    fam = family_for(m)
    scores = [st.channel_scores(fam.experts(layer)) for st, layer in zip(stats, fam.layers(m))]
    ratio = 1 - shape.total_params([(24, 2, 5)] * 2, 300) / shape.dense_params - 1e-6
    rule, record = make_moe_plan(shape, stats, scores, PlanOptions(ratio=ratio, align=8), None)
    assert (record["experts"], record["expert_width"]) == (5, 24)
    assert record["importance_retained"] == pytest.approx(1.0, abs=1e-6)
    for lp, st in zip(rule.layers, stats):  # the removed experts got no routed mass; every expert that did is kept
        assert st.routed_mass[list(removed)].max() < 1e-6
        assert set(torch.where(st.routed_mass > 1e-6)[0].tolist()) <= set(lp.experts_keep)
    for lp, st, sc in zip(rule.layers, stats, scores):  # every expert with channel energy keeps its nonzero channels
        for e, keep in zip(lp.experts_keep, lp.expert_ffn_keep):
            if sc[e].sum() > 0:
                assert set(keep) == set(range(I)) - set(zeroed[e])
    with torch.no_grad():
        torch.testing.assert_close(prune_model(m, rule)(x).logits, out.logits, rtol=0, atol=1e-5)


def _masked_reference(m, plan):
    """The dense model with the removed channels' weights zeroed and the removed experts masked out of the router
    (logits -inf, then the router's own softmax / top-k / renormalisation): it keeps the original expert ids."""
    ref = copy.deepcopy(m)
    fam = family_for(ref)
    for lp, layer in zip(plan.layers, fam.layers(ref)):
        ex = layer.mlp.experts
        with torch.no_grad():
            for e, keep in zip(lp.experts_keep, lp.expert_ffn_keep):
                gone = torch.tensor([j for j in range(I) if j not in keep])
                ex.down_proj[e][:, gone] = 0
        removed = [e for e in range(E) if e not in lp.experts_keep]

        def hook(mod, args, out, removed=removed):
            logits = out[0].clone()
            logits[:, removed] = float("-inf")
            v, idx = torch.topk(logits.float().softmax(-1), mod.top_k, dim=-1)
            if getattr(mod, "norm_topk_prob", True):  # Mixtral always renormalises; Qwen3-MoE by the config
                v = v / v.sum(-1, keepdim=True)
            return out[0], v.to(out[1].dtype), idx

        fam.router(layer).register_forward_hook(hook)
    return ref


@pytest.mark.parametrize("kind", KINDS)
def test_sliced_router_maps_kept_experts_to_their_originals(kind):
    m = _model(kind)
    with torch.no_grad():  # a router that discriminates (random init is ~0.02: every expert nearly alike)
        for layer in family_for(m).layers(m):
            layer.mlp.gate.weight.normal_(0, 0.5)
            layer.mlp.experts.down_proj.mul_(5)  # routed experts that matter beside Qwen2-MoE's shared expert
    plan = _random_plan(shape_of(m))
    pruned, x = prune_model(m, plan), _x()
    with torch.no_grad():
        want = _masked_reference(m, plan)(x).logits
        torch.testing.assert_close(pruned(x).logits, want, rtol=0, atol=1e-5)
        assert (m(x).logits - want).abs().max() > 1e-2  # the reference differs from dense: the check has teeth
        w = family_for(pruned).layers(pruned)[0].mlp.gate.weight
        w[[0, 1]] = w[[1, 0]]  # kept expert 0 routed as if it were kept expert 1: no longer the reference
        assert (pruned(x).logits - want).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral", "qwen2_moe"])
def test_uniform_plan_saves_as_the_plain_family_checkpoint(kind, tmp_path):
    m = _model(kind)
    plan = _random_plan(shape_of(m))
    pruned = prune_model(m, plan)
    save_model_dir(tmp_path / "out", model=pruned)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == kind and "auto_map" not in cfg
    assert not list((tmp_path / "out").glob("*.py"))  # no remote code
    fam = family_for(kind)
    assert (cfg[fam.ffn_width_field], cfg.get("num_experts", cfg.get("num_local_experts"))) == (20, 5)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(m)
    with torch.no_grad():
        assert torch.equal(back(_x()).logits, pruned(_x()).logits)


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral", "qwen2_moe"])
def test_impossible_requests_are_refused_clearly(kind, tmp_path):
    m = _model(kind)
    shape = shape_of(m)
    full = tuple(range(I))
    with pytest.raises(GreenpruneError, match="removes every expert"):
        PruningPlan(shape, (LayerPlan(0, I, 2, None, (0, 1), experts=0, experts_keep=(), expert_ffn_keep=()),)).validate()
    with pytest.raises(GreenpruneError, match="top_k = 2"):
        PruningPlan(shape, (_layer(0, (3,), [full], shape),)).validate()
    with pytest.raises(GreenpruneError, match="expert_ffn_keep"):
        PruningPlan(shape, (_layer(0, (3, 4), [full, full[:5]], shape),)).validate()
    per_layer = PruningPlan(shape, (_layer(0, (0, 1, 2), [full] * 3, shape), _layer(1, (0, 1), [full] * 2, shape)))
    with pytest.raises(GreenpruneError, match="use a uniform plan"):
        prune_model(m, per_layer)
    with pytest.raises(GreenpruneError, match="unreachable.*mixture-of-experts"):
        check_moe_reachable(shape, PlanOptions(ratio=0.95, align=8))
    with pytest.raises(GreenpruneError, match="KV groups"):
        check_moe_reachable(shape, PlanOptions(ratio=0.2, kv=True))
    # a plan file that removes every expert is refused before the model is even looked for
    bad = identity_plan(shape).to_dict()
    bad["layers"][0].update(experts=0, experts_keep=[], expert_ffn_keep=[])
    (tmp_path / "plan.json").write_text(json.dumps(bad))
    with pytest.raises(GreenpruneError, match="removes every expert"):
        run_prune(JobOptions(model=str(tmp_path / "no-such-model"), plan_file=str(tmp_path / "plan.json")))
    per_layer.save(tmp_path / "per_layer.json")
    with pytest.raises(GreenpruneError, match="use a uniform plan"):
        run_prune(JobOptions(model=str(tmp_path / "no-such-model"), plan_file=str(tmp_path / "per_layer.json")))
    if kind == "qwen3_moe":
        cfg = CONFIGS[kind]()
        cfg.mlp_only_layers = [1]
        with pytest.raises(GreenpruneError, match="mlp_only_layers"):
            check_architecture(cfg, "here")


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral", "qwen2_moe"])
def test_default_prune_runs_end_to_end(tmp_path, small_tokenizer, kind):  # noqa: F811
    cfg = CONFIGS[kind]()
    cfg.vocab_size = len(small_tokenizer)
    torch.manual_seed(0)
    src = tmp_path / "dense"
    dense = AutoModelForCausalLM.from_config(cfg)
    s_dense = shape_of(dense)
    dense.save_pretrained(src)
    small_tokenizer.save_pretrained(src)
    out = tmp_path / "pruned"
    # one family with the vocabulary stage and evaluation too (the default job's; a few seconds here)
    fast = [a for a in FAST if a not in ("--no-vocab", "--no-eval")] if kind == "qwen3_moe" else FAST
    assert main(["prune", "--model", str(src), "--ratio", "0.3", "--align", "8", "--out", str(out), *fast]) == 0
    rep = json.loads((out / "greenprune_report.json").read_text())
    if kind == "qwen3_moe":
        assert rep["eval"]["pruned"]["kl"] > 0 and rep["plan"]["summary"]["vocab_size"] <= s_dense.vocab_size
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert family_for(pruned) is family_for(kind)
    moe = rep["importance"]["moe"]
    s = shape_of(pruned)
    assert (s.num_experts, s.intermediate_size) == (moe["experts"], moe["expert_width"])
    assert sum(p.numel() for p in pruned.parameters()) == rep["params"]["pruned"]
    assert rep["params"]["pruned"] <= rep["params"]["dense"] - math.ceil(0.3 * rep["params"]["dense"])
    assert rep["plan"]["meta"]["method"] == "moe-router"
    with torch.no_grad():
        assert torch.isfinite(pruned(torch.randint(0, s.vocab_size, (1, 16))).logits).all()


def test_plan_file_with_counts_only_is_resolved_by_router_statistics(tmp_path, small_tokenizer):  # noqa: F811
    """A hand-written plan naming only how many experts and channels each layer keeps: the job fills in which."""
    cfg = CONFIGS["mixtral"]()
    cfg.vocab_size = len(small_tokenizer)
    torch.manual_seed(0)
    src = tmp_path / "dense"
    m = AutoModelForCausalLM.from_config(cfg)
    m.save_pretrained(src)
    small_tokenizer.save_pretrained(src)
    shape = shape_of(m)
    plan = PruningPlan(shape, tuple(LayerPlan(i, 24, 2, experts=6) for i in range(2)))
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(src), "--plan", str(tmp_path / "plan.json"), "--out", str(out), *FAST]) == 0
    saved = PruningPlan.load(out / "plan.json")
    assert saved.is_resolved and [lp.experts for lp in saved.layers] == [6, 6]
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert (pruned.config.num_local_experts, pruned.config.intermediate_size) == (6, 24)
    assert sum(p.numel() for p in pruned.parameters()) == plan.params()
    with pytest.raises(GreenpruneError, match="--scorer"):
        run_prune(JobOptions(model=str(src), scorer="wanda", data="pypkg:json", plan=PlanOptions(align=8), progress=False))


def test_saves_load_in_a_fresh_interpreter_without_greenprune(tmp_path):
    """Uniform MoE saves are the families' own checkpoints: a plain transformers process (greenprune never
    imported, no remote code) loads each and gives the pruned model's logits exactly."""
    dirs = []
    for kind in ("qwen3_moe", "mixtral", "qwen2_moe"):
        m = _model(kind)
        pruned = prune_model(m, _random_plan(shape_of(m)))
        d = tmp_path / kind
        save_model_dir(d, model=pruned)
        with torch.no_grad():
            torch.save(pruned(_x()).logits, tmp_path / f"{kind}.pt")
        dirs.append(str(d))
    torch.save(_x(), tmp_path / "x.pt")
    code = f"""
import sys, torch
from transformers import AutoModelForCausalLM
x = torch.load({str(tmp_path / "x.pt")!r})
for d in {dirs!r}:
    m = AutoModelForCausalLM.from_pretrained(d).eval()
    with torch.no_grad():
        assert torch.equal(m(x).logits, torch.load(d + ".pt")), d
assert "greenprune" not in sys.modules
print("ok", len({dirs!r}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == f"ok {len(dirs)}", r.stderr[-3000:]
