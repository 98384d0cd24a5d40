"""lm-evaluation-harness tasks on a (pruned) model, through the harness's own Hugging Face wrapper (HFLM).

The model is loaded with greenprune.modelio.load.load_model, so per-layer outputs (model_type greenprune_llama,
registered with the Auto classes by greenprune) load like plain Llama ones, and the instance is handed to
HFLM(pretrained=model, tokenizer=tokenizer). Tasks are the harness's own or YAML files in include_dir (for
example a local JSON-lines file through `dataset_path: json` and `dataset_kwargs: {data_files: ...}`), which needs
no network. Needs `pip install lm-eval==0.4.13` (it keeps torch and transformers as they are).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import GreenpruneError
from ..modelio.load import load_model

INSTALL_HINT = "pip install lm-eval==0.4.13"


def _import_harness():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise GreenpruneError(f"lm-eval tasks need lm-evaluation-harness ({INSTALL_HINT}): {e}") from None
    return lm_eval, HFLM, TaskManager


def _task_manager(TaskManager, tasks: Sequence[str], include_dir: Optional[Union[str, Path]],
                  include_defaults: Optional[bool]):
    """include_defaults None: the harness's own tasks only when include_dir lacks one of `tasks` (indexing its
    ~15k task files takes seconds)."""
    if include_dir is None:
        if include_defaults is False:
            raise GreenpruneError("include_defaults=False needs an include_dir with the tasks")
        return TaskManager()
    include_dir = Path(include_dir)
    if not include_dir.is_dir():
        raise GreenpruneError(f"{include_dir}: no such task directory")
    if include_defaults:
        return TaskManager(include_path=str(include_dir))
    local = TaskManager(include_path=str(include_dir), include_defaults=False)
    if include_defaults is False or all(t in local.all_tasks for t in tasks):
        return local
    return TaskManager(include_path=str(include_dir))


def metrics_of(results: dict) -> dict:
    """{task: {metric: value}} from the harness's results, the filter suffix dropped when it is "none"
    (acc,none -> acc; acc,strict-match stays)."""
    out = {}
    for task, row in results.items():
        m = {}
        for key, value in row.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            name, flt = key.split(",", 1)
            m[name if flt == "none" else key] = value
        out[task] = m
    return out


def run_lm_eval(model_dir: Optional[Union[str, Path]], tasks: Union[str, Sequence[str]],
                include_dir: Optional[Union[str, Path]] = None, limit: Optional[Union[int, float]] = None,
                batch_size: Union[int, str] = 1, device: str = "cpu", num_fewshot: Optional[int] = None,
                seed: int = 0, bootstrap_iters: int = 1000, include_defaults: Optional[bool] = None, model=None,
                tokenizer=None) -> dict:
    """Run lm-eval tasks; returns {"metrics": {task: {metric: value}}, "results": the harness's per-task
    results, "n_samples", "versions", "settings", "wall_s"}.

    model_dir: a model directory (or None: the embedded default), loaded with greenprune.modelio.load.load_model;
    or pass model= and tokenizer= already loaded. tasks: names, or a comma-separated string.
    limit: examples per task (a fraction when < 1, as the harness takes it).
    include_defaults: also the harness's own tasks (None: only when include_dir lacks a task asked for).
    """
    lm_eval, HFLM, TaskManager = _import_harness()
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise GreenpruneError("no lm-eval task given")
    t0 = time.monotonic()
    manager = _task_manager(TaskManager, names, include_dir, include_defaults)
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        where = f" (nor in {include_dir})" if include_dir is not None else ""
        raise GreenpruneError(f"unknown lm-eval task {unknown[0]!r}{where}")
    if model is None:
        model, tokenizer = load_model(None if model_dir is None else str(model_dir))
    elif tokenizer is None:
        raise GreenpruneError("run_lm_eval: pass tokenizer= with model=")
    model = model.to(device).eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, log_samples=False, bootstrap_iters=bootstrap_iters,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                      fewshot_random_seed=seed)
    except GreenpruneError:
        raise
    except Exception as e:  # a task's data that cannot be had (no network here), a bad task file, ...
        raise GreenpruneError(f"lm-eval {','.join(names)}: {type(e).__name__}: {e}") from e
    if out is None:
        raise GreenpruneError("lm-eval returned no results")
    results = {t: out["results"][t] for t in out["results"]}
    return {
        "metrics": metrics_of(results),
        "results": results,
        "n_samples": out.get("n-samples"),
        "versions": out.get("versions"),
        "settings": {"model": None if model_dir is None else str(model_dir), "tasks": names,
                     "include_dir": None if include_dir is None else str(include_dir), "limit": limit,
                     "batch_size": batch_size, "device": device, "num_fewshot": num_fewshot, "seed": seed,
                     "lm_eval_version": out.get("lm_eval_version")},
        "wall_s": round(time.monotonic() - t0, 3),
    }
