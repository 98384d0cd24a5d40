"""Saving: every model directory greenprune writes goes through `save_model_dir`, atomically.

The directory is built in a scratch directory beside the target and renamed into place only when complete;
on any failure the scratch is removed and an existing target is left as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from ..errors import GreenpruneError

# Files of a model directory that describe its tokenizer and generation settings (copied as they are by the
# commands that rewrite only the weights: export, stream)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json", "vocab.json", "merges.txt")


@contextmanager
def atomic_dir(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch directory beside target; on success rename it into place, on failure remove it."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise GreenpruneError(f"output directory {target} exists (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any other directory
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


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
    with atomic_dir(out, overwrite=overwrite) as tmp:
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
    return out


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
