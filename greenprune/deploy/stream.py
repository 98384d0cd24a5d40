"""Layer-streaming pruning: checkpoints larger than memory, one decoder layer at a time.

Pass 1 (statistics): embed the calibration blocks, then for each layer read only that layer's tensors from the
shards (`safe_open`), run it on the hidden states carried forward from the previous layer, collect the same
activation statistics the whole-model pass collects (importance.attach_stat_hooks, same batches, same order),
score it, keep the scores (one float per channel / KV group) and the layer's output, and free the layer.
Plan: from the streamed scores only. `uniform` (one FFN width for all layers) and `layers` (block influence)
are the in-memory planner's methods on the same scores; `global` ranks every layer's channels together after
standardising scores within each layer (FLAP's adaptive structure), so widths follow importance. The KL-guided
`unified` method needs whole-model forward passes per candidate change and is not available here.
Pass 2 (write): read each kept layer again, slice it by the plan, write it as its own output shard.

Memory: one layer's weights (in the compute dtype; converted from the source in 64 MiB blocks) plus the carried
hidden states [N, L, hidden] and one batch's activations; large freed blocks go back to the system at once
(glibc: release_freed_memory_promptly). The result equals `prune_model` on the
whole model exactly (tests/deploy/test_stream.py). Interrupted runs resume from OUT.stream-state (pass 1 is saved
after every layer: scores and the carried hidden states).
"""
from __future__ import annotations

import hashlib
import json
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import GreenpruneError
from ..families import FAMILIES, PER_LAYER_PREFIX, Family, ModelShape, check_architecture, family_for
from ..kernels import ChannelStats
from ..modelio.save import copy_tokenizer_files, save_model_dir, write_json_atomic
from ..modelio.shards import CheckpointReader, ShardWriter
from ..planning.global_threshold import global_threshold_widths
from ..planning.options import PlanOptions
from ..planning.plan import LayerPlan, PruningPlan, keep_top
from ..planning.planner import make_plan
from ..pruning.prune import derive_config
from ..scoring.scorers import SCORERS, Scores, get_scorer
from ..scoring.stats import LayerStats, attach_stat_hooks

STREAM_METHODS = ("uniform", "global", "layers")
STREAM_SCORERS = tuple(n for n, c in SCORERS.items() if c.needs is None)  # no gradients through the whole model


@dataclass(frozen=True)
class StreamOptions:
    plan: PlanOptions = PlanOptions()  # the budget (ratio), align and max_ffn_prune; `method` below picks the planner
    method: str = "global"  # per-layer widths from one standardised ranking (plan_global) | uniform | layers
    scorer: str = "flap"
    batch_size: int = 4  # blocks per forward: the whole-model pass uses 4 too (same sums, same order)
    compute_dtype: str = "float32"
    max_shard_bytes: int = 4 * 2**30
    release_freed_memory: bool = True  # glibc returns large freed blocks to the system (process-wide: release_freed_memory_promptly)

    def validate(self) -> None:
        if self.method not in STREAM_METHODS:
            raise GreenpruneError(f"streaming method must be one of {', '.join(STREAM_METHODS)} (got '{self.method}'); "
                                  "the KL-guided unified method needs the whole model")
        if self.scorer not in STREAM_SCORERS:
            raise GreenpruneError(f"streaming scorer must be one of {', '.join(STREAM_SCORERS)} (got '{self.scorer}'): "
                                  "gradient scorers need the whole model")
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            raise GreenpruneError(f"compute dtype must be float32, bfloat16 or float16, got {self.compute_dtype}")
        self.plan_options().validate()

    def plan_options(self) -> PlanOptions:
        return replace(self.plan, method="uniform" if self.method == "global" else self.method, kv=False,
                       drop_layers=self.method == "layers", uniform=False)

    def flat(self) -> dict:
        """The options as the stream report records them (one flat dict)."""
        d = asdict(self)
        plan = d.pop("plan")
        return {"ratio": plan["ratio"], "method": d.pop("method"), "align": plan["align"],
                "max_ffn_prune": plan["max_ffn_prune"], **d}


def plan_global(shape: ModelShape, scores: Scores, opts: PlanOptions) -> PruningPlan:
    """Per-layer FFN widths from one global ranking of standardised channel scores, under the parameter budget.
    The threshold is the lowest that removes enough parameters once widths are rounded down to `align` and
    clamped to `max_ffn_prune`; all KV groups and layers stay."""
    F, G = shape.intermediate_size, shape.num_key_value_heads
    need = math.ceil(opts.ratio * shape.dense_params)

    def removes_enough(ws) -> bool:
        return sum(shape.layer_params(F, G) - shape.layer_params(w, G) for w in ws) >= need

    ws = global_threshold_widths(scores.ffn, opts.widths(shape), removes_enough, standardise=True)
    if ws is None:
        raise GreenpruneError(f"--ratio {opts.ratio} is unreachable by FFN channels alone (at most "
                              f"{opts.max_ffn_prune:.0%} per layer, align {opts.align})")
    layers = tuple(LayerPlan(i, w, G, keep_top(scores.ffn[i], w), keep_top(scores.kv[i], G)) for i, w in enumerate(ws))
    return PruningPlan(shape, layers, None, {"method": "global", "ratio_requested": opts.ratio, "align": opts.align,
                                            "scorer": scores.scorer})


