"""A sandbox for untrusted generated programs (HumanEval completions): run each one isolated, limited and killed whole.

Each program runs as `python -I -S` (standard library only) in its own namespaces:
  - pid namespace: it cannot see, let alone signal, the evaluating process or anything else outside; when its
    first process ends (or is killed on timeout), the kernel kills everything left in the namespace;
  - network namespace: no route to the host's network (127.0.0.1 there is a loopback of its own);
  - mount namespace: the whole filesystem read-only (nosuid, nodev), a private size-limited tmpfs as its scratch
    directory (its working directory, /tmp/scratch), private /tmp, /run, /dev/shm; a minimal /dev; its own /proc with
    /proc/sys read-only;
  - IPC and UTS namespaces; no capabilities (checked before the program runs) and no_new_privs.
Limits: wall clock (the whole process group and namespace killed past it), CPU time (RLIMIT_CPU), address space
(RLIMIT_AS: a memory bomb ends in MemoryError), file size (RLIMIT_FSIZE, stdout and stderr included), open files,
no core dumps, and a process count: a pids cgroup when this process may make one (as root), else RLIMIT_NPROC,
which binds inside the user namespace that an unprivileged sandbox has; as root without a pids cgroup a fork storm
is bounded only by the timeout (the namespace dies whole then). Sandbox.info says which of these hold.

Two ways to build it, probed once by running a program through it that must find the root read-only, the
evaluating process invisible and a port listening on the host's loopback unreachable:
  - bubblewrap (`bwrap`, Debian: apt-get install bubblewrap), preferred;
  - util-linux `unshare` with greenprune's own process 1 (_nsinit.py), where bwrap is absent (as root, or where
    unprivileged user namespaces are allowed).
Where neither works, Sandbox raises GreenpruneError naming what is missing, unless unsafe_exec=True: then programs
run with the limits and a process group only (isolation "none"; the program can read and write what this user can,
reach the network and signal this process), and every result says so.

Outcomes: passed (exit status 0), failed (an AssertionError: the tests ran and a check failed), timed_out (wall
clock or CPU time), error (any other exception, a signal, SystemExit before the end, or the sandbox itself failing:
error_kind SandboxError). error_kind is the exception's class name from the last traceback line (MemoryError,
SyntaxError, NameError, ...), a signal's name (SIGKILL), Timeout, CPUTimeLimit or SystemExit.
A program's own exit status is its verdict: a completion that calls os._exit(0) before the tests run "passes";
the sandbox keeps the machine safe, it does not make a hostile program's score honest.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import select
import shutil
import signal as _signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..errors import GreenpruneError

log = logging.getLogger(__name__)

OUTCOMES = ("passed", "failed", "timed_out", "error")
ISOLATIONS = ("auto", "bwrap", "unshare", "none")
SCRATCH = "/tmp/scratch"  # the program's working directory inside the sandbox
INSTALL_HINT = "apt-get install bubblewrap"
_HERE = Path(__file__).resolve().parent
_EXC_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*))(?::(?:\s.*)?)?$")


@dataclass(frozen=True)
class Limits:
    """Per-program limits. cpu_s defaults to the wall-clock timeout rounded up."""
    timeout_s: float = 10.0
    cpu_s: Optional[int] = None
    memory_mb: int = 1024  # RLIMIT_AS of each process
    max_procs: int = 16  # processes (and threads) of one program
    file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE), stdout and stderr included
    scratch_mb: int = 64  # its scratch tmpfs; /tmp has as much again, /dev/shm a quarter
    nofile: int = 256

    def cpu(self) -> int:
        return int(self.cpu_s) if self.cpu_s is not None else max(1, math.ceil(self.timeout_s))


@dataclass
class ExecResult:
    outcome: str  # one of OUTCOMES
    error_kind: Optional[str]  # None when passed
    exit_code: Optional[int]  # the program's exit status (None when a signal or the timeout ended it)
    signal: Optional[str]  # the signal that ended it, e.g. "SIGKILL"
    wall_s: float
    stderr_tail: str
    stdout_tail: str
    isolation: str  # bwrap | unshare | none

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


def _exception_kind(stderr: str) -> Optional[str]:
    """The exception class name from the last line of the last traceback in stderr (its last dotted part)."""
    lines = stderr.splitlines()
    start = max((i for i, l in enumerate(lines) if l.startswith("Traceback (most recent call last)")), default=None)
    if start is None:
        return None
    for line in reversed(lines[start + 1:]):
        if not line.strip() or line[:1].isspace():
            continue
        m = _EXC_LINE.match(line.rstrip())
        if m:
            return m.group(2)
    return None


def _signal_name(num: int) -> str:
    try:
        return _signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * chars))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")[-chars:]


class _PidsCgroup:
    """A pids cgroup per program, under one of this process's own (v1 pids hierarchy or a v2 one with pids
    delegated). Only where this process may make one (as root, typically); None otherwise."""

    def __init__(self, base: Path):
        self.base = base
        self._n = 0
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _PidsCgroup._remove_tree, base)

    @staticmethod
    def _remove_tree(base: Path) -> None:
        for d in sorted(base.glob("r*"), reverse=True):
            _PidsCgroup._remove(d)
        try:
            base.rmdir()
        except OSError:
            pass

    @classmethod
    def create(cls) -> Optional["_PidsCgroup"]:
        candidates = []
        try:
            mounts = Path("/proc/self/mounts").read_text().splitlines()
            own = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in mounts:
            parts = line.split()
            if len(parts) < 4:
                continue
            point, fstype, opts = parts[1], parts[2], parts[3].split(",")
            if fstype == "cgroup" and "pids" in opts:
                rel = next((l.split(":", 2)[2] for l in own if "pids" in l.split(":")[1].split(",")), None)
                if rel is not None:
                    candidates.append(Path(point + rel))
            elif fstype == "cgroup2":
                rel = next((l.split(":", 2)[2] for l in own if l.startswith("0::")), None)
                if rel is not None:
                    candidates.append(Path(point + rel))
        for parent in candidates:
            base = parent / f"greenprune-sandbox-{os.getpid()}-{id(cls) % 10000}-{time.monotonic_ns() % 10**6}"
            try:
                base.mkdir()
            except OSError:
                continue
            probe = base / "r0"
            try:
                probe.mkdir()
                (probe / "pids.max").write_text("8\n")
                r = subprocess.run(["/bin/sh", "-c", 'echo $$ > "$0" && exec true', str(probe / "cgroup.procs")],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
                ok = r.returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            cls._remove(probe)
            if ok:
                return cls(base)
            cls._remove_tree(base)
        return None

    def new(self, max_procs: int) -> Path:
        with self._lock:
            self._n += 1
            d = self.base / f"r{self._n}"
        d.mkdir()
        (d / "pids.max").write_text(f"{max_procs}\n")
        return d

    @staticmethod
    def _remove(d: Path, wait_s: float = 5.0) -> None:
        """Kill whatever is left in the cgroup, then remove it."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, _signal.SIGKILL)
                except OSError:
                    pass
            try:
                d.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    log.warning("could not remove cgroup %s", d)
                    return
                time.sleep(0.02)

    def remove(self, d: Path) -> None:
        self._remove(d)

    def close(self) -> None:
        self._finalizer()


