"""The prune and eval jobs: load -> data -> scores -> plan -> prune -> evaluate -> save (atomically).

Data flows one way; the dense model is never modified and its files are never written.
"""
from __future__ import annotations

import copy
import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from . import data as data_mod
from ._version import __version__
from .errors import GreenpruneError
from .evaluate import agreement, bits_per_byte, cpu_tokens_per_second, generate_code, next_line_exact_match, next_line_samples
from .importance import score_model
from .models import atomic_dir, dir_size, load_model, num_params, write_json_atomic
from .plan import ModelShape, PruningPlan, resolve_plan
from .planner import LayerwiseKL, PlanOptions, check_layer_drops, make_plan, measure_kl_tables
from .plots import plot_plan
from .prune import prune_model
from .reconstruct import compensate_, reconstruct_
from .vocab import choose_vocabulary, prune_tokenizer

if TYPE_CHECKING:
    from .recover import RecoverOptions

log = logging.getLogger(__name__)
REPORT_NAME = "greenprune_report.json"
SIGNATURE_PROMPT = 'def is_palindrome(s: str) -> bool:\n    """Return True if s reads the same backwards."""\n'


@dataclass(frozen=True)
class JobOptions:
    model: Optional[str] = None  # None: the embedded default (SmolLM2-135M-Instruct)
    data: str = "stdlib"
    eval_data: tuple[str, ...] = ("pypkg:rich",)  # code outside the calibration corpus, besides the held-out split
    plan: PlanOptions = field(default_factory=PlanOptions)
    scorer: str = "auto"  # output-error where its Gram matrices fit, else flap (importance.resolve_scorer_name)
    vocab: Optional[bool] = None  # None: on for the unified method, off for the baselines
    vocab_min_count: int = 1
    vocab_extra: int = 2048  # also keep the N unused tokens the dense model expects most (vocab.choose_vocabulary)
    # activation statistics, Gram matrices, dense token mass. Measured on SmolLM2 at the 22% widths (output-error,
    # FFN only, bits/byte x dense stdlib / rich): 4096 tokens 1.085 / 1.084, 16384 tokens 1.073 / 1.081; the
    # vocabulary from the 16384-token mass costs 1.037x on rich, from 4096 tokens 1.048x
    calib_tokens: int = 16384
    kl_tokens: int = 512  # KL tables of the unified planner
    drop_check_tokens: int = 2048  # whole-plan KL that decides whether removing layers pays (check_layer_drops)
    seq_len: int = 256
    eval_tokens: int = 8192
    nextline_samples: int = 32
    # training-free least-squares refit of down_proj / o_proj (reconstruct.py). None: on wherever the scorer
    # already collected the Gram statistics it needs (the output-error scorer, chosen by --scorer auto where they
    # fit), so it costs seconds. Measured on the unified plans with bias compensation, dense bits/byte x held-out
    # stdlib / rich, without -> with the refit: 22% 1.065/1.113 -> 1.041/1.097, 30% 1.160/1.234 -> 1.112/1.183,
    # 50% 2.107/1.905 -> 1.956/1.808 (README quality table)
    reconstruct: Optional[bool] = None
    reconstruct_ridge: float = 1.0
    # fold removed channels' mean output into down_proj/o_proj biases (reconstruct.compensate_). None: on for
    # per-layer plans, which are saved as greenprune_llama anyway (measured on the unified 22% plan: 1.093x ->
    # 1.072x dense bits/byte held-out stdlib, 1.119x -> 1.103x rich); off for uniform plans, which then stay a
    # plain llama config that any Llama loader reads (--bias-compensation turns it on there too)
    bias_compensation: Optional[bool] = None
    recover: Optional["RecoverOptions"] = None  # LoRA self-distillation after pruning (recover.py)
    plan_file: Optional[str] = None
    out: Optional[str] = None
    overwrite: bool = False
    evaluate: bool = True
    progress: bool = True

    def use_reconstruct(self, stats) -> bool:
        if self.reconstruct is not None:
            return self.reconstruct
        return all(st.ffn_gram is not None for st in stats)

    def use_bias_compensation(self, plan: PruningPlan) -> bool:
        return (not plan.is_uniform) if self.bias_compensation is None else self.bias_compensation

    @property
    def use_vocab(self) -> bool:
        return self.plan.method == "unified" if self.vocab is None else self.vocab


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t, 2)


