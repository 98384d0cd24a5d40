"""scripts/gpu_results.py turns pytest-benchmark JSON of a GPU run into tables and saves it atomically.

The JSON here is written by the test in the shape pytest-benchmark and benches/conftest.py produce (a format
check of the reader, not results); the figures in it are invented and never leave this test.
"""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_results.py"
spec = importlib.util.spec_from_file_location("gpu_results", SCRIPT)
gpu_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_results)

META = {"gpu": "Test GPU", "sm_count": 2, "torch": "x", "cuda": "y", "triton": "z", "date": "2026-01-02T03:04:05+00:00",
        "profile": "lease", "ceilings": {"copy_GBps": 1000.0, "gemm_bf16_TFLOPs": 100.0}}


def _bench(name, group, params, **extra):
    return {"name": name, "group": group, "params": params, "extra_info": extra, "stats": {}}


def _write(path: Path, benchmarks) -> Path:
    path.write_text(json.dumps({"greenprune": META, "benchmarks": benchmarks}))
    return path


def test_kernel_table_names_a_losing_dispatch_choice(tmp_path, capsys):
    g = "channel_moments N=8 C=8"
    _write(tmp_path / "bench_kernels.json", [
        _bench("bench_channel_moments[8-8-triton]", g, {"impl": "triton"}, device_ms=1.0, GBps=900.0,
               frac_of_copy_bw=0.9, speedup_vs_baseline=3.5, target_frac_of_copy_bw=0.85),
        _bench("bench_channel_moments[8-8-cuda_ext]", g, {"impl": "cuda_ext"}, device_ms=2.0, GBps=450.0,
               frac_of_copy_bw=0.45, speedup_vs_baseline=1.75, target_frac_of_copy_bw=0.85),
        _bench("bench_channel_moments[8-8-eager]", g, {"impl": "eager"}, device_ms=3.5, GBps=257.0, frac_of_copy_bw=0.26),
    ])
    assert gpu_results.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Test GPU (2 SMs)" in out and "copy 1000 GB/s" in out and "profile lease" in out
    assert "| channel_moments N=8 C=8 | triton | 1 | 900 GB/s | 90% | 3.50 | frac_of_copy_bw 0.85 |" in out
    assert "dispatch picks cuda_ext (2 ms), fastest measured triton (1 ms)" in out


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
