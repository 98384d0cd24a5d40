"""The sandbox runs real programs through bubblewrap and through unshare: outcomes, limits, isolation, refusal."""
import os
import shutil
import socket
import subprocess
import time

import pytest

from greenprune.errors import GreenpruneError
from greenprune.evaluation.sandbox import ExecResult, Limits, Sandbox

BACKENDS = [pytest.param("bwrap", marks=pytest.mark.skipif(shutil.which("bwrap") is None,
                                                           reason="bubblewrap not installed (apt-get install bubblewrap)")),
            "unshare"]


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request):
    with Sandbox(isolation=request.param, limits=Limits(timeout_s=3.0), workers=2) as sb:
        assert sb.backend == request.param  # the probe found it really isolated
        yield sb


def test_outcomes_and_error_kinds(sandbox):
    progs = {
        "ok": "print('hello')",
        "assert": "assert 1 == 2",
        "syntax": "def f(:\n    pass",
        "name": "undefined_name",
        "memory": "x = bytearray(10 ** 11)",
        "exit0": "import sys; sys.exit(0)",
        "signal": "import os; os.kill(os.getpid(), 9)",
        "loop": "while True:\n    pass",
    }
    res = dict(zip(progs, sandbox.run_many(progs.values())))
    assert all(isinstance(r, ExecResult) and r.isolation == sandbox.backend for r in res.values())
    assert (res["ok"].outcome, res["ok"].exit_code, res["ok"].stdout_tail) == ("passed", 0, "hello\n")
    assert (res["assert"].outcome, res["assert"].error_kind) == ("failed", "AssertionError")
    assert (res["syntax"].outcome, res["syntax"].error_kind) == ("error", "SyntaxError")
    assert (res["name"].outcome, res["name"].error_kind) == ("error", "NameError")
    assert "NameError: name 'undefined_name'" in res["name"].stderr_tail
    assert (res["memory"].outcome, res["memory"].error_kind) == ("error", "MemoryError")
    assert (res["exit0"].outcome, res["exit0"].error_kind) == ("error", "SystemExit")  # stopped before its tests
    assert (res["signal"].outcome, res["signal"].signal, res["signal"].exit_code) == ("error", "SIGKILL", None)
    assert (res["loop"].outcome, res["loop"].error_kind) == ("timed_out", "Timeout")
    assert 3.0 <= res["loop"].wall_s < 6.0


def test_filesystem_is_read_only_but_scratch(sandbox, tmp_path):
    outside = tmp_path / "victim.txt"  # under /tmp, which the sandbox replaces with its own
    outside.write_text("keep me\n")
    prog = f"""
import errno, os
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print("root", attempt(lambda: open("/greenprune-test-file", "w")))
print("exe", attempt(lambda: open({sandbox.python!r} + ".x", "w")))  # beside the interpreter it runs
print("victim", attempt(lambda: open({str(outside)!r}, "w")))
open("mine.txt", "w").write("scratch works")
print("scratch", os.getcwd(), open("mine.txt").read())
print("tmp", attempt(lambda: open("/tmp/x", "w").write("x")))
print("sysctl", attempt(lambda: os.close(os.open("/proc/sys/vm/drop_caches", os.O_WRONLY))))  # opened, not written
print("sysfs", attempt(lambda: os.close(os.open("/sys/kernel/mm/transparent_hugepage/enabled", os.O_WRONLY))))
print("dev", attempt(lambda: open("/dev/newfile", "w")), sorted(os.listdir("/dev")))
"""
    r = sandbox.run(prog)
    assert r.outcome == "passed", r.stderr_tail
    lines = dict(line.split(" ", 1) for line in r.stdout_tail.splitlines())
    assert lines["root"] == "EROFS" and lines["exe"] == "EROFS"
    assert lines["victim"] == "ENOENT"
    assert lines["scratch"] == "/tmp/scratch scratch works"
    assert lines["tmp"] == "ok"
    assert lines["sysctl"] in ("EROFS", "EACCES") and lines["sysfs"] in ("EROFS", "EACCES", "ENOENT")
    dev_write, dev_nodes = lines["dev"].split(" ", 1)
    assert dev_write == "EROFS"
    assert set(eval(dev_nodes)) <= {"null", "zero", "full", "random", "urandom", "tty", "shm", "pts", "ptmx", "fd",
                                    "stdin", "stdout", "stderr", "core"}  # no disks, no /dev/mem
    assert outside.read_text() == "keep me\n"
    assert not os.path.exists("/greenprune-test-file") and not os.path.exists(sandbox.python + ".x")


