"""Calibration and evaluation text: the Python standard library by default, or the user's own data.

Data specs (`--data`, `--eval-data`):
  stdlib            the running Python's standard library source, split by file into calibration / held-out
  pypkg:NAME        the source of an installed Python package (code outside the calibration corpus)
  DIR               every file under DIR with a suffix of CODE_SUFFIXES (more with --suffixes), tests/ folders
                    included, split by file like stdlib
  FILE.jsonl        one row per line (see ROW_FORMATS): {"text": ...}, an instruction with its response, or a chat
                    {"messages": [{"role": ..., "content": ...}, ...]} (rendered with the model's chat template)
  FILE.json         a JSON array of such rows (or of strings); any other JSON is one document
  datasets:PATH     a `datasets` dataset: a directory written by save_to_disk, or a hub name (column text/content, or instruction/response)
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import GreenpruneError

log = logging.getLogger(__name__)

CODE_SUFFIXES = {".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".fs", ".rs", ".go", ".java", ".js", ".jsx",
                 ".ts", ".tsx", ".php", ".pl", ".hs", ".ml", ".ex", ".erl", ".clj", ".dart", ".vue", ".m", ".md",
                 ".rst", ".txt", ".sh", ".rb", ".kt", ".scala", ".swift", ".lua", ".jl", ".r", ".sql", ".toml",
                 ".yaml", ".yml", ".html", ".css"}
# the Python installation's own trees (stdlib, pypkg:) leave out their test suites and tools on purpose: the
# default calibration corpus was measured that way; a user's directory is read whole but for caches and VCS data
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
USER_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", "node_modules", ".venv", "venv", ".tox", ".mypy_cache"}
TEXT_KEYS = ("text", "content", "code", "body")
PROMPT_KEYS = ("instruction", "prompt", "question", "query", "input")
ANSWER_KEYS = ("response", "output", "completion", "answer", "solution", "target")
ROW_FORMATS = (f"{'/'.join(TEXT_KEYS)}; {'/'.join(PROMPT_KEYS)} with {'/'.join(ANSWER_KEYS)}; "
               "messages (a chat: role/content)")
MAX_FILE_BYTES = 400_000  # very large generated files would dominate a small token budget


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    messages: Optional[tuple] = None  # a chat row: text is a plain rendering until render_chats applies a template


def stable_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big")


def _read_tree(root: Path, suffixes: Optional[set] = None, skip_dirs=SKIP_DIRS) -> list[Document]:
    docs = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part in skip_dirs for part in p.relative_to(root).parts[:-1]):
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


def _found_in_dir(root: Path) -> str:
    """What a directory holds, by suffix (for the error when none of it is usable)."""
    counts: dict[str, int] = {}
    for p in root.rglob("*"):
        if p.is_file():
            counts[p.suffix.lower() or "(none)"] = counts.get(p.suffix.lower() or "(none)", 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"{n} {k}" for k, n in top) or "no files"


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
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise GreenpruneError(f"{path}:{n}: not UTF-8 text (byte {e.start + 1} of the line); save the file "
                                      "as UTF-8") from e
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except (ValueError, RecursionError) as e:
                raise GreenpruneError(f"{path}:{n}: not valid JSON ({str(e)[:100] or type(e).__name__})") from e


def _row_docs(rows, name: str) -> tuple[list[Document], dict[str, int]]:
    """The documents of data rows, and the field names of the rows that had no usable text (for the error)."""
    docs, unused = [], {}
    for n, row in rows:
        if isinstance(row, str) and row.strip():
            docs.append(Document(f"{name}:{n}", row))
            continue
        doc = row_document(row, f"{name}:{n}") if isinstance(row, dict) else None
        if doc is not None:
            docs.append(doc)
        else:
            key = ",".join(sorted(row)[:5]) if isinstance(row, dict) else type(row).__name__
            unused[key] = unused.get(key, 0) + 1
    return docs, unused


def _jsonl_rows(path: Path) -> list[Document]:
    docs, unused = _row_docs(iter_jsonl(path), path.name)
    if not docs:
        raise _no_rows(path, unused)
    return docs


def _no_rows(path: Path, unused: dict) -> GreenpruneError:
    found = "; ".join(f"{n} with {k}" for k, n in sorted(unused.items(), key=lambda kv: -kv[1])[:4]) or "no rows"
    return GreenpruneError(f"{path}: empty, no usable rows (found {found}); accepted fields: {ROW_FORMATS}")


def _json_file(path: Path) -> list[Document]:
    """A .json file: an array of rows (records or strings) is read row by row; any other JSON is one document."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise GreenpruneError(f"{path}: not valid JSON ({str(e)[:100] or type(e).__name__})") from e
    if not isinstance(data, list):
        return [Document(path.name, text)]
    docs, unused = _row_docs(enumerate(data), path.name)
    if not docs:
        raise _no_rows(path, unused)
    return docs


