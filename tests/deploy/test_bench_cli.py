"""`greenprune bench`, `export` and `stream` through the command line, on tiny models (no speed assertions)."""
import json
import math

import pytest
import torch

from greenprune.families import shape_of
from greenprune.cli import main
from greenprune.modelio.load import load_model
from greenprune.planning.plan import LayerPlan, PruningPlan
from greenprune.pruning.prune import prune_model


@pytest.fixture(scope="module")
def pruned_dir(tiny_dir, tmp_path_factory):
    dense, tok = load_model(str(tiny_dir))
    shape = shape_of(dense.config)
    plan = PruningPlan(shape, tuple(LayerPlan(i, w, 2, tuple(range(w)), (0, 1)) for i, w in ((0, 64), (1, 32), (3, 64))))
    d = tmp_path_factory.mktemp("bench") / "pruned"
    p = prune_model(dense, plan)
    p.save_pretrained(d)
    tok.save_pretrained(d)
    plan.save(d / "plan.json")
    return d


def test_bench_writes_sane_json_and_plot(tiny_dir, pruned_dir, tmp_path, capsys):
    out = tmp_path / "b"
    rc = main(["bench", "--model", str(pruned_dir), "--reference", str(tiny_dir), "--prompt-lens", "8,16",
               "--batch", "1", "2", "--decode-prompt", "4", "--decode-tokens", "3", "--repeats", "2",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "bench.json").read_text())
    assert res["info"]["device"] and res["info"]["torch"] == torch.__version__ and res["info"]["date"].endswith("+00:00")
    assert res["info"]["command"].startswith(f"greenprune bench --model {pruned_dir} --reference {tiny_dir}")
    assert res["models"]["dense"]["layers"] == 4 and res["models"]["pruned"]["layers"] == 3
    assert res["models"]["pruned"]["params"] < res["models"]["dense"]["params"]
    assert [r["prompt_len"] for r in res["prefill"]] == [8, 16] and [r["batch"] for r in res["decode"]] == [1, 2]
    for r in res["prefill"] + res["decode"]:
        for side in ("dense", "pruned"):
            assert r[f"{side}_tokens_per_s"] > 0 and len(r[f"{side}_times_s"]) == 2
        assert math.isclose(r["speedup"], r["pruned_tokens_per_s"] / r["dense_tokens_per_s"])
        assert r["pruned_step_bytes"] < r["dense_step_bytes"] and r["pruned_step_flops"] < r["dense_step_flops"]
        assert math.isclose(r["frac_of_ideal_speedup"], r["speedup"] / r["ideal_speedup"])
    # the ideal speed-up is the work ratio that binds: FLOPs at prefill, bytes at decode (greenprune.deploy.cost)
    assert all(math.isclose(r["ideal_speedup"], r["dense_step_flops"] / r["pruned_step_flops"]) for r in res["prefill"])
    assert all(math.isclose(r["ideal_speedup"], r["dense_step_bytes"] / r["pruned_step_bytes"]) for r in res["decode"])
    assert res["prefill"][1]["dense_step_flops"] > 2 * res["prefill"][0]["dense_step_flops"]  # 16 vs 8 tokens, causal
    # tokens/s is tokens over the median time: prefill L tokens, decode batch x steps
    r = res["decode"][1]
    med = sorted(r["pruned_times_s"])[0:2]
    assert math.isclose(r["pruned_tokens_per_s"], 2 * 3 / (sum(med) / 2), rel_tol=1e-3)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speedup" in capsys.readouterr().out


def test_bench_without_reference_benches_the_model_alone(pruned_dir, tmp_path):
    assert main(["bench", "--model", str(pruned_dir), "--prompt-lens", "8", "--batch", "1", "--decode-prompt", "2",
                 "--decode-tokens", "2", "--repeats", "1", "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    res = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert list(res["models"]) == ["pruned"] and "speedup" not in res["prefill"][0]


def test_bench_fused_serves_both_models_through_greenprunes_ops(tiny_dir, pruned_dir, tmp_path):
    assert main(["bench", "--model", str(pruned_dir), "--reference", str(tiny_dir), "--prompt-lens", "8", "--batch", "2",
                 "--decode-prompt", "3", "--decode-tokens", "2", "--repeats", "1", "--fused", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    res = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert res["options"]["fused"] is True and res["info"]["command"].endswith("--fused --out " + str(tmp_path / "b") + " --no-progress")
    assert res["decode"][0]["pruned_tokens_per_s"] > 0 and res["decode"][0]["dense_tokens_per_s"] > 0


def test_bench_bad_arguments(pruned_dir, tmp_path, capsys):
    assert main(["bench", "--model", str(pruned_dir), "--batch", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--batch need positive integers" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--model", str(pruned_dir), "--compile", "--out", str(tmp_path / "b")]) == 2
        assert "--compile needs CUDA" in capsys.readouterr().err


def test_export_and_stream_commands(tiny_dir, pruned_dir, tmp_path, capsys):
    assert main(["export", "--model", str(pruned_dir), "--format", "auto", "--out", str(tmp_path / "e")]) == 2
    assert "not representable" in capsys.readouterr().err  # widths 64 / 32 are not multiples of 256
    rc = main(["stream", "--model", str(tiny_dir), "--ratio", "0.01", "--method", "uniform", "--align", "8",
               "--calib-tokens", "256", "--seq-len", "64", "--out", str(tmp_path / "s"), "--no-progress"])
    assert rc == 0
    assert "peak RSS" in capsys.readouterr().out
    m, _ = load_model(str(tmp_path / "s"))
    assert m.config.intermediate_size < 96 and m.config.intermediate_size % 8 == 0
    assert main(["export", "--model", str(tmp_path / "s"), "--format", "llama", "--out", str(tmp_path / "e2")]) == 0


@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_load_model_with_device_map(tiny_dir, device_map):
    """The accelerate path (device_map) on CPU: same weights, same logits; a bad map is a clear error."""
    from greenprune.errors import GreenpruneError

    a, _ = load_model(str(tiny_dir))
    b, _ = load_model(str(tiny_dir), device_map=device_map)
    assert {p.device.type for p in b.parameters()} == {"cpu"}
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    with pytest.raises(GreenpruneError, match="cannot load model"):
        load_model(str(tiny_dir), device_map="no-such-device")


def test_decode_repeats_reuse_one_static_cache_and_agree_with_a_dynamic_one(tiny_dir):
    """--compile decodes on a StaticCache that every repeat resets and refills (the compiled step's CUDA graphs
    keep its tensors' addresses); here uncompiled on the CPU: one cache for all repeats, the same tokens each
    repeat, and the same tokens as decoding on a DynamicCache."""
    from greenprune.deploy.bench import Runner

    model, _ = load_model(str(tiny_dir))
    static, dynamic = Runner(model, compile=False), Runner(model, compile=False)
    static.static_cache = True

    def decode(runner):
        setup, timed = runner.decode(2, 4, 3)
        setup()
        return timed()

    first = decode(static)
    (cache,) = static._caches.values()
    again = decode(static)
    assert list(static._caches.values()) == [cache] and type(cache).__name__ == "StaticCache"
    assert torch.equal(first, again) and torch.equal(first, decode(dynamic)) and not dynamic._caches
