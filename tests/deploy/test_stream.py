"""Layer-streaming pruning of a sharded checkpoint equals the whole-model prune exactly."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from greenprune.families import shape_of
from greenprune.errors import GreenpruneError
from greenprune.scoring.scorers import score_model
from greenprune.pruning.prune import prune_model
from greenprune.modelio.shards import CheckpointReader
from greenprune.planning.options import PlanOptions
from greenprune.deploy.stream import StreamOptions, make_stream_plan, plan_global, stream_prune
from helpers import tiny_model


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    d = tmp_path_factory.mktemp("sharded") / "dense"
    m = tiny_model(vocab_size=101, layers=4, hidden=64, ffn=192, heads=4, kv_heads=2, tie_word_embeddings=False)
    m.save_pretrained(d, max_shard_size="60KB")
    assert (d / "model.safetensors.index.json").exists() and len(list(d.glob("*.safetensors"))) > 3
    return d


def _blocks(n=6, length=24):
    return torch.randint(0, 101, (n, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", ["uniform", "global", "layers"])
def test_streamed_prune_equals_in_memory_prune(sharded, tmp_path, method):
    opts = StreamOptions(PlanOptions(ratio=0.25, align=16), method=method, max_shard_bytes=40_000)
    blocks = _blocks()
    report = stream_prune(str(sharded), str(tmp_path / "out"), blocks, opts, progress=False)
    dense = AutoModelForCausalLM.from_pretrained(sharded, dtype=torch.float32).eval()
    scores = score_model(dense, blocks, opts.scorer, progress=False)
    plan = make_stream_plan(shape_of(dense.config), scores, opts)
    ref = prune_model(dense, plan)
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    saved = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert saved["layers"] == plan.to_dict()["layers"]
    assert got.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(got.state_dict()[k], v), k
    assert 1 - plan.params() / plan.shape.dense_params >= 0.25
    assert report["memory"]["peak_rss_bytes"] > 0
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) >= len(plan.layers)  # one shard per layer at least
    if method == "global":
        assert len({lp.ffn_width for lp in plan.layers}) > 1  # importance-based widths differ across layers
    if method == "layers":
        assert len(plan.layers) < 4


def test_global_plan_respects_budget_align_and_floor(sharded):
    dense = AutoModelForCausalLM.from_pretrained(sharded, dtype=torch.float32).eval()
    scores = score_model(dense, _blocks(), "flap", progress=False)
    shape = shape_of(dense.config)
    for ratio in (0.1, 0.3, 0.45):
        opts = StreamOptions(PlanOptions(ratio=ratio, align=16, max_ffn_prune=0.75), method="global")
        plan = plan_global(shape, scores, opts.plan_options())
        assert plan.ratio() >= ratio
        assert all(lp.ffn_width % 16 == 0 and lp.ffn_width >= 48 for lp in plan.layers)
    with pytest.raises(GreenpruneError, match="unreachable"):
        plan_global(shape, scores, StreamOptions(PlanOptions(ratio=0.7, align=16), method="global").plan_options())


def test_resume_after_interruption(sharded, tmp_path, monkeypatch):
    import greenprune.deploy.stream as st

    opts = StreamOptions(PlanOptions(ratio=0.25, align=16), method="global")
    blocks = _blocks()
    real = st._layer_module

    def failing(family, config, i, reader, dtype):
        if i == 2:
            raise KeyboardInterrupt
        return real(family, config, i, reader, dtype)

    monkeypatch.setattr(st, "_layer_module", failing)
    with pytest.raises(KeyboardInterrupt):
        stream_prune(str(sharded), str(tmp_path / "out"), blocks, opts, progress=False)
    assert not (tmp_path / "out").exists() and (tmp_path / "out.stream-state" / "state.json").exists()
    monkeypatch.setattr(st, "_layer_module", real)
    report = stream_prune(str(sharded), str(tmp_path / "out"), blocks, opts, progress=False)
    assert report["statistics"]["resumed_at_layer"] == 2
    assert not (tmp_path / "out.stream-state").exists()
    fresh = stream_prune(str(sharded), str(tmp_path / "out2"), blocks, opts, progress=False)
    assert report["plan"] == fresh["plan"]
    a, b = CheckpointReader(tmp_path / "out"), CheckpointReader(tmp_path / "out2")
    for k in a.keys():
        assert torch.equal(a.get(k), b.get(k)), k


def test_bad_inputs(sharded, tmp_path):
    with pytest.raises(GreenpruneError, match="unified method needs the whole model"):
        stream_prune(str(sharded), str(tmp_path / "o"), _blocks(), StreamOptions(method="unified"), progress=False)
    with pytest.raises(GreenpruneError, match="gradient scorers"):
        stream_prune(str(sharded), str(tmp_path / "o"), _blocks(), StreamOptions(scorer="taylor"), progress=False)
    with pytest.raises(GreenpruneError, match=r"token ids must be in \[0, 101\)"):
        stream_prune(str(sharded), str(tmp_path / "o"), _blocks() + 200, StreamOptions(), progress=False)
    with pytest.raises(GreenpruneError, match="no config.json"):
        stream_prune(str(tmp_path), str(tmp_path / "o"), _blocks(), StreamOptions(), progress=False)


def test_reader_converts_block_by_block_exactly(tmp_path):
    """get(name, dtype) fills the converted tensor from row blocks; it must equal converting the whole tensor,
    for row counts that do not divide into blocks, 1-D tensors, and tensors already in the asked dtype."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(37, 11, generator=g).bfloat16(), "b": torch.randn(13, generator=g).half(),
               "f": torch.randn(5, 3, generator=g)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    r = CheckpointReader(tmp_path)
    for block in (1, 22 * 3, 22 * 5, 2**20):  # one row's bytes is 22: 1 row, 3 rows, 5 rows, everything per block
        for name, t in tensors.items():
            got = r.get(name, torch.float32, block_bytes=block)
            assert got.dtype == torch.float32 and torch.equal(got, t.float()), (name, block)
    assert r.get("w").dtype == torch.bfloat16 and torch.equal(r.get("w"), tensors["w"])
    assert torch.equal(r.get("w", torch.float16, block_bytes=22 * 4), tensors["w"].half())


