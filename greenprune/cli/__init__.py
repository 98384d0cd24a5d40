"""The `greenprune` command line: prune, eval, recover, search, export, stream, bench (one module per group)."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub.utils import disable_progress_bars
from transformers.utils import logging as hf_logging

from .._version import __version__
from ..allocator import keep_freed_memory
from ..errors import GreenpruneError
from ..modelio.load import DEFAULT_MODEL, PACKAGED_MODELS, packaged_cache_path
from ..modelio.reports import read_report
from ..modelio.save import check_output
from . import deploy, evaluate, prune, recover, search

log = logging.getLogger("greenprune")
RUNNERS = {"prune": prune.run_prune_cmd, "eval": evaluate.run, "recover": recover.run, "search": search.run,
           **{c: deploy.run for c in deploy.COMMANDS}}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="greenprune", description="Unified structured pruning of decoder LLMs (Llama, "
                                 "Mistral, Qwen2/3, Gemma 2/3, Phi-3, StarCoder2, Granite, mixture-of-experts).")
    ap.add_argument("--version", action="version", version=f"greenprune {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    prune.add_parser(sub)
    evaluate.add_parser(sub)
    recover.add_parser(sub)
    search.add_parser(sub)
    deploy.add_parsers(sub)  # export, stream, bench
    return ap


# options that name what a command reads: --out must never be, contain or lie inside any of them
INPUT_OPTIONS = ("model", "reference", "data", "eval_data", "plan", "tokenizer", "completions", "lm_eval_include")


def inputs_of(a) -> list[tuple[str, object]]:
    """(option, spec) of every input the command line names, the dense model a pruned one's report names, and
    the embedded default model where --model is left out."""
    found = []
    for name in INPUT_OPTIONS:
        v = getattr(a, name, None)
        for spec in v if isinstance(v, (list, tuple)) else [v]:
            if spec is not None:
                found.append((f"--{name.replace('_', '-')}", spec))
    model = getattr(a, "model", "")
    if model is None:
        found.append(("(the default model)", packaged_cache_path(DEFAULT_MODEL)))
    elif model in PACKAGED_MODELS:
        found.append((f"(the packaged model {model})", packaged_cache_path(model)))
    elif model and Path(model).is_dir():
        src = (read_report(model) or {}).get("source_model")
        if src:
            found.append((f"(the dense model of {model})", src))
    return found


def check_out(a) -> None:
    """Refuse, before any work, an --out that would destroy an input, is the wrong kind of file, or cannot be written."""
    out = getattr(a, "out", None)
    if out is None:
        return
    if a.cmd != "eval":
        check_output(out, inputs_of(a))
    elif Path(out).suffix == ".json":
        check_output(out, inputs_of(a), writes="a JSON report", file_suffix=".json")
    else:
        check_output(out, inputs_of(a), writes="a new directory (or, named FILE.json, a JSON report)",
                     replaces_dir=False)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same clean unwinding as Ctrl-C (scratch removed, nothing half-written)."""


@contextmanager
def terminate_as_interrupt():
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def silence_progress() -> None:
    """--no-progress silences the libraries' bars too (transformers' shard loading / writing, the hub's downloads)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hf_logging.disable_progress_bar()
    disable_progress_bars()


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("GREENPRUNE_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    a.command_line = shlex.join(["greenprune", *argv])  # recorded in results (bench.json)
    if getattr(a, "no_progress", False):
        silence_progress()
    keep_freed_memory()  # large temporaries from reused memory (allocator.py)
    try:
        with terminate_as_interrupt():
            check_out(a)
            return RUNNERS[a.cmd](a)
    except GreenpruneError as e:
        print(f"greenprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        code = 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
        if a.cmd == "search":
            print(f"greenprune: interrupted; finished generations are checkpointed in {a.out} "
                  f"(continue with the same command and --resume)", file=sys.stderr)
        elif a.cmd == "recover" or getattr(a, "recover", False):
            print(f"greenprune: interrupted; the output was not written; recovery checkpoints (if any) are in "
                  f"{a.out}.ckpt: run the same command again to resume", file=sys.stderr)
        else:
            print("greenprune: interrupted; nothing was written", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
