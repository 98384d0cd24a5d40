"""The report greenprune writes beside a pruned model (greenprune_report.json), read in one place.

Commands that start from a pruned model (eval, recover, bench) learn its dense source from the report:
`source_model` is the spec the model was pruned from, or "default:SmolLM2-135M-Instruct" for the embedded
default model (which `resolve_model(None)` loads).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..errors import GreenpruneError

REPORT_NAME = "greenprune_report.json"
DEFAULT_SOURCE = "default:SmolLM2-135M-Instruct"


def source_spec(spec) -> str:
    """How a report records a source (model or data): a local path absolute and resolved, so the report works
    from any directory; anything else (a hub id, stdlib, pypkg:NAME) as given; None: the embedded default."""
    if spec is None:
        return DEFAULT_SOURCE
    s = str(spec)
    p = Path(s.split(":", 1)[1] if s.startswith("datasets:") else s).expanduser()
    if s in ("stdlib",) or s.startswith(("pypkg:", "default:")) or not p.exists():
        return s
    return ("datasets:" if s.startswith("datasets:") else "") + str(p.resolve())


def hub_revision(config) -> Optional[str]:
    """The hub commit a model was loaded at (transformers keeps it on the config); None for local files."""
    rev = getattr(config, "_commit_hash", None)
    return rev if isinstance(rev, str) and rev else None


def read_report(model_dir) -> Optional[dict]:
    """The report of a model directory, None when it has none; a one-line error when it is unreadable."""
    p = Path(model_dir) / REPORT_NAME
    if not p.is_file():
        return None
    try:
        report = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise GreenpruneError(f"{p}: unreadable report ({e})") from e
    if not isinstance(report, dict):
        raise GreenpruneError(f"{p}: not a greenprune report (expected a JSON object)")
    return report


def has_source(model_dir) -> bool:
    """Whether the model directory's report names the model it was pruned from."""
    report = read_report(model_dir) if model_dir is not None else None
    return bool(report and report.get("source_model"))


def source_model(model_dir) -> Optional[str]:
    """The dense model a pruned directory came from, as a spec for load_model: None for the embedded default
    model, or when the directory has no report (check has_source to tell the two apart)."""
    report = read_report(model_dir) if model_dir is not None else None
    src = (report or {}).get("source_model")
    return None if not src or str(src).startswith("default:") else str(src)


def reference_spec(model_dir, reference: Optional[str] = None) -> Optional[str]:
    """The dense reference of a pruned directory: `reference` if given, else the report's source model (None:
    the embedded default); a one-line error when neither names one."""
    if reference:
        return reference
    if not has_source(model_dir):
        raise GreenpruneError(f"{model_dir} has no {REPORT_NAME} naming its dense model; pass --reference")
    return source_model(model_dir)
