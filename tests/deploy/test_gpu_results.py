"""greenprune.deploy.gpu_results turns pytest-benchmark JSON of a GPU run into tables and saves it atomically.

The JSON here is written by the test in the shape pytest-benchmark and benches/conftest.py produce (a format
check of the reader, not results); the figures in it are invented and never leave this test.
"""
import json
from pathlib import Path

import pytest

from greenprune.deploy import gpu_results

META = {"gpu": "Test GPU", "sm_count": 2, "torch": "x", "cuda": "y", "triton": "z", "date": "2026-01-02T03:04:05+00:00",
        "profile": "lease", "ceilings": {"copy_GBps": 1000.0, "gemm_bf16_TFLOPs": 100.0}}


def _bench(name, group, params, **extra):
    return {"name": name, "group": group, "params": params, "extra_info": extra, "stats": {}}


def _write(path: Path, benchmarks) -> Path:
    path.write_text(json.dumps({"greenprune": META, "benchmarks": benchmarks}))
    return path


def _kernel_run(tmp_path: Path) -> Path:
    """channel_moments at one bulk shape (triton fastest) and lm_head_argmax at decode (cuda fastest) and bulk."""
    g1, g2 = "channel_moments N=4096 C=8", "lm_head_argmax"
    return _write(tmp_path / "bench_kernels.json", [
        _bench("bench_channel_moments[4096-8-triton]", g1, {"impl": "triton", "N": 4096, "C": 8}, device_ms=1.0,
               GBps=900.0, frac_of_copy_bw=0.9, speedup_vs_baseline=3.5, target_frac_of_copy_bw=0.85),
        _bench("bench_channel_moments[4096-8-cuda_ext]", g1, {"impl": "cuda_ext", "N": 4096, "C": 8}, device_ms=2.0,
               GBps=450.0, frac_of_copy_bw=0.45, speedup_vs_baseline=1.75, target_frac_of_copy_bw=0.85),
        _bench("bench_channel_moments[4096-8-eager]", g1, {"impl": "eager", "N": 4096, "C": 8}, device_ms=3.5),
        _bench("bench_channel_moments[4096-8-compile]", g1, {"impl": "compile", "N": 4096, "C": 8}, device_ms=0.5),
        _bench("bench_lm_head_argmax[1-triton]", g2, {"impl": "triton", "T": 1, "H": 8}, device_ms=0.2),
        _bench("bench_lm_head_argmax[1-cuda_ext]", g2, {"impl": "cuda_ext", "T": 1, "H": 8}, device_ms=0.1),
        _bench("bench_lm_head_argmax[1-eager_full]", g2, {"impl": "eager_full", "T": 1, "H": 8}, device_ms=0.05),
        _bench("bench_lm_head_argmax[4096-triton]", g2, {"impl": "triton", "T": 4096, "H": 8}, device_ms=2.0),
        _bench("bench_lm_head_argmax[4096-eager_kept]", g2, {"impl": "eager_kept", "T": 4096, "H": 8}, device_ms=3.0),
    ])


def test_kernel_tables_and_the_measured_dispatch_order(tmp_path, capsys):
    _kernel_run(tmp_path)
    assert gpu_results.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Test GPU (2 SMs)" in out and "copy 1000 GB/s" in out and "profile lease" in out
    assert "| channel_moments N=4096 C=8 | triton | 1 | 900 GB/s | 90% | 3.50 | frac_of_copy_bw 0.85 |" in out
    # torch.compile and the full-vocabulary head compute something else than a dispatch backend: never ranked
    assert "| channel_moments | bulk | triton 1.00, cuda 2.00, torch 3.50 | cuda (2.00x the fastest) |" in out
    assert "| lm_head_argmax | decode | cuda 1.00, triton 2.00 | cuda |" in out
    assert "| lm_head_argmax | bulk | triton 1.00, torch 1.50 | triton |" in out


def test_save_merges_the_order_into_the_dispatch_table_the_dispatcher_reads(tmp_path):
    from greenprune.kernels.dispatch import measured_order

    table = tmp_path / "dispatch_table.json"
    table.write_text(json.dumps({"about": "kept", "gpus": {"Other GPU": {"ops": {"swiglu_ffn": {"bulk": ["torch"]}}}}}))
    assert gpu_results.main([str(_kernel_run(tmp_path).parent), "--save", str(tmp_path / "results"),
                             "--table", str(table)]) == 0
    data = json.loads(table.read_text())
    assert data["about"] == "kept" and data["gpus"]["Other GPU"]["ops"] == {"swiglu_ffn": {"bulk": ["torch"]}}
    mine = data["gpus"]["Test GPU"]
    assert mine["ops"]["lm_head_argmax"] == {"decode": ["cuda", "triton"], "bulk": ["triton", "torch"]}
    assert mine["source"].endswith("test-gpu-2026-01-02-bench_kernels.json")
    gpus = data["gpus"]
    assert measured_order("channel_moments", "Test GPU", 4096, gpus) == ("triton", "cuda", "torch")
    assert measured_order("lm_head_argmax", "Test GPU", 1, gpus) == ("cuda", "triton", "torch")
    assert measured_order("lm_head_argmax", "Test GPU", 4096, gpus) == ("triton", "torch", "cuda")
    assert measured_order("lm_head_argmax", "Unmeasured GPU", 1, gpus) == ("cuda", "triton", "torch")
    assert not list(tmp_path.glob("*.tmp"))


def test_e2e_table_and_atomic_save(tmp_path, capsys):
    out_dir, results = tmp_path / "out", tmp_path / "results"
    out_dir.mkdir()
    _write(out_dir / "bench_e2e.json", [
        _bench("bench_llama70b_slice[decode-1-1-49B/70B-ffn-eager]", "g",
               {"mode": "decode", "batch": 1, "T": 1, "ratio": "49B/70B", "variant": "ffn", "impl": "eager"},
               device_ms=1.0, speedup_vs_baseline=1.40, ideal_speedup=1.43, frac_of_ideal_speedup=1.40 / 1.43,
               impl="eager", graph={"cuda_graph": True}, extrapolated_stack_speedup=1.40),
    ])
    assert gpu_results.main([str(out_dir), "--save", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| llama70b_slice | 49B/70B ffn | eager | decode | 1 | 1 | 1.40x | 1.43x | 98% | 1.40 | True |" in out
    saved = results / "test-gpu-2026-01-02-bench_e2e.json"
    assert json.loads(saved.read_text())["greenprune"]["gpu"] == "Test GPU"
    assert [p.name for p in results.iterdir()] == [saved.name]  # no temporary left behind


def test_missing_or_broken_json_is_reported(tmp_path, capsys):
    assert gpu_results.main([str(tmp_path)]) == 1
    assert "no bench_*.json" in capsys.readouterr().err
    (tmp_path / "bench_kernels.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not a readable benchmark JSON"):
        gpu_results.main([str(tmp_path)])