def test_no_network_to_host_loopback(sandbox):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        prog = f"""
import socket
socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"escaped")
"""
        r = sandbox.run(prog)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert r.outcome == "error" and r.error_kind in ("ConnectionRefusedError", "OSError"), r.stderr_tail


def test_no_capabilities_no_visible_processes(sandbox):
    prog = f"""
import os
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm"))]
assert all(int(c, 16) == 0 for c in caps), caps
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
assert pids == list(range(1, len(pids) + 1)) and len(pids) <= 3, pids
try:
    os.kill({os.getpid()}, 0)
    raise SystemExit("parent visible")
except ProcessLookupError:
    pass
"""
    r = sandbox.run(prog)
    assert r.outcome == "passed", r.stderr_tail


def test_fork_storm_is_bounded_and_killed(sandbox):
    prog = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    t0 = time.monotonic()
    r, ok = sandbox.run_many([prog, "print('fine')"])
    assert r.outcome in ("timed_out", "error") and ok.outcome == "passed"
    assert time.monotonic() - t0 < 15
    assert subprocess.run(["true"]).returncode == 0  # the machine still forks


def test_process_count_is_bounded(sandbox):
    if sandbox.info["process_limit"].startswith("pid namespace only"):
        pytest.skip("no process-count limit here: " + sandbox.info["process_limit"])
    prog = """
import os, time
n = 0
for i in range(300):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    n += 1
print(n)
"""
    r = sandbox.run(prog)
    assert r.outcome == "passed", r.stderr_tail
    assert 1 <= int(r.stdout_tail) <= sandbox.limits.max_procs + 4


def test_leftover_children_die_with_the_program(sandbox):
    marker = f"greenprune-sandbox-orphan-{os.getpid()}-{sandbox.backend}"
    prog = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    os.execvp("sleep", ["sleep", "30", "{marker}"])
print("parent done")
"""
    r = sandbox.run(prog)
    assert r.outcome == "passed"
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == []


def test_unavailable_isolation_is_refused_unless_unsafe(tmp_path):
    missing = dict(bwrap=str(tmp_path / "no-such-bwrap"), unshare=str(tmp_path / "no-such-unshare"))
    with pytest.raises(GreenpruneError, match=r"apt-get install bubblewrap.*unsafe_exec=True"):
        Sandbox(**missing)
    with pytest.raises(GreenpruneError, match="unsafe_exec=True"):
        Sandbox(isolation="none")
    with Sandbox(unsafe_exec=True, limits=Limits(timeout_s=3.0), **missing) as sb:
        assert sb.backend == "none" and sb.info["isolation"] == "none"
        assert set(sb.info["unavailable"]) == {"bwrap", "unshare"}
        r1, r2, r3 = sb.run_many(["print(6 * 7)", "assert False", "x = bytearray(10 ** 11)"])
    assert (r1.outcome, r1.stdout_tail, r1.isolation) == ("passed", "42\n", "none")
    assert (r2.outcome, r3.error_kind) == ("failed", "MemoryError")


def test_probe_runs_a_program_through_the_tool():
    # a "bwrap" that exits 0 without running anything is not a sandbox
    with pytest.raises(GreenpruneError, match="bwrap: a test program did not run through it"):
        Sandbox(isolation="bwrap", bwrap=shutil.which("true"))