def make_stream_plan(shape: ModelShape, scores: Scores, opts: StreamOptions) -> PruningPlan:
    if opts.method == "global":
        return plan_global(shape, scores, opts.plan_options())
    return make_plan(shape, scores, opts.plan_options(), None)


def release_freed_memory_promptly(threshold: int = 4 * 2**20) -> bool:
    """Have glibc serve every allocation of `threshold` bytes or more by its own mapping, returned to the system
    when freed (mallopt M_MMAP_THRESHOLD; process-wide). By default glibc raises that threshold after large
    frees (up to 32 MiB) and keeps freed blocks in its heap: on the 70B-shaped slice
    (scripts/measure_stream_70b.py) that left the peak at 3.92 GiB, 1.03x the stated budget above the
    interpreter; with it, 3.81 GiB, 0.995x. Returns False where glibc's mallopt is not available."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 where unavailable)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class _State:
    """Pass-1 progress beside the output: scores so far and the carried hidden states, saved after every layer."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key

    def load(self):
        meta = self.path / "state.json"
        if not meta.exists():
            return None
        m = json.loads(meta.read_text())
        if m.get("key") != self.key:
            return None
        t = load_file(str(self.path / "state.safetensors"))
        n = m["layers_done"]
        return n, t["hidden"], [t[f"ffn.{i}"] for i in range(n)], [t[f"kv.{i}"] for i in range(n)], m["block_influence"]

    def save(self, n: int, hidden, ffn, kv, bi) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tensors = {"hidden": hidden.contiguous(), **{f"ffn.{i}": f for i, f in enumerate(ffn)}, **{f"kv.{i}": k for i, k in enumerate(kv)}}
        save_file(tensors, str(self.path / "state.safetensors.tmp"))
        (self.path / "state.safetensors.tmp").replace(self.path / "state.safetensors")
        write_json_atomic(self.path / "state.json", {"key": self.key, "layers_done": n, "block_influence": bi})


def _layer_module(family: Family, config, i: int, reader: CheckpointReader, dtype: torch.dtype):
    """Decoder layer i with its weights read tensor by tensor and converted block by block (CheckpointReader.get):
    beside the converted layer there is at most one block of a source tensor."""
    with torch.device("meta"):
        layer = family.decoder_layer(config, i)
    prefix = f"model.layers.{i}."
    sd = {k[len(prefix):]: reader.get(k, dtype) for k in reader.layer_keys(i)}
    missing, unexpected = layer.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise GreenpruneError(f"layer {i}: checkpoint tensors do not match the config: missing {missing}, unexpected {unexpected}")
    return layer.eval()


@torch.no_grad()
def stream_statistics(src: Path, config, blocks: torch.Tensor, opts: StreamOptions, state: Optional[_State] = None,
                      progress: bool = True) -> tuple[Scores, dict]:
    """Pass 1: per-layer scores of the dense checkpoint from the streamed layer inputs."""
    fam = family_for(config)
    dtype = getattr(torch, opts.compute_dtype)
    reader = CheckpointReader(src)
    shape = fam.shape(config)
    scorer = get_scorer(opts.scorer, fam)
    done, ffn, kv, bi = 0, [], [], []
    resumed = state.load() if state is not None else None
    if resumed is not None:
        done, x, ffn, kv, bi = resumed
    else:
        emb = reader.get("model.embed_tokens.weight")
        x = emb[blocks].to(dtype)  # [N, L, hidden], as nn.Embedding computes it
        del emb
    pos = torch.arange(blocks.shape[1]).unsqueeze(0)
    rotary = fam.rotary_embedding(config)
    layer_rss, t0 = [], time.perf_counter()
    for i in tqdm(range(done, shape.num_hidden_layers), desc="streaming layers (statistics)", disable=not progress,
                  initial=done, total=shape.num_hidden_layers):
        layer = _layer_module(fam, config, i, reader, dtype)
        kind = fam.layer_attention(config, i)
        st = LayerStats(ChannelStats(), ChannelStats())
        handles = attach_stat_hooks(fam, layer, st)
        try:
            for s in range(0, len(x), opts.batch_size):
                xb = x[s : s + opts.batch_size]
                mask = fam.attention_masks(config, xb, pos)[kind]
                x[s : s + opts.batch_size] = layer(xb, attention_mask=mask, position_ids=pos,
                                                   position_embeddings=rotary(xb, position_ids=pos))
        finally:
            for h in handles:
                h.remove()
        ffn.append(scorer.ffn(layer, st).float().cpu())
        kv.append(scorer.kv(layer, st, shape).float().cpu())
        bi.append(st.block_influence)
        layer_rss.append(rss_bytes())
        del layer, st
        if state is not None:
            state.save(i + 1, x, ffn, kv, bi)
    info = {"rss_after_each_layer_bytes": layer_rss, "resumed_at_layer": done if resumed else None,
            "seconds": round(time.perf_counter() - t0, 2)}
    return Scores(ffn, kv, bi, scorer.name), info