_PROBE_PROGRAM = r'''
import errno, json, os, socket
res = {"pid": os.getpid(), "ppid": os.getppid()}
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=3).close()
    res["net"] = "connected"
except OSError as e:
    res["net"] = type(e).__name__
for path in ("/greenprune-sandbox-probe", PROBE_FILE):
    try:
        with open(path, "a") as f:
            f.write("sandbox probe\n")
        res.setdefault("wrote", []).append(path)
    except OSError as e:
        res.setdefault("fs", []).append(errno.errorcode.get(e.errno, str(e.errno)))
try:
    with open("probe.txt", "w") as f:
        f.write("ok")
    res["scratch"] = os.path.abspath("probe.txt")
except OSError as e:
    res["scratch"] = type(e).__name__
try:
    os.kill(PARENT, 0)
    res["parent"] = "visible"
except OSError as e:
    res["parent"] = type(e).__name__
print("PROBE " + json.dumps(res))
'''


class Sandbox:
    """Runs untrusted Python programs; see the module docstring. Use as a context manager, or call close().

    isolation: auto (bwrap, else unshare) | bwrap | unshare | none (only with unsafe_exec=True).
    unsafe_exec: where no isolation can be set up (or isolation="none"), run with limits and a process group only.
    bwrap, unshare: the tools' names or paths (a path that does not exist makes that way unavailable).
    python: the interpreter that runs the programs (default: this one).
    """

    def __init__(self, isolation: str = "auto", unsafe_exec: bool = False, limits: Optional[Limits] = None,
                 workers: Optional[int] = None, python: Optional[str] = None, bwrap: str = "bwrap",
                 unshare: str = "unshare", tail_chars: int = 2000):
        if isolation not in ISOLATIONS:
            raise GreenpruneError(f"isolation must be one of {', '.join(ISOLATIONS)}, not {isolation!r}")
        self.limits = limits or Limits()
        self.workers = max(1, workers or os.cpu_count() or 1)
        # The base interpreter, not a venv's link to it: programs run `-I -S` (no site-packages), and a venv under
        # /tmp (a clone there) is hidden by the sandbox's private /tmp (bwrap: execvp .../.venv/bin/python failed).
        self.python = python or os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        self.tail_chars = tail_chars
        self.unsafe_exec = unsafe_exec
        self._bwrap = shutil.which(bwrap)
        self._unshare = shutil.which(unshare)
        self._launcher = (_HERE / "_launcher.py").read_text()
        self._nsinit = (_HERE / "_nsinit.py").read_text()
        self._tmp = Path(tempfile.mkdtemp(prefix="greenprune-sandbox-"))
        self._tmp_finalizer = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        self._runs = 0
        self._lock = threading.Lock()
        self._cgroup = _PidsCgroup.create() if os.geteuid() == 0 else None
        self.backend = None
        problems = {}
        order = {"auto": ["bwrap", "unshare"], "bwrap": ["bwrap"], "unshare": ["unshare"], "none": []}[isolation]
        for backend in order:
            why = self._probe(backend)
            if why is None:
                self.backend = backend
                break
            problems[backend] = why
            log.info("sandbox: %s unavailable: %s", backend, why)
        if self.backend is None:
            if not unsafe_exec:
                self.close()
                if isolation == "none":
                    raise GreenpruneError("isolation='none' runs untrusted code unsandboxed: pass unsafe_exec=True "
                                          "(--unsafe-exec) to allow it")
                said = "; ".join(f"{k}: {v}" for k, v in problems.items())
                fix = (f"Install bubblewrap ({INSTALL_HINT}), or run where util-linux unshare can make namespaces "
                       f"(as root, or with unprivileged user namespaces enabled)" if self._bwrap is None else
                       "bubblewrap and unshare need namespaces (as root, or unprivileged user namespaces enabled)")
                raise GreenpruneError(f"cannot sandbox generated code ({said}). {fix}; or pass unsafe_exec=True "
                                      f"(--unsafe-exec) to run it without isolation")
            log.warning("sandbox: running generated code WITHOUT isolation (unsafe_exec)%s",
                        "" if not problems else ": " + "; ".join(f"{k}: {v}" for k, v in problems.items()))
            self.backend = "none"
        self.info = self._describe(problems)

    # -- public -----------------------------------------------------------------------------------------------
    def run(self, source: str) -> ExecResult:
        """Run one program; never raises for anything the program does."""
        return self._run(source, self.backend)

    def run_many(self, sources: Iterable[str], progress: bool = False, desc: str = "sandbox") -> list[ExecResult]:
        """Run programs on `workers` threads (each a subprocess); results in the order given."""
        sources = list(sources)
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=self.workers) as pool, \
                tqdm(total=len(sources), desc=desc, disable=not progress, leave=False) as bar:
            futures = [pool.submit(self.run, s) for s in sources]
            for f in futures:
                f.add_done_callback(lambda _f: bar.update(1))
            return [f.result() for f in futures]

    def close(self) -> None:
        if self._cgroup is not None:
            self._cgroup.close()
        self._tmp_finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- probing ----------------------------------------------------------------------------------------------
    def _describe(self, problems: dict) -> dict:
        if self._cgroup is not None:
            procs = f"pids cgroup ({self.limits.max_procs} per program)"
        elif self.backend == "none":
            procs = "none (process group only)"
        elif os.geteuid() != 0:
            procs = f"RLIMIT_NPROC in the sandbox's user namespace ({self.limits.max_procs})"
        else:
            procs = "pid namespace only (no pids cgroup as root: a fork storm lasts until the timeout)"
        return {"isolation": self.backend, "tool": {"bwrap": self._bwrap, "unshare": self._unshare}.get(self.backend),
                "process_limit": procs, "unavailable": problems, "limits": asdict(self.limits),
                "python": self.python, "workers": self.workers}

    def _probe(self, backend: str) -> Optional[str]:
        """None when a program run through `backend` is really isolated, else why not."""
        tool = self._bwrap if backend == "bwrap" else self._unshare
        if tool is None:
            name = "bwrap" if backend == "bwrap" else "unshare"
            return f"{name} not found" + (f" ({INSTALL_HINT})" if backend == "bwrap" else " (util-linux)")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        marker_dir = Path(tempfile.mkdtemp(prefix="probe-", dir=self._visible_dir()))
        marker = marker_dir / "outside-scratch.txt"
        marker.write_text("untouched\n")
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            listener.setblocking(False)
            src = (_PROBE_PROGRAM.replace("PORT", str(listener.getsockname()[1]))
                   .replace("PROBE_FILE", repr(str(marker))).replace("PARENT", str(os.getpid())))
            r = self._run(src, backend, timeout_s=30.0)
            accepted = select.select([listener], [], [], 0)[0]
            if r.outcome != "passed" or "PROBE " not in r.stdout_tail:
                detail = (r.stderr_tail.strip().splitlines() or [r.error_kind or r.outcome])[-1]
                return f"a test program did not run through it ({r.outcome}: {detail})"
            res = json.loads(r.stdout_tail.split("PROBE ", 1)[1].splitlines()[0])
            if accepted or res.get("net") == "connected":
                return "the program reached a port on the host's loopback (no network namespace)"
            if res.get("wrote") or marker.read_text() != "untouched\n":
                return f"the program wrote outside its scratch directory ({res.get('wrote')})"
            fs = res.get("fs") or []
            if len(fs) != 2 or fs[0] != "EROFS" or fs[1] not in ("EROFS", "ENOENT"):
                return f"the root is not read-only ({res.get('fs')})"
            if not str(res.get("scratch", "")).startswith(SCRATCH + "/"):
                return f"the scratch directory is not writable ({res.get('scratch')})"
            if res.get("parent") == "visible" and os.getpid() > 16:
                return "the program can see the evaluating process (no pid namespace)"
            return None
        except (OSError, ValueError) as e:
            return f"probe failed: {type(e).__name__}: {e}"
        finally:
            listener.close()
            try:
                Path("/greenprune-sandbox-probe").unlink()  # only there if the root was writable
            except OSError:
                pass
            shutil.rmtree(marker_dir, ignore_errors=True)

    def _visible_dir(self) -> str:
        """A host directory outside /tmp (which the sandbox replaces), to check writes there fail."""
        for d in (os.environ.get("GREENPRUNE_SANDBOX_PROBE_DIR"), "/var/tmp", str(Path.home()), os.getcwd()):
            if d and os.path.isdir(d) and os.access(d, os.W_OK) and not (d + "/").startswith("/tmp/"):
                return d
        return str(self._tmp)

    # -- running ----------------------------------------------------------------------------------------------
    def _env(self, home: str) -> dict:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                "TMPDIR": "/tmp"}

    def _command(self, backend: str, run_dir: Path, program_fd: int, launcher_cfg: dict) -> tuple[list, dict, str]:
        lim = self.limits
        mb = 1 << 20
        py = [self.python, "-I", "-S", "-c", self._launcher, json.dumps(launcher_cfg)]
        if backend == "bwrap":
            cmd = [self._bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
                   "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
            if os.geteuid() == 0:
                cmd += ["--cap-drop", "ALL"]
            cmd += ["--ro-bind", "/", "/", "--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys",
                    "--dev", "/dev", "--size", str(lim.scratch_mb * mb // 4), "--tmpfs", "/dev/shm",
                    "--remount-ro", "/dev",
                    "--size", str(lim.scratch_mb * mb), "--tmpfs", "/tmp", "--tmpfs", "/run"]
            if os.path.isdir("/var/run") and not os.path.islink("/var/run"):
                cmd += ["--tmpfs", "/var/run"]
            cmd += ["--size", str(lim.scratch_mb * mb), "--tmpfs", SCRATCH,
                    "--file", str(program_fd), SCRATCH + "/program.py", "--chdir", SCRATCH, "--"] + py
            return cmd, self._env(SCRATCH), "/"
        if backend == "unshare":
            root = run_dir / "root"
            root.mkdir()
            cfg = {"root": str(root), "scratch": SCRATCH, "program": str(run_dir / "program.py"),
                   "scratch_bytes": lim.scratch_mb * mb, "tmp_bytes": lim.scratch_mb * mb,
                   "shm_bytes": lim.scratch_mb * mb // 4, "python": self.python, "launcher": self._launcher,
                   "launcher_cfg": launcher_cfg}
            cmd = [self._unshare, "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child",
                   "--propagation", "private"]
            if os.geteuid() != 0:
                cmd += ["--user", "--map-root-user"]
            cmd += ["--", self.python, "-I", "-S", "-c", self._nsinit, json.dumps(cfg)]
            return cmd, self._env(SCRATCH), "/"
        scratch = run_dir / "scratch"
        scratch.mkdir()
        shutil.copyfile(run_dir / "program.py", scratch / "program.py")
        return py, self._env(str(scratch)), str(scratch)

    def _run(self, source: str, backend: str, timeout_s: Optional[float] = None) -> ExecResult:
        lim = self.limits
        timeout_s = lim.timeout_s if timeout_s is None else timeout_s
        with self._lock:
            self._runs += 1
            run_dir = self._tmp / f"run{self._runs}"
        run_dir.mkdir()
        cg = None
        try:
            (run_dir / "program.py").write_text(source, encoding="utf-8")
            with open(run_dir / "program.py", "rb") as prog, open(run_dir / "status", "w+b") as status, \
                    open(run_dir / "stdout", "wb") as out, open(run_dir / "stderr", "wb") as err:
                inside = SCRATCH + "/program.py" if backend != "none" else str(run_dir / "scratch" / "program.py")
                launcher_cfg = {"program": inside, "status_fd": status.fileno(), "cpu_s": lim.cpu(),
                                "as_bytes": lim.memory_mb << 20, "nproc": lim.max_procs,
                                "fsize_bytes": lim.file_mb << 20, "nofile": lim.nofile,
                                "check_caps": backend != "none"}
                cmd, env, cwd = self._command(backend, run_dir, prog.fileno(), launcher_cfg)
                if self._cgroup is not None:
                    cg = self._cgroup.new(lim.max_procs + 4)  # + the sandbox's own processes
                    cmd = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cg / "cgroup.procs")] + cmd
                t0 = time.monotonic()
                try:
                    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd,
                                         pass_fds=(status.fileno(), prog.fileno()), start_new_session=True)
                except OSError as e:
                    return ExecResult("error", "SandboxError", None, None, 0.0, f"cannot start: {e}", "", backend)
                timed_out = not self._wait(p, timeout_s)
                wall = time.monotonic() - t0
                status.seek(0)
                state = status.read(4096)
        finally:
            if cg is not None:
                self._cgroup.remove(cg)
        stderr = _tail(run_dir / "stderr", max(self.tail_chars, 8000))
        stdout = _tail(run_dir / "stdout", self.tail_chars)
        shutil.rmtree(run_dir, ignore_errors=True)
        return self._classify(p.returncode, timed_out, state, wall, stderr, stdout, backend)

    @staticmethod
    def _wait(p: subprocess.Popen, timeout_s: float) -> bool:
        """Wait for p; kill its whole process group (and so the sandbox) on timeout. True when it ended in time.
        The group is killed after a normal end too, while p is still an unreaped zombie (its id cannot be reused
        then): that ends anything the program left behind outside a pid namespace."""
        in_time = True
        try:
            fd = os.pidfd_open(p.pid)
        except (AttributeError, OSError):
            fd = None
        if fd is None:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                in_time = False
                os.killpg(p.pid, _signal.SIGKILL)
                p.wait()
            return in_time
        try:
            ready = select.select([fd], [], [], timeout_s)[0]
            in_time = bool(ready)
            try:
                os.killpg(p.pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
        finally:
            os.close(fd)
        p.wait()
        return in_time

    def _classify(self, rc, timed_out, state: bytes, wall, stderr, stdout, backend) -> ExecResult:
        tail = stderr[-self.tail_chars:]

        def result(outcome, kind, code=None, sig=None):
            return ExecResult(outcome, kind, code, sig, round(wall, 4), tail, stdout, backend)

        if timed_out:
            return result("timed_out", "Timeout")
        if not state.startswith(b"R"):
            if state.startswith(b"S"):
                tail = state[1:].decode("utf-8", "replace") + ("\n" + tail if tail else "")
            return result("error", "SandboxError", rc)
        if rc == 0:
            return ExecResult("passed", None, 0, None, round(wall, 4), tail, stdout, backend)
        sig = -rc if rc < 0 else (rc - 128 if backend != "none" and 128 < rc < 128 + 65 else None)
        if sig is not None:
            name = _signal_name(sig)
            if sig == _signal.SIGXCPU:
                return result("timed_out", "CPUTimeLimit", None, name)
            return result("error", name, None, name)
        if rc == 3 and "SystemExit:" in stderr:
            return result("error", "SystemExit", rc)
        kind = _exception_kind(stderr)
        if kind is None:
            return result("error", f"exit {rc}", rc)
        return result("failed" if kind == "AssertionError" else "error", kind, rc)


def run_programs(sources: Iterable[str], isolation: str = "auto", unsafe_exec: bool = False,
                 limits: Optional[Limits] = None, workers: Optional[int] = None, progress: bool = False,
                 **kw) -> list[ExecResult]:
    """One-shot: a Sandbox for these programs, their results in order."""
    with Sandbox(isolation=isolation, unsafe_exec=unsafe_exec, limits=limits, workers=workers, **kw) as sb:
        return sb.run_many(sources, progress=progress)
