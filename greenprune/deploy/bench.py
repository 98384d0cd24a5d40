"""`greenprune bench`: prefill and decode throughput of a pruned model and its dense reference, side by side.

Prefill: one forward over a [1, L] prompt per prompt length (tokens/s = L / time). Decode: a [B, P] prompt
fills the KV cache, then greedy steps of [B, 1] are timed (tokens/s = B * steps / time). Dense and pruned are
timed alternately in every repeat (medians reported), so drift of a shared machine hits both alike. CPU: eager
float32. CUDA: bf16, CUDA-event timing; --compile uses torch.compile(mode="reduce-overhead") on a static KV cache
(CUDA graphs). --fused serves both models through greenprune's ops (serving.py): the fused SwiGLU FFN, and the
next token by lm_head_argmax from the last hidden state instead of full logits. Every row also carries each
model's work per step (bytes, FLOPs: greenprune.deploy.cost) and, beside the measured speed-up, the ideal one (the FLOPs
ratio at prefill, the bytes ratio at decode). Results: bench.json (device, versions, date, command) and bench.png.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import GreenpruneError
from ..families import shape_of
from ..modelio.load import load_model, num_params
from ..modelio.reports import DEFAULT_SOURCE, has_source, source_model
from ..modelio.save import write_json_atomic
from ..runinfo import run_info
from .cost import StepCost, ideal_speedup, layer_widths, step_cost
from .serving import fuse_for_serving, greedy_step


@dataclass(frozen=True)
class BenchOptions:
    prompt_lens: tuple[int, ...] = (128, 512, 2048)
    batches: tuple[int, ...] = (1, 8, 32)
    decode_prompt: int = 64  # prompt length before the timed decode steps
    decode_tokens: int = 32  # timed decode steps
    repeats: int = 3
    compile: bool = False  # CUDA only: torch.compile + static cache (CUDA graphs)
    fused: bool = False  # serve both models through greenprune's ops (serving.py: fused SwiGLU, argmax LM head)
    device_map: Optional[str] = None  # e.g. "auto": accelerate spreads the models over the visible GPUs

    def validate(self) -> None:
        if not self.prompt_lens or min(self.prompt_lens) < 1 or not self.batches or min(self.batches) < 1:
            raise GreenpruneError("--prompt-lens and --batch need positive integers")
        if self.decode_tokens < 1 or self.decode_prompt < 1 or self.repeats < 1:
            raise GreenpruneError("--decode-tokens, --decode-prompt and --repeats must be >= 1")


def _timer(device: torch.device) -> Callable[[Callable], float]:
    def cpu(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def cuda(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3

    return cuda if device.type == "cuda" else cpu


class Runner:
    """Prefill and decode closures for one model (eager, or compiled with a static cache on CUDA)."""

    def __init__(self, model, compile: bool, fused: bool = False):
        self.model, self.compile, self.fused = model, compile, fused
        self.static_cache = compile  # compiled steps replay CUDA graphs: the cache must keep its addresses
        self._caches: dict = {}  # (batch, length) -> the StaticCache reused (reset) by every repeat
        self.device = next(model.parameters()).device
        self.vocab = model.config.vocab_size
        if fused:
            fuse_for_serving(model)
        self._step = torch.compile(self._next_tokens, mode="reduce-overhead") if compile else self._next_tokens

    def _next_tokens(self, **kw) -> torch.Tensor:
        """Greedy next tokens [B, 1] after a forward of input_ids: all logits then argmax (eager transformers),
        or, fused, the last hidden state through lm_head_argmax (no logits written)."""
        if self.fused:
            return greedy_step(self.model, **kw)[0]
        return self.model(**kw).logits[:, -1:].argmax(-1)

    def ids(self, b: int, n: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, self.vocab, (b, n), generator=g).to(self.device)

    def prefill(self, length: int) -> Callable[[], None]:
        x = self.ids(1, length)
        if self.fused:  # a server needs the next token only: no [L, vocab] logits
            return torch.no_grad()(lambda: self._next_tokens(input_ids=x, use_cache=False))
        return torch.no_grad()(lambda: self.model(x, use_cache=False))

    def decode(self, batch: int, prompt: int, steps: int) -> tuple[Callable[[], None], Callable[[], torch.Tensor]]:
        """(setup, timed): setup fills an empty KV cache with the prompt; timed runs `steps` greedy steps and
        returns the last tokens.
        With a static cache (compiled steps) every repeat resets and refills the same cache, so the CUDA graphs
        recorded for its tensors replay instead of being recorded again inside the timed steps. The positions
        are made once, on the device: a host tensor per step would copy (and synchronise) in every step."""
        from transformers import DynamicCache, StaticCache

        state = {}
        x = self.ids(batch, prompt, seed=1)
        positions = torch.arange(prompt + steps, device=self.device)

        def empty_cache():
            if not self.static_cache:
                return DynamicCache(config=self.model.config)
            cache = self._caches.get((batch, prompt + steps))
            if cache is None:
                cache = self._caches[(batch, prompt + steps)] = StaticCache(config=self.model.config,
                                                                             max_cache_len=prompt + steps)
            else:
                cache.reset()  # zeroed in place: same tensors, write position back to 0
            return cache

        def setup():
            cache = empty_cache()
            tok = self._next_tokens(input_ids=x, past_key_values=cache, use_cache=True, cache_position=positions[:prompt])
            state.update(cache=cache, tok=tok)

        def timed():
            tok, cache = state["tok"], state["cache"]
            for s in range(prompt, prompt + steps):
                tok = self._step(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=positions[s:s + 1])
            return tok

        return torch.no_grad()(setup), torch.no_grad()(timed)


def _measure(runners: dict, make: Callable, timer, repeats: int, tokens: int) -> dict:
    """Alternate models within each repeat (one warm-up first); tokens/s from the median time."""
    times = {k: [] for k in runners}
    for rep in range(repeats + 1):
        for name, r in runners.items():
            setup, fn = make(r)
            setup()
            t = timer(fn)
            if rep > 0:
                times[name].append(t)
    return {name: {"median_s": statistics.median(ts), "tokens_per_s": tokens / statistics.median(ts),
                   "times_s": [round(t, 6) for t in ts]} for name, ts in times.items()}


def run_bench(model: str, reference: Optional[str], opts: BenchOptions, out: Optional[str] = None,
              progress: bool = True, command: Optional[str] = None) -> dict:
    """command: the command line to record (the CLI passes its own; default: this process's argv)."""
    opts.validate()
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    device_map = opts.device_map or ("cuda" if cuda else None)
    if opts.compile and not cuda:
        raise GreenpruneError("--compile needs CUDA (CUDA graphs); the CPU run is eager")
    models, paths = {}, {}
    if reference is not None or _has_default_reference(model):
        models["dense"], _ = load_model(reference, dtype=dtype, device_map=device_map)
        paths["dense"] = reference or DEFAULT_SOURCE
    models["pruned"], _ = load_model(model, dtype=dtype, device_map=device_map)
    paths["pruned"] = model
    runners = {k: Runner(m, opts.compile, opts.fused) for k, m in models.items()}
    device = runners["pruned"].device
    timer = _timer(device)
    res = {"info": run_info(device, command), "options": asdict(opts), "dtype": str(dtype).replace("torch.", ""),
           "models": {k: {"path": str(paths[k]), "params": num_params(m), "layers": m.config.num_hidden_layers,
                          "vocab": m.config.vocab_size} for k, m in models.items()},
           "prefill": [], "decode": []}
    item = torch.tensor([], dtype=dtype).element_size()
    for length in opts.prompt_lens:
        r = _measure(runners, lambda rn: (lambda: None, rn.prefill(length)), timer, opts.repeats, length)
        # the eager forward returns every position's logits; the fused one only the next token
        costs = {k: _cost(m, 1, length, 0, 1 if opts.fused else length, item) for k, m in models.items()}
        res["prefill"].append({"prompt_len": length, **_row(r, costs, "prefill")})
        _say(progress, f"prefill L={length}", res["prefill"][-1])
    for b in opts.batches:
        r = _measure(runners, lambda rn: rn.decode(b, opts.decode_prompt, opts.decode_tokens), timer, opts.repeats,
                     b * opts.decode_tokens)
        mid = opts.decode_prompt + opts.decode_tokens // 2  # the timed steps' mean context
        costs = {k: _cost(m, b, 1, mid, 1, item) for k, m in models.items()}
        res["decode"].append({"batch": b, **_row(r, costs, "decode")})
        _say(progress, f"decode B={b}", res["decode"][-1])
    if out:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / "bench.json", res)
        plot_bench(res, d / "bench.png")
    return res


