"""Calibration and evaluation text: the Python standard library by default, or the user's own data.

Data specs (`--data`, `--eval-data`):
  stdlib            the running Python's standard library source, split by file into calibration / held-out
  pypkg:NAME        the source of an installed Python package (code outside the calibration corpus)
  DIR               every code/text file under DIR, split by file like stdlib
  FILE.jsonl        one row per line: {"text": ...} or {"instruction"/"prompt"/"input": ..., "response"/"output"/"completion": ...}
  datasets:PATH     a `datasets` dataset: a directory written by save_to_disk, or a hub name (column text/content, or instruction/response)
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import GreenpruneError

CODE_SUFFIXES = {".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts", ".md", ".txt",
                 ".sh", ".rb", ".kt", ".scala", ".swift", ".lua", ".jl", ".r", ".sql", ".toml", ".yaml", ".yml"}
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
MAX_FILE_BYTES = 400_000  # very large generated files would dominate a small token budget


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def stable_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big")


def _read_tree(root: Path, suffixes: Optional[set] = None) -> list[Document]:
    docs = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part in SKIP_DIRS for part in p.relative_to(root).parts[:-1]):
            continue
        if suffixes is not None and p.suffix.lower() not in suffixes:
            continue
        if p.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and not _is_data_table(text):
            docs.append(Document(str(p.relative_to(root)), text))
    return docs


def _is_data_table(text: str) -> bool:
    """Generated tables (unicode width tables, lookup dumps) are data, not code: over 25% digits."""
    dense = [c for c in text if not c.isspace()]
    return len(dense) > 0 and sum(c.isdigit() for c in dense) > 0.25 * len(dense)


def split_documents(docs: list[Document], eval_fraction: float) -> tuple[list[Document], list[Document]]:
    """Deterministic split by a hash of each file name (stable across machines and Python runs)."""
    cut = int(eval_fraction * 10_000)
    calib = [d for d in docs if stable_hash(d.name) % 10_000 >= cut]
    held = [d for d in docs if stable_hash(d.name) % 10_000 < cut]
    return calib, held


def iter_jsonl(path: Path):
    """(line number, parsed row) for every non-blank line of a JSONL file; a clear error on invalid JSON."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except ValueError as e:
                raise GreenpruneError(f"{path}:{n}: not valid JSON ({e})") from e


def _jsonl_rows(path: Path) -> list[Document]:
    docs = []
    for n, row in iter_jsonl(path):
        text = row_text(row) if isinstance(row, dict) else None
        if text:
            docs.append(Document(f"{path.name}:{n}", text))
    return docs


def row_text(row: dict) -> Optional[str]:
    """The text of a data row: a text field, or an instruction with its response."""
    for key in ("text", "content", "code"):
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key]
    prompt = next((row[k] for k in ("instruction", "prompt", "input") if isinstance(row.get(k), str)), None)
    answer = next((row[k] for k in ("response", "output", "completion") if isinstance(row.get(k), str)), None)
    if prompt is not None and answer is not None:
        return f"{prompt}\n{answer}"
    return None


def _datasets_rows(spec: str) -> list[Document]:
    try:
        import datasets
    except ImportError as e:
        raise GreenpruneError("datasets: specs need the 'datasets' package (pip install datasets)") from e
    path = Path(spec).expanduser()
    try:
        ds = datasets.load_from_disk(str(path)) if path.exists() else datasets.load_dataset(spec, split="train")
    except Exception as e:
        raise GreenpruneError(f"cannot load dataset {spec}: {type(e).__name__}: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    return [Document(f"{spec}:{i}", t) for i, row in enumerate(ds) if (t := row_text(row))]


def _package_dir(spec: str) -> Path:
    name = spec.split(":", 1)[1]
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise GreenpruneError(f"{spec}: no installed package named '{name}'")
    return Path(list(found.submodule_search_locations)[0])


def load_documents(spec: str) -> list[Document]:
    """All documents of a data spec (unsplit), in a stable order."""
    if spec == "stdlib":
        return _read_tree(Path(sysconfig.get_paths()["stdlib"]), {".py"})
    if spec.startswith("pypkg:"):
        return _read_tree(_package_dir(spec), {".py"})
    if spec.startswith("datasets:"):
        return _datasets_rows(spec.split(":", 1)[1])
    path = Path(spec).expanduser()
    if not path.exists():
        raise GreenpruneError(f"data path not found: {spec}")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _datasets_rows(str(path))
        return _read_tree(path, CODE_SUFFIXES)
    if path.suffix == ".jsonl":
        return _jsonl_rows(path)
    try:
        return [Document(path.name, path.read_text(encoding="utf-8"))]
    except UnicodeDecodeError as e:
        raise GreenpruneError(f"{spec}: not UTF-8 text") from e


def check_spec(spec: str) -> None:
    """A one-line error now for a data spec that cannot be read (before a model is loaded): a missing path or
    package; a local file is read in full (it is cheap, and a bad row is found before the work)."""
    if spec == "stdlib" or spec.startswith("datasets:"):
        return
    if spec.startswith("pypkg:"):
        _package_dir(spec)
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise GreenpruneError(f"data path not found: {spec}")
    if path.is_file():
        load_documents(spec)


def calibration_and_heldout(spec: str, eval_fraction: float = 0.25) -> tuple[list[Document], list[Document]]:
    """Split a data spec into calibration and held-out documents; raise on empty data."""
    docs = [d for d in load_documents(spec) if d.text.strip()]
    if not docs:
        raise GreenpruneError(f"calibration data '{spec}' is empty (no usable text)")
    if len(docs) == 1:
        return docs, docs
    calib, held = split_documents(docs, eval_fraction)
    if not calib or not held:  # tiny corpora: fall back to a positional split
        k = max(1, int(round(len(docs) * eval_fraction)))
        calib, held = docs[k:], docs[:k]
    return calib, held


def hashed_order(docs: Iterable[Document]) -> list[Document]:
    """A stable pseudo-random order, so a token budget samples many files instead of the first few."""
    return sorted(docs, key=lambda d: stable_hash("order:" + d.name))


def token_blocks(tokenizer, docs: list[Document], seq_len: int, max_tokens: int) -> torch.Tensor:
    """[N, seq_len] blocks of token ids: documents (hashed order) joined by EOS, cut to a token budget."""
    if max_tokens < seq_len:
        seq_len = max(2, max_tokens)
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    ids: list[int] = []
    for d in hashed_order(docs):
        ids.extend(tokenizer(d.text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
        if len(ids) >= max_tokens:
            break
    n = min(len(ids), max_tokens) // seq_len
    if n == 0:
        raise GreenpruneError(f"calibration data has too few tokens ({len(ids)}) for one block of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def eval_snippets(tokenizer, docs: list[Document], max_tokens: int) -> list[str]:
    """Whole held-out texts (hashed order) up to a token budget of the given (dense) tokenizer; the last
    one is cut at a line boundary. Every model is then scored on exactly these characters."""
    out, used = [], 0
    for d in hashed_order(docs):
        n = len(tokenizer(d.text, add_special_tokens=False)["input_ids"])
        if used + n <= max_tokens:
            out.append(d.text)
            used += n
            continue
        lines, keep = d.text.splitlines(keepends=True), []
        budget_chars = int(len(d.text) * (max_tokens - used) / max(n, 1))
        for line in lines:
            if sum(map(len, keep)) + len(line) > budget_chars:
                break
            keep.append(line)
        if keep:
            out.append("".join(keep))
        break
    if not out:
        raise GreenpruneError("evaluation data is empty")
    return out
