"""The `greenprune` command line: prune, eval, recover, search, and (cli_deploy.py) export, stream, bench."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from .errors import GreenpruneError

log = logging.getLogger("greenprune")


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="stdlib", help="calibration data: stdlib | DIR | FILE.jsonl | datasets:PATH | pypkg:NAME")
    p.add_argument("--eval-data", action="append", default=None,
                   help="extra evaluation corpus (repeatable); default: pypkg:rich (code outside the calibration corpus)")
    p.add_argument("--calib-tokens", type=int, default=16384,
                   help="tokens for activation statistics, Gram matrices and the dense token mass (default 16384)")
    p.add_argument("--eval-tokens", type=int, default=8192, help="tokens per evaluation corpus (default 8192)")
    p.add_argument("--seq-len", type=int, default=256, help="sequence length of calibration blocks / eval windows")
    p.add_argument("--nextline-samples", type=int, default=32, help="next-line completion samples (0: skip)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    from .importance import SCORERS
    from .planner import METHODS
    from .recover import add_recover_args

    ap = argparse.ArgumentParser(prog="greenprune", description="Unified structured pruning of Llama-family LLMs.")
    ap.add_argument("--version", action="version", version=f"greenprune {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prune", help="prune a model (default: SmolLM2-135M-Instruct by 22%%) and evaluate it")
    p.add_argument("--model", default=None, help="HF model directory, .gguf file, or hub id (default: the embedded SmolLM2-135M)")
    p.add_argument("--ratio", type=float, default=0.22, help="fraction of all parameters to remove (default 0.22)")
    p.add_argument("--align", type=int, default=64, help="FFN widths are multiples of this (default 64)")
    p.add_argument("--method", choices=METHODS, default="unified", help="unified (KL-guided, default) | uniform | layers")
    p.add_argument("--scorer", choices=["auto", *SCORERS], default="auto",
                   help="channel / KV-group importance (default auto: output-error where its Gram matrices fit in 4 GiB, else flap)")
    p.add_argument("--vocab", dest="vocab", action="store_true", default=None, help="prune the vocabulary (default for unified)")
    p.add_argument("--no-vocab", dest="vocab", action="store_false", help="keep the whole vocabulary")
    p.add_argument("--vocab-extra", type=int, default=2048,
                   help="also keep the N unused tokens the dense model expects most on calibration text (default 2048)")
    p.add_argument("--uniform", action="store_true", help="unified method, one FFN width / KV count for all kept layers")
    p.add_argument("--max-ffn-prune", type=float, default=0.75, help="largest fraction of one layer's FFN removed")
    p.add_argument("--no-layer-drop", action="store_true", help="never remove whole layers")
    p.add_argument("--kv", action="store_true", help="also consider removing KV groups (off by default: see README)")
    p.add_argument("--kl-tokens", type=int, default=512, help="calibration tokens for the KL tables (default 512)")
    p.add_argument("--drop-check-tokens", type=int, default=2048,
                   help="calibration tokens of the whole-plan KL that decides whether removing layers pays (default 2048)")
    p.add_argument("--reconstruct", dest="reconstruct", action="store_true", default=None,
                   help="training-free least-squares refit of the projections that consume pruned channels "
                        "(default: on where the scorer collected the Gram statistics, i.e. output-error)")
    p.add_argument("--no-reconstruct", dest="reconstruct", action="store_false")
    p.add_argument("--bias-compensation", dest="bias_compensation", action="store_true", default=None,
                   help="fold the mean output of removed channels into down_proj/o_proj biases (default: see README)")
    p.add_argument("--no-bias-compensation", dest="bias_compensation", action="store_false")
    p.add_argument("--recover", action="store_true", help="LoRA self-distillation toward the dense model before eval")
    add_recover_args(p, prefix="recover-")
    p.add_argument("--plan", default=None, help="apply this plan.json instead of planning")
    p.add_argument("--out", default="out/pruned", help="output directory (default out/pruned)")
    p.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation")
    _job_args(p)

    e = sub.add_parser("eval", help="evaluate a model, or a pruned model against its dense reference")
    e.add_argument("--model", default=None, help="model to evaluate (default: the embedded SmolLM2-135M)")
    e.add_argument("--reference", default=None, help="dense reference model (default: the one in the model's report)")
    e.add_argument("--out", default=None, help="write the results as JSON here")
    _job_args(e)

    r = sub.add_parser("recover", help="recover a pruned model: LoRA self-distillation toward its dense model")
    r.add_argument("--model", required=True, help="the pruned model directory")
    r.add_argument("--reference", default=None, help="dense reference (default: the one in the model's report)")
    r.add_argument("--data", action="append", default=None,
                   help="stdlib | DIR | pypkg:NAME (documented functions mined from its calibration split) | "
                        "FILE.jsonl (instruction/response rows); repeatable (default stdlib)")
    add_recover_args(r)
    r.add_argument("--seq-len", type=int, default=256, help="tokens per training block (default 256)")
    r.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens for the KL before/after (0: skip)")
    r.add_argument("--out", required=True, help="output directory of the recovered model")
    r.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")

    _search_parser(sub)

    from .cli_deploy import add_parsers

    add_parsers(sub)  # export, stream, bench
    return ap


def _search_parser(sub) -> None:
    s = sub.add_parser("search", help="find per-layer pruning rates by evolutionary search (writes OUT/plan.json)")
    s.add_argument("--model", default=None, help="model to prune (default: the embedded SmolLM2-135M)")
    s.add_argument("--data", default="stdlib", help="calibration data (as for prune)")
    s.add_argument("--ratio", type=float, default=0.30, help="fraction of all parameters to remove (default 0.30)")
    s.add_argument("--generations", type=int, default=10)
    s.add_argument("--population", type=int, default=12)
    s.add_argument("--children", type=int, default=0, help="children per generation (default: the population size)")
    s.add_argument("--operator", choices=("numeric", "llm"), default="numeric")
    s.add_argument("--llm", default="self", help="self (the model being pruned) | http://HOST:PORT (OpenAI-compatible) | model path")
    s.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per chat request")
    s.add_argument("--llm-max-tokens", type=int, default=192, help="reply tokens per chat request")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--fitness", choices=("kl", "bpb"), default="kl", help="KL to the dense model (default) or bits/byte")
    s.add_argument("--fitness-tokens", type=int, default=512, help="calibration tokens of the full fitness (stage 2)")
    s.add_argument("--stage1-tokens", type=int, default=128, help="tokens every child is scored on first")
    s.add_argument("--seq-len", type=int, default=128)
    s.add_argument("--calib-tokens", type=int, default=2048, help="tokens for the channel importance scores")
    s.add_argument("--align", type=int, default=64)
    s.add_argument("--max-ffn-prune", type=float, default=0.75)
    s.add_argument("--kv", action="store_true", help="also search KV-group counts")
    s.add_argument("--no-layer-drop", action="store_true")
    s.add_argument("--no-vocab", action="store_true", help="keep the whole vocabulary")
    s.add_argument("--vocab-extra", type=int, default=2048, help="unused tokens kept by dense output mass (as prune)")
    s.add_argument("--seeds", default="uniform,global,owl,dp", help="seed plans (comma list of uniform,global,owl,dp)")
    s.add_argument("--out", default="out/search")
    s.add_argument("--resume", action="store_true", help="continue the search checkpointed in OUT")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--no-progress", action="store_true")


def _run_search_cmd(a) -> None:
    from .search import SearchOptions, run_search

    opts = SearchOptions(
        model=a.model, data=a.data, ratio=a.ratio, generations=a.generations, population=a.population,
        children=a.children, operator=a.operator, llm=a.llm, llm_timeout=a.llm_timeout,
        llm_max_tokens=a.llm_max_tokens, seed=a.seed, fitness=a.fitness,
        fitness_tokens=a.fitness_tokens, stage1_tokens=a.stage1_tokens, seq_len=a.seq_len, calib_tokens=a.calib_tokens,
        align=a.align, max_ffn_prune=a.max_ffn_prune, kv=a.kv, drop_layers=not a.no_layer_drop, vocab=not a.no_vocab,
        vocab_extra=a.vocab_extra,
        seeds=tuple(x for x in a.seeds.split(",") if x), out=a.out, resume=a.resume, overwrite=a.overwrite,
        progress=not a.no_progress)
    s = run_search(opts)
    b, c = s["best"], s["cost"]
    print(f"best {b['metric']} {b['fitness']:.4f} ({b['origin']}), {b['ratio']:.1%} removed, "
          f"layers dropped {b['layers_dropped']}; seeds: "
          + ", ".join(f"{k} {v:.4f}" for k, v in s["seed_fitness"].items()))
    print(f"{c['candidates_evaluated']} candidates, {c['tokens']:,} tokens, {c['wall_s']:.0f} s; "
          f"plan: {Path(a.out) / 'plan.json'} (apply: greenprune prune --plan {Path(a.out) / 'plan.json'})")


def _options(a):
    from .pipeline import JobOptions
    from .planner import PlanOptions

    plan = PlanOptions(
        ratio=getattr(a, "ratio", 0.22), align=getattr(a, "align", 64), method=getattr(a, "method", "unified"),
        max_ffn_prune=getattr(a, "max_ffn_prune", 0.75), kv=getattr(a, "kv", False),
        drop_layers=not getattr(a, "no_layer_drop", False), uniform=getattr(a, "uniform", False),
    )
    for name in ("calib_tokens", "eval_tokens", "seq_len"):
        if getattr(a, name) < 2:
            raise GreenpruneError(f"--{name.replace('_', '-')} must be >= 2")
    return JobOptions(
        model=a.model, data=a.data, eval_data=tuple(a.eval_data) if a.eval_data is not None else ("pypkg:rich",),
        plan=plan, scorer=getattr(a, "scorer", "auto"), vocab=getattr(a, "vocab", None),
        vocab_extra=getattr(a, "vocab_extra", 2048), calib_tokens=a.calib_tokens, kl_tokens=getattr(a, "kl_tokens", 512),
        drop_check_tokens=getattr(a, "drop_check_tokens", 2048), seq_len=a.seq_len,
        eval_tokens=a.eval_tokens, nextline_samples=a.nextline_samples, plan_file=getattr(a, "plan", None),
        reconstruct=getattr(a, "reconstruct", None), out=getattr(a, "out", None), overwrite=getattr(a, "overwrite", False),
        evaluate=not getattr(a, "no_eval", False), progress=not a.no_progress,
        **({"bias_compensation": a.bias_compensation} if getattr(a, "bias_compensation", None) is not None else {}),
        recover=_recover_options(a, "recover_", progress=not a.no_progress, seq_len=a.seq_len) if getattr(a, "recover", False) else None,
    )


def _recover_options(a, prefix="", **over):
    from .recover import options_from_args

    return options_from_args(a, prefix, **over)


def _reference_from_report(model: str | None) -> str | None:
    if model is None:
        return None
    rp = Path(model) / "greenprune_report.json"
    if rp.exists():
        src = json.loads(rp.read_text()).get("source_model")
        return None if src is None or src.startswith("default:") else src
    return None


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("GREENPRUNE_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    a.command_line = shlex.join(["greenprune", *argv])  # recorded in results (bench.json)
    try:
        from .cli_deploy import COMMANDS, run as run_deploy

        if a.cmd in COMMANDS:
            return run_deploy(a)
        from .report import print_eval, print_prune

        if a.cmd == "recover":
            from .recover import run_recover

            ro = _recover_options(a, model=a.model, reference=a.reference, data=tuple(a.data or ("stdlib",)),
                                  seq_len=a.seq_len, eval_tokens=a.eval_tokens, out=a.out, overwrite=a.overwrite,
                                  progress=not a.no_progress)
            rep = run_recover(ro)
            kl = rep["heldout_kl"]
            print(f"recovered {a.model} -> {a.out}: {rep['steps']} steps, {rep['train_tokens']:,} tokens, "
                  f"{rep['wall_s']['train']} s; held-out KL to dense {kl['before']} -> {kl['after']}")
            return 0
        if a.cmd == "search":
            try:
                _run_search_cmd(a)
            except KeyboardInterrupt:
                print(f"greenprune: interrupted; finished generations are checkpointed in {a.out} "
                      f"(continue with the same command and --resume)", file=sys.stderr)
                return 130
            return 0
        opts = _options(a)
        if a.cmd == "prune":
            from .pipeline import run_prune

            report = run_prune(opts)
            print_prune(report, opts.out)
        else:
            from .pipeline import run_eval

            ref = a.reference or _reference_from_report(a.model)
            res = run_eval(a.model, ref, opts)
            print_eval(res)
            if a.out:
                from .models import write_json_atomic

                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(Path(a.out), res)
        return 0
    except GreenpruneError as e:
        print(f"greenprune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if a.cmd == "recover" or getattr(a, "recover", False):
            print(f"greenprune: interrupted; the output was not written; recovery checkpoints (if any) are in "
                  f"{a.out}.ckpt: run the same command again to resume", file=sys.stderr)
            return 130
        print("greenprune: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
