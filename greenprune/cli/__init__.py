"""The `greenprune` command line: prune, eval, recover, search, export, stream, bench (one module per group)."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from .._version import __version__
from ..errors import GreenpruneError
from . import deploy, evaluate, prune, recover, search

log = logging.getLogger("greenprune")
RUNNERS = {"prune": prune.run_prune_cmd, "eval": evaluate.run, "recover": recover.run, "search": search.run,
           **{c: deploy.run for c in deploy.COMMANDS}}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="greenprune", description="Unified structured pruning of Llama-family LLMs.")
    ap.add_argument("--version", action="version", version=f"greenprune {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    prune.add_parser(sub)
    evaluate.add_parser(sub)
    recover.add_parser(sub)
    search.add_parser(sub)
    deploy.add_parsers(sub)  # export, stream, bench
    return ap


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("GREENPRUNE_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    a.command_line = shlex.join(["greenprune", *argv])  # recorded in results (bench.json)
    try:
        return RUNNERS[a.cmd](a)
    except GreenpruneError as e:
        print(f"greenprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if a.cmd == "search":
            print(f"greenprune: interrupted; finished generations are checkpointed in {a.out} "
                  f"(continue with the same command and --resume)", file=sys.stderr)
        elif a.cmd == "recover" or getattr(a, "recover", False):
            print(f"greenprune: interrupted; the output was not written; recovery checkpoints (if any) are in "
                  f"{a.out}.ckpt: run the same command again to resume", file=sys.stderr)
        else:
            print("greenprune: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