def _messages(row: dict) -> Optional[tuple]:
    """A chat row's messages as ({"role", "content"}, ...): `messages`, or ShareGPT's `conversations` (from/value)."""
    msgs = row.get("messages", row.get("conversations"))
    if not isinstance(msgs, list) or not msgs:
        return None
    out = []
    roles = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
    for m in msgs:
        if not isinstance(m, dict):
            return None
        role, content = m.get("role", m.get("from")), m.get("content", m.get("value"))
        if not isinstance(role, str) or not isinstance(content, str):
            return None
        out.append({"role": roles.get(role, role), "content": content})
    return tuple(out)


def row_document(row: dict, name: str) -> Optional[Document]:
    msgs = _messages(row)
    if msgs is not None:
        return Document(name, "".join(f"{m['role']}: {m['content']}\n" for m in msgs), msgs)
    text = row_text(row)
    return Document(name, text) if text else None


def row_text(row: dict) -> Optional[str]:
    """The text of a data row: a text field, or an instruction (with its input, Alpaca-style) and its response."""
    for key in TEXT_KEYS:
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key]
    prompts = [row[k] for k in PROMPT_KEYS if isinstance(row.get(k), str) and row[k].strip()]
    answer = next((row[k] for k in ANSWER_KEYS if isinstance(row.get(k), str)), None)
    if prompts and answer is not None:
        return "\n".join([*prompts, answer])
    return None


def render_chats(tokenizer, docs: list[Document]) -> list[Document]:
    """Chat rows rendered with the tokenizer's chat template (the plain role: content text where it has none)."""
    if not any(d.messages for d in docs) or not getattr(tokenizer, "chat_template", None):
        return docs
    out = []
    for d in docs:
        if d.messages:
            try:
                d = Document(d.name, tokenizer.apply_chat_template(list(d.messages), tokenize=False), d.messages)
            except Exception as e:  # a template that rejects the roles (e.g. no system role): keep the plain text
                log.warning("%s: the chat template failed (%s); using the plain rendering", d.name, e)
        out.append(d)
    return out


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
    return [d for i, row in enumerate(ds) if (d := row_document(row, f"{spec}:{i}"))]


def _package_dir(spec: str) -> Path:
    name = spec.split(":", 1)[1]
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise GreenpruneError(f"{spec}: no installed package named '{name}'")
    return Path(list(found.submodule_search_locations)[0])


def load_documents(spec: str, suffixes: Iterable[str] = ()) -> list[Document]:
    """All documents of a data spec (unsplit), in a stable order (suffixes: more file suffixes for a DIR)."""
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
        accepted = CODE_SUFFIXES | {x.lower() if x.startswith(".") else f".{x.lower()}" for x in suffixes}
        docs = _read_tree(path, accepted, USER_SKIP_DIRS)
        if not docs:
            raise GreenpruneError(f"data directory {spec} has no usable text (found {_found_in_dir(path)}); "
                                  f"accepted suffixes: {' '.join(sorted(accepted))}; add others with --suffixes")
        return docs
    try:
        if path.suffix == ".jsonl":
            return _jsonl_rows(path)
        if path.suffix == ".json":
            return _json_file(path)
        return [Document(path.name, path.read_text(encoding="utf-8"))]
    except UnicodeDecodeError as e:
        raise GreenpruneError(f"{spec}: not UTF-8 text (save it as UTF-8)") from e


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