def _run_key(src: Path, blocks: torch.Tensor, opts: StreamOptions) -> str:
    h = hashlib.sha256()
    h.update(str(src.resolve()).encode())
    h.update(blocks.numpy().tobytes())
    h.update(json.dumps(opts.flat(), sort_keys=True).encode())
    return h.hexdigest()


def stream_prune(model_dir: str, out: str, blocks: torch.Tensor, opts: StreamOptions = StreamOptions(),
                 overwrite: bool = False, progress: bool = True) -> dict:
    """Prune a sharded safetensors checkpoint layer by layer into `out`; returns the report (also written there)."""
    from transformers import AutoConfig

    opts.validate()
    src, out_p = Path(model_dir), Path(out)
    if not (src / "config.json").exists():
        raise GreenpruneError(f"{src}: no config.json (streaming needs a safetensors checkpoint directory)")
    if out_p.exists() and not overwrite:
        raise GreenpruneError(f"output directory {out_p} exists (use --overwrite to replace it)")
    if blocks.dim() != 2 or blocks.numel() == 0:
        raise GreenpruneError("calibration blocks must be a non-empty [N, L] tensor of token ids")
    config = AutoConfig.from_pretrained(str(src))
    fam = check_architecture(config, str(src))
    if not fam.streamable:
        ok = sorted({f.description or f.name for f in FAMILIES.values() if f.streamable})
        raise GreenpruneError(f"{src}: layer streaming supports {', '.join(ok)}, not {fam.description or fam.name}; "
                              "prune it in memory (greenprune prune)")
    if config.model_type.startswith(PER_LAYER_PREFIX):
        raise GreenpruneError("this model is already pruned per layer; stream the dense model instead")
    if int(blocks.max()) >= config.vocab_size or int(blocks.min()) < 0:
        raise GreenpruneError(f"calibration token ids must be in [0, {config.vocab_size})")
    config._attn_implementation = "sdpa"  # what from_pretrained picks here: same kernels as the whole-model pass
    shape = fam.shape(config)
    if opts.release_freed_memory:
        release_freed_memory_promptly()
    state = _State(out_p.with_name(out_p.name + ".stream-state"), _run_key(src, blocks, opts))
    t0 = time.perf_counter()
    scores, info = stream_statistics(src, config, blocks, opts, state, progress)
    plan = make_stream_plan(shape, scores, opts)
    reader = CheckpointReader(src)
    cfg = derive_config(config, plan)
    report: dict = {}

    def write(tmp: Path) -> None:
        w = ShardWriter(tmp, opts.max_shard_bytes)
        head = ["model.embed_tokens.weight", "model.norm.weight"]
        if not shape.tie_word_embeddings:
            head.append("lm_head.weight")
        for name in head:
            w.add(name, reader.get(name))
        w.flush()
        for new, lp in enumerate(tqdm(plan.layers, desc="streaming layers (write)", disable=not progress)):
            prefix = f"model.layers.{lp.index}."
            for k in reader.layer_keys(lp.index):  # one source tensor at a time; the sliced layer is buffered
                name = k[len(prefix):]
                t = fam.slice_layer_tensor(name, reader.get(k), lp.ffn_keep, lp.kv_keep, shape)
                w.add(f"model.layers.{new}.{name}", t.contiguous())
            w.flush()  # one shard per layer: memory stays one layer
        w.finish()
        cfg.save_pretrained(tmp)
        copy_tokenizer_files(src, tmp)
        plan.save(tmp / "plan.json")
        report.update({"source_model": str(src), "options": opts.flat(), "plan": plan.to_dict()["summary"],
                       "calibration": {"blocks": list(blocks.shape)},
                       "memory": {"peak_rss_bytes": peak_rss_bytes(), **memory_budget(shape, blocks, opts)},
                       "statistics": info, "seconds": round(time.perf_counter() - t0, 2)})
        write_json_atomic(tmp / "greenprune_stream_report.json", report)

    save_model_dir(out_p, writers=[write], overwrite=overwrite)
    shutil.rmtree(state.path, ignore_errors=True)
    return report


def memory_budget(shape: ModelShape, blocks: torch.Tensor, opts: StreamOptions) -> dict:
    """The stated budget: one dense layer (in the compute dtype) + the carried hidden states + one batch's
    largest activations (FFN gate/up/product, attention scores of one batch), in bytes."""
    item = torch.tensor([], dtype=getattr(torch, opts.compute_dtype)).element_size()
    layer = shape.layer_params(shape.intermediate_size, shape.num_key_value_heads) * item
    n, l = blocks.shape
    hidden = n * l * shape.hidden_size * item
    b = min(opts.batch_size, n)
    acts = b * l * (3 * shape.intermediate_size + 4 * shape.hidden_size) * item + b * shape.num_attention_heads * l * l * item
    return {"budget_layer_bytes": layer, "budget_hidden_states_bytes": hidden, "budget_batch_activations_bytes": acts,
            "budget_total_bytes": layer + hidden + acts}
