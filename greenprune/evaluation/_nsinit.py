"""Process 1 of a sandbox made with util-linux `unshare` (greenprune.evaluation.sandbox, where bubblewrap is absent).

Standard library only: its source is passed to `python -I -S -c` as the first process of new mount, pid, network,
IPC and UTS namespaces (and a user namespace when not run as root). argv[1] is a JSON object:
  root        an empty host directory to build the sandbox's root on
  scratch     the sandbox's working directory (a size-limited tmpfs, the only writable place with /tmp, /dev/shm)
  program     host path of the program; copied into scratch as program.py
  scratch_bytes, tmp_bytes, shm_bytes   tmpfs sizes
  python      the interpreter that runs the launcher
  launcher    the launcher's source (_launcher.py), launcher_cfg its JSON argument
It makes a read-only recursive bind of / (nosuid, nodev) the root, with its own /proc (/proc/sys and friends
read-only), a minimal /dev, private /tmp and /run, pivots into it, drops every capability from the bounding set,
sets no_new_privs, forks the launcher (which so runs with no capability), drops its own capabilities, reaps
children and exits with the launcher's status (128 + signal when a signal ended it). When it exits, the kernel
kills whatever else is left in the pid namespace. A failure before the launcher runs exits 125 with a message.
"""
import ctypes
import json
import os
import platform
import signal
import sys

cfg = json.loads(sys.argv[1])
status_fd = cfg["launcher_cfg"].get("status_fd")


def fail(message):
    if status_fd is not None:
        try:
            os.write(status_fd, b"S" + message.encode("utf-8", "replace"))
        except OSError:
            pass
    sys.stderr.write("greenprune-sandbox: " + message + "\n")
    sys.stderr.flush()
    os._exit(125)


libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
MNT_DETACH = 2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
SYSCALLS = {"x86_64": {"pivot_root": 155, "mount_setattr": 442},
            "aarch64": {"pivot_root": 41, "mount_setattr": 442}}
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(src, target, fstype, flags, data=None):
    if libc.mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)) != 0:
        fail("mount %s on %s: %s" % (fstype or src, target, os.strerror(ctypes.get_errno())))


def syscall(name, *args):
    nr = SYSCALLS.get(platform.machine(), {}).get(name)
    if nr is None:
        return -1, 38  # ENOSYS: an architecture this file does not know
    r = libc.syscall(ctypes.c_long(nr), *args)
    return r, (ctypes.get_errno() if r != 0 else 0)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _unescape(field):
    return field.encode().decode("unicode_escape")  # mountinfo writes space, tab, newline, backslash as \ooo


def read_only_tree(root):
    """Every mount at or under root read-only, nosuid, nodev."""
    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    r, err = syscall("mount_setattr", ctypes.c_int(AT_FDCWD), _b(root), ctypes.c_uint(AT_RECURSIVE),
                     ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if r == 0:
        return
    # Kernels before 5.12: remount each mount under root, keeping the flags it may not lose.
    keep = {"noexec": MS_NOEXEC, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
            "strictatime": MS_STRICTATIME}
    with open("/proc/self/mountinfo") as f:
        rows = [line.split() for line in f]
    for row in rows:
        point = _unescape(row[4])
        if point == root or point.startswith(root.rstrip("/") + "/"):
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
            for opt in row[5].split(","):
                flags |= keep.get(opt, 0)
            mount(None, point, None, flags)


def bind_read_only(path):
    mount(path, path, None, MS_BIND | MS_REC)
    mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def build_root():
    root = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("/", root, None, MS_BIND | MS_REC)
    read_only_tree(root)

    proc = root + "/proc"
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for sub in ("sys", "sysrq-trigger", "irq", "bus"):
        if os.path.exists(proc + "/" + sub):
            bind_read_only(proc + "/" + sub)

    dev = root + "/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=1m,mode=755")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        if os.path.exists("/dev/" + name):
            open(dev + "/" + name, "w").close()
            mount("/dev/" + name, dev + "/" + name, None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev + "/" + name)
    os.mkdir(dev + "/shm")
    mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,mode=1777" % cfg["shm_bytes"])
    mount(None, dev, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)

    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,mode=1777" % cfg["tmp_bytes"])
    for run in ("/run", "/var/run"):
        if os.path.isdir(root + run) and not os.path.islink(root + run):
            mount("tmpfs", root + run, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=755")

    scratch = root + cfg["scratch"]
    os.makedirs(scratch, exist_ok=True)  # inside the new /tmp; elsewhere it exists already (made by the parent)
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,mode=755" % cfg["scratch_bytes"])
    with open(cfg["program"], "rb") as src, open(scratch + "/program.py", "wb") as dst:
        dst.write(src.read())

    os.chdir(root)
    r, err = syscall("pivot_root", b".", b".")
    if r != 0:
        fail("pivot_root: %s" % os.strerror(err))
    if libc.umount2(b".", ctypes.c_int(MNT_DETACH)) != 0:
        fail("detaching the old root: %s" % os.strerror(ctypes.get_errno()))
    os.chdir(cfg["scratch"])


def drop_capabilities():
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            fail("dropping capability %d: %s" % (cap, os.strerror(ctypes.get_errno())))
    libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
        fail("no_new_privs: %s" % os.strerror(ctypes.get_errno()))


def clear_own_capabilities():
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; two 32-bit words each: all zero
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        fail("capset: %s" % os.strerror(ctypes.get_errno()))


if os.getpid() != 1:
    fail("not the first process of a new pid namespace")
build_root()
drop_capabilities()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the program may not end process 1 with a signal it can send
child = os.fork()
if child == 0:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setsid()
    try:
        os.execv(cfg["python"], [cfg["python"], "-I", "-S", "-c", cfg["launcher"], json.dumps(cfg["launcher_cfg"])])
    except OSError as e:
        fail("exec %s: %s" % (cfg["python"], e))
if status_fd is not None:
    os.close(status_fd)
clear_own_capabilities()
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        os._exit(125)
    except InterruptedError:
        continue
    if pid == child:
        os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
