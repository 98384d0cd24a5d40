"""Code-instruction data for recovery, built offline from real code, plus the user's own JSONL rows.

Mining (`mine_functions`): every documented Python function of the calibration files becomes a pair
  prompt   = its signature and docstring (decorators included, dedented),
  response = its body after the docstring,
found with `ast` (files that do not parse are skipped). Decontamination (`decontaminate`): a pair is dropped when
its body shares a 13-token n-gram (the GPT-3 decontamination length; tokens are words and single punctuation
marks) with any evaluation file, so recovery never trains on text the held-out scores are computed from.

User data (`load_instruction_rows`): JSONL rows {"instruction"|"prompt"|"input": ..., "response"|"output"|
"completion": ...} or {"text": ...}. The training target is the dense model's own distribution over every token
of instruction and response (self-distillation, Flab-Pruner), optionally plus cross-entropy on the text.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import GreenpruneError
from . import corpus

NGRAM = 13
_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    source: str

    @property
    def text(self) -> str:
        return self.prompt + self.response


def _dedent(lines: list[str], indent: int) -> str:
    return "".join(line[indent:] if line[:indent].isspace() else line.lstrip() if not line.strip() else line
                   for line in lines)


def mine_functions(docs: Iterable[corpus.Document], min_body_lines: int = 2, max_body_lines: int = 80) -> list[Example]:
    """(signature + docstring -> body) pairs of every documented function in the Python documents."""
    out = []
    for d in docs:
        try:
            tree = ast.parse(d.text)
        except (SyntaxError, ValueError):
            continue
        lines = d.text.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or ast.get_docstring(node) is None:
                continue
            doc_stmt = node.body[0]
            if len(node.body) < 2 or doc_stmt.end_lineno is None or node.end_lineno is None:
                continue
            start = min([node.lineno] + [dec.lineno for dec in node.decorator_list]) - 1
            body = lines[doc_stmt.end_lineno : node.end_lineno]
            if not (min_body_lines <= sum(bool(b.strip()) for b in body) and len(body) <= max_body_lines):
                continue
            indent = len(lines[start]) - len(lines[start].lstrip())
            out.append(Example(_dedent(lines[start : doc_stmt.end_lineno], indent), _dedent(body, indent),
                               f"{d.name}:{node.lineno}"))
    return out


def ngrams(text: str, n: int = NGRAM) -> set[int]:
    toks = _TOKEN.findall(text)
    return {hash(tuple(toks[i : i + n])) for i in range(len(toks) - n + 1)}


def decontaminate(examples: list[Example], eval_texts: Iterable[str], n: int = NGRAM) -> tuple[list[Example], int]:
    """Drop examples whose response shares an n-gram with any evaluation text; returns (kept, dropped)."""
    seen: set[int] = set()
    for t in eval_texts:
        seen |= ngrams(t, n)
    kept = [e for e in examples if not (ngrams(e.response, n) & seen)]
    return kept, len(examples) - len(kept)


def load_instruction_rows(path: Path) -> list[Example]:
    """Instruction/response (or text) rows of a JSONL file; a clear error if none is usable."""
    out, bad = [], 0
    for n, row in corpus.iter_jsonl(path):
        ex = _row_example(row, f"{path.name}:{n}") if isinstance(row, dict) else None
        if ex is None:
            bad += 1
        else:
            out.append(ex)
    if not out:
        raise GreenpruneError(f"{path}: no usable rows (need 'instruction'/'prompt'/'input' with "
                              f"'response'/'output'/'completion', or 'text'; {bad} rows without them)")
    return out


def _row_example(row: dict, source: str) -> Optional[Example]:
    pick = lambda keys: next((row[k] for k in keys if isinstance(row.get(k), str) and row[k].strip()), None)  # noqa: E731
    prompt, answer = pick(("instruction", "prompt", "input")), pick(("response", "output", "completion"))
    if prompt is not None and answer is not None:
        return Example(prompt.rstrip("\n") + "\n", answer, source)
    text = pick(("text", "content", "code"))
    return Example("", text, source) if text is not None else None


def build_examples(spec: str, eval_specs: tuple[str, ...] = ("pypkg:rich",)) -> tuple[list[Example], dict]:
    """Examples of one data spec: a .jsonl is the user's own rows (used as given); any other spec (stdlib, DIR,
    pypkg:NAME) is mined from its calibration split and decontaminated against its held-out split and the
    evaluation corpora `eval_specs`. Returns (examples, summary)."""
    path = Path(spec).expanduser()
    if path.suffix == ".jsonl":
        if not path.exists():
            raise GreenpruneError(f"data file not found: {spec}")
        ex = load_instruction_rows(path)
        return ex, {"spec": spec, "rows": len(ex)}
    calib, held = corpus.calibration_and_heldout(spec)
    mined = mine_functions(calib)
    eval_texts = [d.text for d in held if d not in calib]
    for e in eval_specs:
        eval_texts += [d.text for d in corpus.load_documents(e)]
    kept, dropped = decontaminate(mined, eval_texts)
    if not kept:
        raise GreenpruneError(f"no documented Python functions to mine from '{spec}' (found {len(mined)}, "
                              f"{dropped} overlapped the evaluation files)")
    return kept, {"spec": spec, "mined": len(mined), "dropped_contaminated": dropped, "rows": len(kept)}


def example_blocks(tokenizer, examples: list[Example], seq_len: int, max_tokens: Optional[int] = None) -> torch.Tensor:
    """[N, seq_len] token blocks: examples in a stable hashed order, each closed by EOS, packed back to back."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    order = sorted(examples, key=lambda e: corpus.stable_hash("order:" + e.source + e.text[:64]))
    ids: list[int] = []
    for e in order:
        ids.extend(tokenizer(e.text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    n = len(ids) // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    if n == 0:
        raise GreenpruneError(f"the recovery data has too few tokens ({len(ids)}) for one block of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)
