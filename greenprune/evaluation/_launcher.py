"""Runs one untrusted program inside the sandbox (greenprune.evaluation.sandbox).

Standard library only: its source is passed to `python -I -S -c` inside the sandbox, after the namespaces and
mounts are set up and before the program's own code runs. argv[1] is a JSON object:
  program     path of the program inside the sandbox
  status_fd   a file descriptor: "R" is written to it once the sandbox is set up and the program is about to
              run, "S<message>" when the sandbox itself failed; it is closed before the program runs
  cpu_s, as_bytes, nproc, fsize_bytes, nofile   resource limits (null: left as they are)
  check_caps  refuse to run when this process still holds any effective capability
Exit status: the program's (0 when it ran to its end), 3 when it raised SystemExit (it stopped before its tests
finished), 125 when the sandbox failed before the program ran.
"""
import json
import os
import resource
import sys

cfg = json.loads(sys.argv[1])
status_fd = cfg.get("status_fd")


def _sandbox_failed(message):
    if status_fd is not None:
        os.write(status_fd, b"S" + message.encode("utf-8", "replace"))
    sys.stderr.write("greenprune-sandbox: " + message + "\n")
    sys.stderr.flush()
    os._exit(125)


if cfg.get("check_caps"):
    try:
        with open("/proc/self/status") as f:
            eff = [line.split()[1] for line in f if line.startswith("CapEff:")]
    except OSError as e:
        _sandbox_failed("cannot read /proc/self/status: %s" % e)
    if not eff or int(eff[0], 16) != 0:
        _sandbox_failed("the program would run with capabilities (CapEff %s)" % (eff[0] if eff else "?"))

path = cfg["program"]
try:
    with open(path, encoding="utf-8") as f:
        source = f.read()
except OSError as e:
    _sandbox_failed("cannot read the program: %s" % e)

limits = [("RLIMIT_CORE", 0, 0)]
if cfg.get("cpu_s") is not None:
    limits.append(("RLIMIT_CPU", int(cfg["cpu_s"]), int(cfg["cpu_s"]) + 1))
if cfg.get("nproc") is not None:
    limits.append(("RLIMIT_NPROC", int(cfg["nproc"]), int(cfg["nproc"])))
if cfg.get("fsize_bytes") is not None:
    limits.append(("RLIMIT_FSIZE", int(cfg["fsize_bytes"]), int(cfg["fsize_bytes"])))
if cfg.get("nofile") is not None:
    limits.append(("RLIMIT_NOFILE", int(cfg["nofile"]), int(cfg["nofile"])))
if cfg.get("as_bytes") is not None:
    limits.append(("RLIMIT_AS", int(cfg["as_bytes"]), int(cfg["as_bytes"])))
for name, soft, hard in limits:
    try:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    except (ValueError, OSError) as e:
        _sandbox_failed("cannot set %s: %s" % (name, e))

if status_fd is not None:
    os.write(status_fd, b"R")
    os.close(status_fd)
os.closerange(3, 65536)
del json, resource, cfg, status_fd, limits

sys.argv = [path]
_globals = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
try:
    exec(compile(source, path, "exec"), _globals)
except SystemExit as e:
    sys.stderr.write("SystemExit: %r (the program exited before it finished)\n" % (e.code,))
    sys.stderr.flush()
    os._exit(3)
