"""Saving: every model directory greenprune writes goes through `save_model_dir`, atomically.

The directory is built in a scratch directory beside the target and renamed into place only when complete;
on any failure the scratch is removed and an existing target is left as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from safetensors import SafetensorError

from ..errors import GreenpruneError

# Files of a model directory that describe its tokenizer and generation settings (copied as they are by the
# commands that rewrite only the weights: export, stream)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json", "vocab.json", "merges.txt")


# What a failed write raises: the OS's own errors, and safetensors' (its Rust writer wraps ENOSPC / EFBIG / EROFS)
WRITE_ERRORS = (OSError, SafetensorError)


def write_failure(target: Path, e: BaseException, kept: str) -> GreenpruneError:
    """A one-line error for a failed save (a full disk, a read-only target): what failed and what was kept."""
    reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return GreenpruneError(f"could not write {target}: {reason}; {kept}; free space or choose another --out "
                           f"and run the same command again")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_scratch(folder: Path, prefix: str) -> list[Path]:
    """Remove scratch entries `{prefix}{pid}-...` / `{prefix}{pid}` in folder whose process is gone (a run killed
    mid-save leaves its scratch behind); says so on stderr. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
        print(f"greenprune: removed {p}, left by an earlier run (pid {pid}) that was interrupted", file=sys.stderr)
    return removed


@contextmanager
def atomic_dir(target: Path, overwrite: bool = False, overwrite_flag: str = "--overwrite") -> Iterator[Path]:
    """Yield a scratch directory beside target; on success rename it into place, on failure remove it (an
    existing target is left as it was). A failed write (disk full, read-only) is a one-line GreenpruneError."""
    target = Path(target)
    if target.exists() and not overwrite:
        how = f"use {overwrite_flag} to replace it" if overwrite_flag else "remove it or choose another --out"
        raise GreenpruneError(f"output directory {target} exists ({how})")
    if target.exists() and not target.is_dir():
        raise GreenpruneError(f"--out {target} is an existing file, not a directory; choose another --out")
    kept = "the existing output is untouched" if target.exists() else "nothing was written"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except WRITE_ERRORS as e:
        raise write_failure(target, e, kept) from e
    for prefix in (f".{target.name}.partial-", f".{target.name}.old-"):
        remove_stale_scratch(target.parent, prefix)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    except WRITE_ERRORS as e:
        raise write_failure(target, e, kept) from e
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any other directory
    try:
        yield tmp
        try:
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except OSError:
                    os.replace(old, target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except OSError as e:
            raise write_failure(target, e, kept) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename; a failed write leaves the old file and no temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failure(path, e, "the previous file, if any, is untouched") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer and generation files src has into dst; returns the names copied."""
    copied = [f for f in TOKENIZER_FILES if (Path(src) / f).exists()]
    for f in copied:
        shutil.copy2(Path(src) / f, Path(dst) / f)
    return copied


def save_model_dir(out: Path, *, model=None, tokenizer=None, json_files: Optional[dict] = None,
                   copy_files: Iterable[Path] = (), writers: Iterable[Callable[[Path], object]] = (),
                   overwrite: bool = False) -> Path:
    """Write a model directory atomically: the model (safetensors), its tokenizer, JSON files by name, files
    copied from elsewhere, then each writer(scratch_dir) (plots, shards, reports that need the sizes); the
    JSON files are written last, so a report can describe everything else."""
    out = Path(out)
    kept = "the existing output is untouched" if out.exists() else "nothing was written"
    with atomic_dir(out, overwrite=overwrite) as tmp:
        try:
            if model is not None:
                model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            for f in copy_files:
                shutil.copy2(f, tmp / Path(f).name)
            for write in writers:
                write(tmp)
            for name, obj in (json_files or {}).items():
                write_json_atomic(tmp / name, obj() if callable(obj) else obj)
        except WRITE_ERRORS as e:
            raise write_failure(out, e, kept) from e
    return out


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def local_input(spec) -> Optional[Path]:
    """The file or directory an input spec (a model, a data spec, a plan) names on this machine, resolved; None for
    what is not a local path (a hub id, stdlib, pypkg:NAME)."""
    if spec is None:
        return None
    s = str(spec)
    if s.startswith("datasets:"):
        s = s.split(":", 1)[1]
    elif s == "stdlib" or s.startswith(("pypkg:", "default:")):
        return None
    p = Path(s).expanduser()
    return p.resolve() if p.exists() else None


def check_output(out, inputs: Iterable[tuple[str, object]], *, writes: str = "a directory",
                 file_suffix: Optional[str] = None, replaces_dir: bool = True) -> None:
    """Refuse, before any work, an output path that would destroy an input or cannot be written: `out` that is,
    contains or lies inside any input (option name, spec), `--overwrite` or not; an existing file at `out` unless
    it is the kind the command writes (file_suffix), or an existing directory where the command cannot replace one
    (replaces_dir False); a location that cannot be written."""
    target = Path(out).expanduser().resolve()
    for name, spec in inputs:
        p = local_input(spec)
        if p is None:
            continue
        if target == p or p.is_relative_to(target):
            raise GreenpruneError(f"--out {out} would replace the input {name} {spec} ({p}); choose an --out "
                                  "outside every input")
        if target.is_relative_to(p):
            raise GreenpruneError(f"--out {out} lies inside the input {name} {spec} ({p}); choose an --out "
                                  "outside every input")
    if target.exists() and not target.is_dir() and not (file_suffix and target.suffix == file_suffix):
        raise GreenpruneError(f"--out {out} is an existing file; this command writes {writes} there: choose "
                              "another --out")
    if target.is_dir() and not replaces_dir:
        raise GreenpruneError(f"--out {out} is an existing directory; this command writes {writes} there: remove "
                              "it or choose another --out")
    probe_writable(target)


def probe_writable(target: Path) -> None:
    """A one-line error now, not after the work, when nothing can be created beside `target`."""
    anc = target.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise GreenpruneError(f"cannot write {target}: {anc} is a file, not a directory; choose another --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".greenprune-probe-", dir=anc)
    except OSError as e:
        raise GreenpruneError(f"cannot write {target}: {anc} is not writable ({e.strerror or e}); choose another "
                              "--out") from e
    os.close(fd)
    os.unlink(probe)
