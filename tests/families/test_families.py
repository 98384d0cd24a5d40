"""The family seam: every registered family describes its parts so that pruning, masked replay and the
parameter arithmetic agree with the family's own transformers model (tiny random models of each family)."""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from greenprune.errors import GreenpruneError
from greenprune.families import FAMILIES, check_architecture, family_for, shape_of
from greenprune.modelio.load import num_params
from greenprune.planning.plan import LayerPlan, PruningPlan, identity_plan
from greenprune.planning.planner import plan_kls
from greenprune.pruning.prune import prune_model

COMMON = dict(vocab_size=101, hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=6,
              num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "llama-biases": lambda: LlamaConfig(**COMMON, attention_bias=True, mlp_bias=True),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**COMMON),
}


def _model(kind, seed=0):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(CONFIGS[kind]()).eval()
    with torch.no_grad():  # biases are zero-initialised: make them matter
        for n, p in m.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.1)
    return m


def test_every_family_module_is_registered_and_claims_its_types():
    assert {"llama", "mistral", "qwen2", "greenprune_llama", "greenprune_qwen2"} <= set(FAMILIES)
    assert family_for("greenprune_llama") is family_for("llama")
    with pytest.raises(GreenpruneError, match="unsupported architecture 'gpt2'.*qwen2"):
        family_for("gpt2")
    with pytest.raises(GreenpruneError, match="^somewhere: unsupported"):
        check_architecture(type("C", (), {"model_type": "bert"})(), "somewhere")


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_shape_counts_every_parameter(kind):
    m = _model(kind)
    assert shape_of(m).dense_params == num_params(m)


def _plan(shape, per_layer: bool):
    """Per layer: layer 0 narrowed (FFN and one KV group), layer 1 removed, layer 2 kept whole. Uniform (for
    families saved only as their own model type): every layer narrowed alike, layer 1 removed."""
    narrow = lambda i: LayerPlan(i, 24, 1, tuple(range(3, 27)), (1,))  # noqa: E731
    if not per_layer:
        return PruningPlan(shape, (narrow(0), narrow(2)))
    whole = LayerPlan(2, shape.intermediate_size, shape.num_key_value_heads, tuple(range(shape.intermediate_size)),
                      tuple(range(shape.num_key_value_heads)))
    return PruningPlan(shape, (narrow(0), whole))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_identity_plan_reproduces_the_dense_logits(kind):
    m = _model(kind)
    x = torch.randint(0, 101, (2, 17))
    p = prune_model(m, identity_plan(shape_of(m)))
    with torch.no_grad():
        assert torch.equal(m(x).logits, p(x).logits)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_pruned_model_is_what_masked_replay_computes(kind):
    """The family's slicing rules (pruning) and its consumer projections (masked replay) describe the same
    change: the physically pruned model's KL to the dense one equals the replayed KL, with its biases."""
    m = _model(kind)
    shape = shape_of(m)
    plan = _plan(shape, True)  # every family saves per-layer widths (greenprune_<type>)
    pruned = prune_model(m, plan)
    assert num_params(pruned) == plan.params()
    blocks = torch.randint(0, 101, (3, 16))
    with torch.no_grad():
        ld = torch.log_softmax(m(blocks).logits.double(), -1)
        lp = torch.log_softmax(pruned(blocks).logits.double(), -1)
    physical = (ld.exp() * (ld - lp)).sum(-1).mean().item()
    assert physical > 1e-4
    assert plan_kls(m, blocks, [plan])[0] == pytest.approx(physical, rel=1e-4)


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_family_layers_are_the_familys_own_classes(kind):
    fam = family_for(kind)
    cfg = CONFIGS[kind]()
    with torch.device("meta"):
        layer = fam.decoder_layer(cfg, 0)
    assert type(layer).__module__.split(".")[-1] == f"modeling_{kind}"
    assert type(fam.rotary_embedding(cfg)).__name__.lower().startswith(kind)


def test_mistral_window_gives_sliding_masks():
    fam, cfg = family_for("mistral"), MistralConfig(**COMMON, sliding_window=4)
    x, pos = torch.zeros(1, 9, 48), torch.arange(9)[None]
    masks = fam.attention_masks(cfg, x, pos)
    assert fam.layer_attention(cfg, 0) == "sliding_attention" and "sliding_attention" in masks
    assert family_for("llama").layer_attention(LlamaConfig(**COMMON), 0) == "full_attention"