def _has_default_reference(model: str) -> bool:
    """A model saved by `greenprune prune` from the embedded default names it in its report."""
    return has_source(model) and source_model(model) is None


def _cost(model, batch: int, new: int, context: int, head_tokens: int, item: int) -> StepCost:
    shape = shape_of(model)
    return step_cost(shape, layer_widths(model.config), batch, new, context, head_tokens, dtype_bytes=item)


def _row(r: dict, costs: dict, mode: str) -> dict:
    """Tokens/s per model, the work floor of one step (bytes, FLOPs) and, with a dense reference, the measured
    speed-up beside the ideal one (FLOPs ratio at prefill, bytes ratio at decode: greenprune.deploy.cost)."""
    row = {f"{k}_tokens_per_s": v["tokens_per_s"] for k, v in r.items()}
    row.update({f"{k}_times_s": v["times_s"] for k, v in r.items()})
    row.update({f"{k}_step_bytes": c.bytes for k, c in costs.items()})
    row.update({f"{k}_step_flops": c.flops for k, c in costs.items()})
    if "dense" in r:
        row["speedup"] = r["pruned"]["tokens_per_s"] / r["dense"]["tokens_per_s"]
        row["ideal_speedup"] = ideal_speedup(costs["dense"], costs["pruned"], mode)
        row["frac_of_ideal_speedup"] = row["speedup"] / row["ideal_speedup"]
    return row