def test_freed_large_blocks_go_back_to_the_system():
    """After release_freed_memory_promptly, tensors of a few MiB freed amid others still alive return their
    pages at once. Run in a fresh process: in this one, earlier tests leave freed heap pages to reuse."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    code = """if True:
        import torch
        from greenprune.deploy.stream import release_freed_memory_promptly, rss_bytes
        assert release_freed_memory_promptly() is True
        big = torch.ones(16 * 2**20 // 4)  # glibc alone would raise its mmap threshold to 16 MiB on this free:
        del big  # the 6 MiB blocks below then come from its heap, and freeing half returns nothing (measured)
        base = rss_bytes()
        blocks = [torch.ones(6 * 2**20 // 4) for _ in range(32)]  # 192 MiB in 6 MiB blocks, touched
        grown = rss_bytes() - base
        del blocks[::2]  # free every other block: the heap could not shrink from its top alone
        print(grown, rss_bytes() - base)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    grown, after = map(int, out.stdout.split())
    assert grown > 150 * 2**20
    assert after < grown * 0.6  # half the bytes freed, and their pages gone from the process


@pytest.mark.parametrize("kind", ["qwen2", "mistral", "qwen3"])
def test_streaming_other_families_equals_in_memory_prune(tmp_path, kind):
    """Qwen2 (q/k/v biases), Mistral (a sliding window shorter than the blocks) and Qwen3 (q/k norms) stream
    per-layer plans into greenprune_<type> saves that equal the whole-model prune (Qwen2 and Mistral crashed)."""
    from transformers import MistralConfig, Qwen2Config, Qwen3Config

    kw = dict(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    cfg = {"qwen2": lambda: Qwen2Config(**kw), "qwen3": lambda: Qwen3Config(**kw, head_dim=16),
           "mistral": lambda: MistralConfig(**kw, sliding_window=8)}[kind]()
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(".bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    m.save_pretrained(tmp_path / "dense")
    opts = StreamOptions(PlanOptions(ratio=0.3, align=8), method="global")
    blocks = _blocks()
    stream_prune(str(tmp_path / "dense"), str(tmp_path / "out"), blocks, opts, progress=False)
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float32).eval()
    plan = make_stream_plan(shape_of(dense.config), score_model(dense, blocks, opts.scorer, progress=False), opts)
    assert not plan.is_uniform
    ref = prune_model(dense, plan)
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert got.config.model_type == f"greenprune_{kind}"
    with torch.no_grad():
        assert torch.equal(got(blocks).logits, ref(blocks).logits)


def test_streaming_refuses_a_family_it_cannot_stream_before_any_work(tmp_path):
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=101, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                           num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "dense")
    with pytest.raises(GreenpruneError, match=r"^\S+: layer streaming supports .*Qwen2.*, not Gemma 3 \(text\); prune it in memory"):
        stream_prune(str(tmp_path / "dense"), str(tmp_path / "out"), _blocks(), StreamOptions(), progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.stream-state").exists()