def calibration_and_heldout(spec: str, eval_fraction: float = 0.25,
                            suffixes: Iterable[str] = ()) -> tuple[list[Document], list[Document]]:
    """Split a data spec into calibration and held-out documents; raise on empty data."""
    docs = [d for d in load_documents(spec, suffixes) if d.text.strip()]
    if not docs:
        raise GreenpruneError(f"calibration data '{spec}' is empty (no usable text; accepted: a directory of "
                              f"{' '.join(sorted(CODE_SUFFIXES))} files, FILE.jsonl / FILE.json rows with {ROW_FORMATS}, "
                              "or a text file)")
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


def window_start_id(tokenizer) -> int:
    """The token every calibration block and evaluation window starts with: BOS, else EOS. Models see one at
    position 0 in use (Gemma's tokenizer config adds <bos>); statistics and scores are measured the same way."""
    for t in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if t is not None:
            return t
    raise GreenpruneError("the tokenizer has neither a BOS nor an EOS token to start windows with")


def _joined_ids(tokenizer, docs: list[Document], want: int) -> tuple[list[int], list[str]]:
    """Token ids of the documents in hashed order joined by EOS, until at least `want`; and the names read."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    ids: list[int] = []
    names: list[str] = []
    for d in hashed_order(docs):
        ids.extend(tokenizer(d.text, add_special_tokens=False)["input_ids"])
        names.append(d.name)
        if sep is not None:
            ids.append(sep)
        if len(ids) >= want:
            break
    return ids, names


def block_documents(tokenizer, docs: list[Document], seq_len: int, max_tokens: int) -> set[str]:
    """Names of the documents token_blocks(tokenizer, docs, seq_len, max_tokens) reads from."""
    if max_tokens < seq_len:
        seq_len = max(2, max_tokens)
    return set(_joined_ids(tokenizer, docs, (max_tokens // seq_len) * (seq_len - 1))[1])


def text_windows(tokenizer, texts: list[str], seq_len: int) -> list[torch.Tensor]:
    """Each text tokenized whole, cut into windows of seq_len - 1 tokens, each behind a BOS token."""
    bos, out = window_start_id(tokenizer), []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), seq_len - 1):
            out.append(torch.tensor([bos] + ids[s : s + seq_len - 1]))
    return out


def token_blocks(tokenizer, docs: list[Document], seq_len: int, max_tokens: int) -> torch.Tensor:
    """[N, seq_len] blocks of token ids, each a start token (window_start_id) then seq_len - 1 tokens of the
    documents (hashed order) joined by EOS, cut to a token budget of N * seq_len <= max_tokens."""
    if max_tokens < seq_len:
        seq_len = max(2, max_tokens)
    start = window_start_id(tokenizer)
    ids, _ = _joined_ids(tokenizer, docs, (max_tokens // seq_len) * (seq_len - 1))
    text_len = seq_len - 1
    n = min(len(ids) // text_len, max_tokens // seq_len)
    if n == 0:
        raise GreenpruneError(f"calibration data has too few tokens ({len(ids)}) for one block of {seq_len}")
    if n < max_tokens // seq_len:
        log.warning("the calibration data has %d tokens in %d-token blocks, fewer than the %d asked for: more "
                    "data gives steadier scores", n * seq_len, seq_len, max_tokens)
    body = torch.tensor(ids[: n * text_len]).view(n, text_len)
    return torch.cat([torch.full((n, 1), start, dtype=body.dtype), body], dim=1)


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