def build_plan(model, tokenizer, opts: JobOptions, calib: list, timer: Timer) -> tuple[PruningPlan, dict]:
    shape = ModelShape.from_config(model.config)
    opts.plan.validate(shape)
    with timer("tokenize_calibration"):
        blocks = data_mod.token_blocks(tokenizer, calib, opts.seq_len, opts.calib_tokens)
    with timer("importance"):
        scores = score_model(model, blocks, opts.scorer, progress=opts.progress, gram=bool(opts.reconstruct))
    extra = {"block_influence": scores.block_influence, "scores": scores}
    if opts.plan_file:
        plan = PruningPlan.load(Path(opts.plan_file))
        if plan.shape != shape:
            raise GreenpruneError(f"plan {opts.plan_file} was made for another model shape ({plan.shape})")
        return resolve_plan(plan, scores.ffn, scores.kv), extra
    vocab_keep = None
    if opts.use_vocab:
        with timer("vocabulary"):
            vocab_keep = vocabulary_for(tokenizer, shape, calib, scores, opts.plan.ratio, opts.vocab_min_count,
                                        opts.vocab_extra)
    tables = None
    if opts.plan.method == "unified":
        with timer("kl_tables"):
            kl_blocks = blocks[: max(1, opts.kl_tokens // blocks.shape[1])]
            kl = LayerwiseKL(model, kl_blocks, vocab_keep)
            tables = measure_kl_tables(kl, scores, shape, opts.plan, progress=opts.progress)
        extra["kl_tables"] = tables
    plan_opts = _with_bias_budget(opts, shape)
    with timer("plan"):
        try:
            plan = make_plan(shape, scores, plan_opts, vocab_keep, tables)
        except GreenpruneError as e:
            if vocab_keep is not None and opts.vocab_extra > 0:
                raise GreenpruneError(f"{e}, or keep fewer unused tokens (--vocab-extra {opts.vocab_extra})") from e
            raise
    if tables is not None and tables["drop"] and plan.dropped_layers:
        with timer("layer_drop_check"):
            check_blocks = blocks[: max(1, opts.drop_check_tokens // blocks.shape[1])]
            plan, extra["layer_drop_check"] = check_layer_drops(model, check_blocks, scores, shape, plan_opts,
                                                                vocab_keep, tables, plan)
        log.info("layer removal check: %s", extra["layer_drop_check"])
    return plan, extra


def vocabulary_for(tokenizer, shape: ModelShape, calib: list, scores, ratio: float, min_count: int = 1,
                   extra: int = 2048) -> list[int]:
    """The kept vocabulary of a plan: calibration tokens + the dense model's most expected others, never
    removing more than the whole parameter budget (tokens are given back first)."""
    allowed = int(ratio * shape.dense_params) // shape.vocab_params(1)
    return choose_vocabulary(tokenizer, (d.text for d in calib), shape.vocab_size, scores.token_mass, min_count,
                             extra, max_removed=allowed)


def _with_bias_budget(opts: JobOptions, shape: ModelShape) -> PlanOptions:
    """Plan options whose budget leaves room for the output biases of bias compensation (one hidden-size
    vector per layer and projection), so the saved model still removes at least the requested fraction."""
    could_be_used = opts.bias_compensation or (opts.bias_compensation is None and opts.plan.method == "unified"
                                                and not opts.plan.uniform)
    if not could_be_used:
        return opts.plan
    extra = shape.num_hidden_layers * shape.hidden_size * (2 if opts.plan.kv else 1)
    return replace(opts.plan, ratio=min(opts.plan.ratio + extra / shape.dense_params, 0.99))


def evaluate_pair(dense, dense_tok, pruned, pruned_tok, vocab_keep, heldout: dict[str, list[str]],
                  opts: JobOptions, timer: Timer) -> dict:
    out = {"dense": {}, "pruned": {}}
    for name, texts in heldout.items():
        with timer(f"eval_{name}"):
            d = bits_per_byte(dense, dense_tok, texts, opts.seq_len, opts.progress)
            p = bits_per_byte(pruned, pruned_tok, texts, opts.seq_len, opts.progress)
            a = agreement(dense, pruned, pruned_tok, texts, vocab_keep, opts.seq_len, opts.progress)
        out["dense"][name] = {"bpb": d["bpb"], "tokens": d["tokens"], "bytes": d["bytes"]}
        out["pruned"][name] = {"bpb": p["bpb"], "tokens": p["tokens"], "bytes": p["bytes"], "bpb_ratio": p["bpb"] / d["bpb"], **a}
    first = next(iter(heldout))
    for side in ("dense", "pruned"):  # the headline numbers: the held-out split of the calibration corpus
        out[side]["bpb"] = out[side][first]["bpb"]
    for k in ("kl", "top1_agreement", "dropped_mass"):
        out["pruned"][k] = out["pruned"][first][k]
    if opts.nextline_samples:
        samples = next_line_samples(heldout[first], opts.nextline_samples)
        with timer("eval_nextline"):
            out["dense"]["next_line_exact_match"] = next_line_exact_match(dense, dense_tok, samples, progress=opts.progress)["exact_match"]
            out["pruned"]["next_line_exact_match"] = next_line_exact_match(pruned, pruned_tok, samples, progress=opts.progress)["exact_match"]
    with timer("eval_speed"):
        out["dense"]["cpu_tokens_per_s"] = cpu_tokens_per_second(dense, dense.config.vocab_size)
        out["pruned"]["cpu_tokens_per_s"] = cpu_tokens_per_second(pruned, pruned.config.vocab_size)
    out["pruned"]["sample_completion"] = {"prompt": SIGNATURE_PROMPT, "dense": generate_code(dense, dense_tok, SIGNATURE_PROMPT),
                                          "pruned": generate_code(pruned, pruned_tok, SIGNATURE_PROMPT)}
    return out


def heldout_texts(tokenizer, opts: JobOptions, heldout_docs: list) -> dict[str, list[str]]:
    sets = {f"{opts.data}:heldout": data_mod.eval_snippets(tokenizer, heldout_docs, opts.eval_tokens)}
    for spec in opts.eval_data:
        sets[spec] = data_mod.eval_snippets(tokenizer, data_mod.load_documents(spec), opts.eval_tokens)
    return sets


def run_prune(opts: JobOptions) -> dict:
    """The whole prune job; returns the report (also written to OUT/greenprune_report.json)."""
    timer = Timer()
    out = Path(opts.out) if opts.out else None
    if out is not None and out.exists() and not opts.overwrite:  # fail before the long work, not after
        raise GreenpruneError(f"output directory {out} exists (use --overwrite to replace it)")
    if opts.plan_file is None:
        opts.plan.validate()  # a bad --ratio is reported before minutes of loading and scoring
    torch.manual_seed(0)
    with timer("load"):
        dense, tok = load_model(opts.model)  # checks the architecture
    with timer("data"):
        calib, held = data_mod.calibration_and_heldout(opts.data)
    plan, extra = build_plan(dense, tok, opts, calib, timer)
    with timer("prune"):
        pruned = prune_model(dense, plan)
        pruned_tok = prune_tokenizer(tok, plan.vocab_keep) if plan.vocab_keep is not None else copy.deepcopy(tok)
    refit = opts.use_reconstruct(extra["scores"].stats)
    if opts.use_bias_compensation(plan):
        with timer("reconstruct"):
            compensate_(pruned, dense, plan, extra["scores"].stats, refit, opts.reconstruct_ridge)
    elif refit:
        with timer("reconstruct"):
            reconstruct_(pruned, dense, plan, extra["scores"].stats, opts.reconstruct_ridge)
    recovery = None
    if opts.recover is not None:
        from .recover import recover_after_prune

        with timer("recover"):
            pruned, history, recovery = recover_after_prune(pruned, pruned_tok, dense, tok, plan.vocab_keep, opts.recover,
                                                            out, opts.data, opts.eval_data)
    report = {
        "greenprune_version": __version__,
        "source_model": str(opts.model or "default:SmolLM2-135M-Instruct"),
        "options": _jsonable(asdict(opts)),
        "params": {"dense": num_params(dense), "pruned": num_params(pruned), "ratio": 1 - num_params(pruned) / num_params(dense)},
        "plan": plan.to_dict(),
        "compensation": {"bias": opts.use_bias_compensation(plan), "refit": refit},
        "importance": {k: v for k, v in extra.items() if k != "scores"},
        **({"recovery": recovery} if recovery is not None else {}),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    if opts.evaluate:
        report["eval"] = evaluate_pair(dense, tok, pruned, pruned_tok, plan.vocab_keep, heldout_texts(tok, opts, held), opts, timer)
    report["timings_s"] = timer.times
    if out is not None:
        with timer("save"):
            with atomic_dir(out, overwrite=opts.overwrite) as tmp:
                pruned.save_pretrained(tmp, safe_serialization=True)
                pruned_tok.save_pretrained(tmp)
                plan.save(tmp / "plan.json")
                plot_plan(plan, tmp / "plan.png", extra.get("kl_tables"))
                if recovery is not None:
                    from .recover import plot_loss

                    plot_loss(history, tmp / "loss.png")
                report["size_on_disk"] = {"pruned_bytes": dir_size(tmp)}
                report["timings_s"] = timer.times
                write_json_atomic(tmp / REPORT_NAME, report)
        if recovery is not None:
            import shutil

            from .recover import checkpoint_dir_for

            shutil.rmtree(checkpoint_dir_for(out), ignore_errors=True)  # complete: nothing left to resume
    return report


def run_eval(model_spec: str, reference: Optional[str], opts: JobOptions) -> dict:
    """Evaluate a (pruned) model alone or against a reference (dense) model."""
    timer = Timer()
    model, tok = load_model(model_spec)
    ref, ref_tok = load_model(reference) if reference or model_spec is None else (None, None)
    calib, held = data_mod.calibration_and_heldout(opts.data)
    base_tok = ref_tok if ref_tok is not None else tok
    sets = heldout_texts(base_tok, opts, held)
    if ref is None:
        res = {name: bits_per_byte(model, tok, texts, opts.seq_len, opts.progress) for name, texts in sets.items()}
        return {"model": {"params": num_params(model), **{k: v["bpb"] for k, v in res.items()},
                          "cpu_tokens_per_s": cpu_tokens_per_second(model, model.config.vocab_size)}}
    keep = _vocab_keep_of(model_spec, ref_tok, tok)
    res = evaluate_pair(ref, ref_tok, model, tok, keep, sets, opts, timer)
    res["params"] = {"dense": num_params(ref), "pruned": num_params(model)}
    if model_spec and Path(model_spec).is_dir():
        res["size_on_disk"] = {"pruned_bytes": dir_size(Path(model_spec))}
    res["timings_s"] = timer.times
    return res


def _vocab_keep_of(model_spec, ref_tok, tok) -> Optional[list[int]]:
    """The original ids of a pruned model's vocabulary: from its plan.json, else matched by token string."""
    plan_file = Path(model_spec) / "plan.json" if model_spec else None
    if plan_file is not None and plan_file.exists():
        keep = PruningPlan.load(plan_file).vocab_keep
        return None if keep is None else list(keep)
    return _vocab_map(ref_tok, tok) if len(tok) != len(ref_tok) else None


def _vocab_map(ref_tok, tok) -> list[int]:
    """Original ids of a pruned tokenizer's tokens, matched by token string."""
    ref_vocab = ref_tok.get_vocab()
    inv = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    missing = [t for t, _ in inv if t not in ref_vocab]
    if missing:
        raise GreenpruneError(f"the model's vocabulary is not a subset of the reference's (e.g. {missing[:3]})")
    return [ref_vocab[t] for t, _ in inv]


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
