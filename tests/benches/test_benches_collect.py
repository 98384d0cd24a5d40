"""The GPU benchmark suites import and collect on a CPU machine, in both profiles.

benches/ only runs on a GPU, which CI never has: this catches a bench module that no longer imports (a renamed
function, a moved op) or a `lease` subset that matches no benchmark before a short GPU lease is spent on it.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parents[2] / "benches"


def _run_collect(profile: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GREENPRUNE_BENCH_PROFILE": profile}
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(BENCHES)],
                          capture_output=True, text=True, env=env, cwd=BENCHES, timeout=300)


def _collect(profile: str) -> list[str]:
    r = _run_collect(profile)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [line for line in r.stdout.splitlines() if "::" in line]


@pytest.fixture(scope="module")
def collected() -> dict:
    return {p: _collect(p) for p in ("full", "lease")}


def test_every_bench_collects_and_the_lease_covers_every_op(collected):
    full, lease = collected["full"], collected["lease"]
    assert set(lease) < set(full)
    functions = lambda ids: {i.split("[")[0] for i in ids}  # noqa: E731
    assert functions(lease) == functions(full)  # every op and end-to-end subject has a headline figure


def test_lease_keeps_both_end_to_end_ratios_and_every_decode_batch(collected):
    slices = [i for i in collected["lease"] if "bench_llama70b_slice" in i]
    for ratio in ("49B/70B", "35B/70B"):
        for case in ("decode-1-1", "decode-8-1", "decode-32-1", "prefill-1-512", "prefill-1-2048", "prefill-1-4096"):
            assert any(ratio in i and case in i and "ffn-eager" in i for i in slices), (ratio, case)


def test_unknown_profile_is_refused():
    r = _run_collect("quick")
    assert r.returncode != 0 and "choose one of full, lease" in r.stdout + r.stderr


def test_lease_runs_in_priority_order_with_the_compile_baselines_last(collected):
    lease = collected["lease"]
    is_compile = ["compile" in i.split("[")[1] for i in lease]
    assert any(is_compile) and is_compile == sorted(is_compile)  # every torch.compile baseline after the rest
    e2e = [i for i in lease if "bench_e2e.py" in i]
    assert e2e[0].endswith("[decode-1-1-49B/70B-ffn-eager]") and e2e[1].endswith("[decode-1-1-35B/70B-ffn-eager]")
