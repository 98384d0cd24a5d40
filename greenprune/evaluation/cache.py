"""Results cached by what determines them, so an unchanged model is not evaluated twice.

A key is a JSON object (the model's identity, the data's digest, every setting); its SHA-256 names one JSON file
in the cache directory (GREENPRUNE_EVAL_CACHE, default GREENPRUNE_CACHE/eval, i.e. ~/.cache/greenprune/eval). A model directory's
identity is its resolved path with each file's name, size and modification time: rewriting a model in place
changes it, and so does any other model. Files are written aside and renamed into place; an unreadable entry is
a miss, never an error.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional

from ..modelio.load import cache_dir, resolve_model
from ..modelio.save import write_json_atomic


def files_digest(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        f = Path(f)
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def model_identity(spec: Optional[str]) -> dict:
    """What identifies a model's weights: its resolved location and a digest of its files (a hub id as given)."""
    where = Path(resolve_model(spec))
    if where.exists():
        files = sorted(where.iterdir()) if where.is_dir() else [where]
        return {"path": str(where.resolve()), "files": files_digest(files)}
    return {"hub": str(spec)}


class ResultCache:
    def __init__(self, root: Optional[Path] = None):
        if root is None:
            root = os.environ.get("GREENPRUNE_EVAL_CACHE") or cache_dir() / "eval"
        self.root = Path(root)

    def _path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return self.root / f"{digest}.json"

    def get(self, key: dict) -> Optional[dict]:
        p = self._path(key)
        try:
            entry = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return entry.get("result") if isinstance(entry, dict) and entry.get("key") == json.loads(
            json.dumps(key, sort_keys=True, default=str)) else None

    def put(self, key: dict, result: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            write_json_atomic(self._path(key), {"key": json.loads(json.dumps(key, sort_keys=True, default=str)),
                                                "result": result})
        except OSError:  # a cache that cannot be written costs time later, not this result
            pass