def _say(progress: bool, what: str, row: dict) -> None:
    if progress:
        parts = [f"{k} {row[f'{k}_tokens_per_s']:.1f} tok/s" for k in ("dense", "pruned") if f"{k}_tokens_per_s" in row]
        if "speedup" in row:
            parts.append(f"speed-up {row['speedup']:.2f}x (ideal {row['ideal_speedup']:.2f}x)")
        print(f"{what}: " + ", ".join(parts), file=sys.stderr)


def plot_bench(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "prefill", "prompt_len"), (axes[1], "decode", "batch")):
        rows = res[key]
        xs = range(len(rows))
        names = [n for n in ("dense", "pruned") if rows and f"{n}_tokens_per_s" in rows[0]]
        wd = 0.8 / len(names)
        for j, n in enumerate(names):
            vals = [r[f"{n}_tokens_per_s"] for r in rows]
            ax.bar([x + j * wd for x in xs], vals, wd, label=n)
        for x, r in zip(xs, rows):
            if "speedup" in r:
                top = max(r[f"{n}_tokens_per_s"] for n in names)
                ax.text(x + wd * (len(names) - 1) / 2, top, f"{r['speedup']:.2f}x\n(ideal {r['ideal_speedup']:.2f}x)",
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks([x + wd * (len(names) - 1) / 2 for x in xs], [str(r[label]) for r in rows])
        ax.set_xlabel("prompt length" if key == "prefill" else "batch")
        ax.set_ylabel("tokens / s")
        ax.set_title(f"{key} ({res['dtype']})")
        ax.legend()
    n = res["info"]["torch_threads"]
    fig.suptitle(f"{res['info']['device']} - torch {res['info']['torch']}, {n} thread{'s' if n != 1 else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
