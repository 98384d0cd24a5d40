"""Training checkpoints written atomically, for runs that can be interrupted and resumed.

Layout of a checkpoint folder:
    latest.json             {"step": k, "dir": "step-0000k"}: replaced atomically after step-0000k is complete
    step-0000k/trainable.safetensors   the trainable tensors (LoRA adapters) by parameter name
    step-0000k/optimizer.safetensors   AdamW moments and step counts, by parameter index
    step-0000k/state.json              step, loss history, the options fingerprint
A new checkpoint is written to a scratch folder, renamed into place, and only then does latest.json point to it;
the previous checkpoint is deleted last. A failed write (disk full) removes the scratch folder and leaves the
last good checkpoint and latest.json untouched. Loading uses safetensors only (no pickles).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import GreenpruneError
from ..modelio.save import WRITE_ERRORS, remove_stale_scratch, write_json_atomic

LATEST = "latest.json"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().cpu()
    return out


def save_checkpoint(folder: Path, step: int, trainable: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
                    state: dict) -> Path:
    """Write checkpoint `step` atomically; raise GreenpruneError (naming the last good one) if it fails."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = folder / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for p in sorted(folder.glob(".step-*.partial-*")):  # scratch of killed runs (pid gone): it would fill the disk
        remove_stale_scratch(folder, p.name.rsplit("-", 1)[0] + "-")
    try:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        save_file(_optimizer_tensors(opt), str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1) + "\n")
        shutil.rmtree(folder / name, ignore_errors=True)
        os.replace(tmp, folder / name)
        previous = latest_step(folder)
        write_json_atomic(folder / LATEST, {"step": step, "dir": name})
    except (*WRITE_ERRORS, GreenpruneError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_step(folder)
        kept = f"the last good checkpoint (step {last}) is intact in {folder}" if last is not None else "no earlier checkpoint exists"
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise GreenpruneError(f"could not write the checkpoint of step {step} to {folder}: {reason}; "
                              f"{kept}; free space and run the same command again to resume") from e
    if previous is not None and previous != step:
        shutil.rmtree(folder / f"step-{previous:07d}", ignore_errors=True)
    return folder / name


def latest_step(folder: Path) -> Optional[int]:
    p = Path(folder) / LATEST
    if not p.exists():
        return None
    try:
        return int(json.loads(p.read_text())["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise GreenpruneError(f"{p}: unreadable checkpoint index ({e}); remove {folder} to start over") from e


def load_checkpoint(folder: Path) -> Optional[tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(state, trainable tensors, optimizer tensors) of the latest checkpoint, or None when there is none."""
    step = latest_step(folder)
    if step is None:
        return None
    d = Path(folder) / f"step-{step:07d}"
    try:
        state = json.loads((d / "state.json").read_text())
        if not isinstance(state, dict):
            raise ValueError("state.json is not an object")
        return state, load_file(str(d / "trainable.safetensors")), load_file(str(d / "optimizer.safetensors"))
    except (*WRITE_ERRORS, ValueError, RecursionError) as e:  # SafetensorError: a truncated or corrupt file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GreenpruneError(f"checkpoint {d} is unreadable ({reason}); remove {folder} to start over") from e


def check_resume(folder: Path, state, tensors: dict, trainable: dict, steps: int) -> int:
    """The step a checkpoint resumes from, after checking it against this run: a state with a step within the
    run and one loss per step, adapters of this model's names and shapes. A one-line error otherwise."""
    def bad(why: str) -> GreenpruneError:
        return GreenpruneError(f"checkpoint in {folder} does not match this run ({why}); remove {folder} to start over")

    if not isinstance(state, dict):
        raise bad("state.json is not an object")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= steps:
        raise bad(f"step {step!r} is not in [1, {steps}]")
    for key in ("loss", "lr"):
        v = state.get(key)
        if not isinstance(v, list) or len(v) != step or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise bad(f"'{key}' must list {step} finite numbers, one per step")
    if set(tensors) != set(trainable):
        raise bad("it holds other adapters than this model's")
    wrong = [n for n, t in tensors.items() if tuple(t.shape) != tuple(trainable[n].shape)]
    if wrong:
        raise bad(f"{wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, this model's "
                  f"{tuple(trainable[wrong[0]].shape)}")
    return step


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    n_params = sum(len(g["params"]) for g in sd["param_groups"])
    if set(state) - set(range(n_params)):
        raise GreenpruneError("checkpoint optimizer state does not match the trainable parameters")
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
