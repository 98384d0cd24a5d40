"""Export a pruned model to layouts serving engines load without greenprune.

`llama`: a uniform plan (every kept layer has the same FFN width and KV groups) is a plain Llama checkpoint
(model_type llama): any engine that serves Llama serves it.

`decilm`: per-layer plans as the DeciLM / Nemotron-NAS layout (architectures DeciLMForCausalLM, model_type
nemotron-nas), which vLLM (`vllm/model_executor/models/nemotron_nas.py`), SGLang, TensorRT-LLM and mlx-lm
serve. Every dense layer gets one `block_configs` entry:
  attention: {n_heads_in_group, no_op, replace_with_linear}   ffn: {ffn_mult, no_op, replace_with_linear}
A dropped layer is a no_op attention plus a no_op FFN (no weights). The engines size a layer's FFN as
  intermediate = round_up_to_256(int(2 * ffn_mult * hidden_size / 3))
with ffn_mult rounded to 6 decimals by their config classes, so exactly the multiples of 256 are
representable; other widths are refused with the nearest representable ones (prune with --align 256).
Every attention layer of this layout has the config's `num_attention_heads` query heads and
`num_attention_heads // n_heads_in_group` KV heads: greenprune removes query heads with their KV group, so
the kept layers must all keep the same number of KV groups (the default plans keep all of them).

The weights are copied tensor for tensor (no arithmetic): an export round-trips bit for bit.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import GreenpruneError
from ..families import FAMILIES, PER_LAYER_PREFIX, layer_of
from ..modelio.load import resolve_model
from ..modelio.save import copy_tokenizer_files, save_model_dir, write_json_atomic
from ..modelio.shards import CheckpointReader, ShardWriter
from ..planning.plan import PruningPlan

log = logging.getLogger(__name__)
FORMATS = ("auto", "llama", "decilm")
DECI_MULTIPLE = 256  # the engines' round-up unit for ffn_mult widths
_PER_LAYER_KEYS = ("layer_intermediate_sizes", "layer_num_attention_heads", "layer_num_key_value_heads")


def ffn_mult_to_intermediate(ffn_mult: float, hidden_size: int) -> int:
    """The engines' documented mapping (DeciLM's `_ffn_mult_to_intermediate_size`), after their 6-decimal rounding."""
    n = int(2 * round(ffn_mult, 6) * hidden_size / 3)
    return n if n % DECI_MULTIPLE == 0 else n + DECI_MULTIPLE - n % DECI_MULTIPLE


def ffn_mult_for(width: int, hidden_size: int) -> float:
    """An ffn_mult that the engines map to exactly `width`, or a GreenpruneError naming the nearest widths."""
    if width % DECI_MULTIPLE:
        lo = width // DECI_MULTIPLE * DECI_MULTIPLE
        near = [w for w in (lo, lo + DECI_MULTIPLE) if w > 0]
        raise GreenpruneError(
            f"FFN width {width} is not representable in the DeciLM layout (widths are multiples of {DECI_MULTIPLE}); "
            f"nearest representable: {', '.join(map(str, near))}; prune with --align {DECI_MULTIPLE}"
        )
    m = round(1.5 * width / hidden_size, 6)
    for cand in (m, m + 1e-6, m - 1e-6):
        if ffn_mult_to_intermediate(cand, hidden_size) == width:
            return round(cand, 6)
    raise GreenpruneError(f"no 6-decimal ffn_mult maps to width {width} at hidden size {hidden_size}")


@dataclass(frozen=True)
class LayerShape:
    index: int  # the layer's index in the dense model
    ffn_width: int
    heads: int
    kv_heads: int


def read_layout(model_dir: Path) -> tuple[dict, list[LayerShape], int]:
    """(config dict, kept layers with their dense indices, dense layer count) of a saved (pruned) model."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise GreenpruneError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    cfg = json.loads(cfg_path.read_text())
    mt = cfg.get("model_type")
    if mt not in FAMILIES or not FAMILIES[mt].llama_layers:
        ok = sorted(t for t, f in FAMILIES.items() if f.llama_layers)
        raise GreenpruneError(f"{model_dir}: cannot export model_type '{mt}' as Llama / DeciLM (supported: "
                              f"{', '.join(ok)}); load its save with transformers instead")
    if cfg.get("sliding_window") not in (None, 0) and FAMILIES[mt].name == "mistral":
        raise GreenpruneError(f"{model_dir}: sliding-window attention ({cfg['sliding_window']}) has no place in these layouts")
    n = cfg["num_hidden_layers"]
    if mt.startswith(PER_LAYER_PREFIX):
        widths, heads, kv = (cfg[k] for k in _PER_LAYER_KEYS)
    else:
        widths, heads, kv = [cfg["intermediate_size"]] * n, [cfg["num_attention_heads"]] * n, [cfg.get("num_key_value_heads") or cfg["num_attention_heads"]] * n
    index, dense_layers = list(range(n)), n
    plan_file = model_dir / "plan.json"
    if plan_file.exists():
        plan = PruningPlan.load(plan_file)
        if len(plan.layers) == n:
            index, dense_layers = [lp.index for lp in plan.layers], plan.shape.num_hidden_layers
        else:
            log.warning("%s: plan.json keeps %d layers, the model has %d; ignoring the plan", model_dir, len(plan.layers), n)
    layers = [LayerShape(i, int(w), int(h), int(k)) for i, w, h, k in zip(index, widths, heads, kv)]
    return cfg, layers, dense_layers


def _base_config(cfg: dict, layers: list[LayerShape]) -> dict:
    base = {k: v for k, v in cfg.items() if k not in _PER_LAYER_KEYS and k not in ("auto_map", "per_layer_config")}
    base["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base["num_attention_heads"] = layers[0].heads
    base["num_key_value_heads"] = layers[0].kv_heads
    return base


def llama_config(cfg: dict, layers: list[LayerShape]) -> dict:
    if len({(l.ffn_width, l.heads, l.kv_heads) for l in layers}) > 1:
        raise GreenpruneError("per-layer widths differ: a plain Llama checkpoint cannot hold this model; use --format decilm")
    out = _base_config(cfg, layers)
    out.update(model_type="llama", architectures=["LlamaForCausalLM"], intermediate_size=layers[0].ffn_width,
               num_hidden_layers=len(layers))
    return out


def _rope_fields(cfg: dict) -> dict:
    """rope_theta / rope_scaling at top level, as the DeciLM config classes read them (and rope_parameters kept)."""
    rp = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rp.get("rope_theta", 10000.0))
    kind = rp.get("rope_type", "default")
    scaling = cfg.get("rope_scaling")
    if scaling is None and kind != "default":
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
    return {"rope_theta": theta, "rope_scaling": scaling}


def decilm_config(cfg: dict, layers: list[LayerShape], dense_layers: int) -> dict:
    kvs = {l.kv_heads for l in layers}
    if len(kvs) > 1:
        raise GreenpruneError(
            f"kept layers keep different numbers of KV groups ({sorted(kvs)}): the DeciLM layout gives every attention "
            "layer the same query heads, so only plans with one KV count are representable (the default plans keep all)"
        )
    h = cfg["hidden_size"]
    by_index = {l.index: l for l in layers}
    blocks = []
    for i in range(dense_layers):
        l = by_index.get(i)
        if l is None:
            blocks.append({"attention": {"n_heads_in_group": None, "no_op": True, "replace_with_linear": False},
                           "ffn": {"ffn_mult": None, "no_op": True, "replace_with_linear": False}})
        else:
            blocks.append({"attention": {"n_heads_in_group": l.heads // l.kv_heads, "no_op": False, "replace_with_linear": False},
                           "ffn": {"ffn_mult": ffn_mult_for(l.ffn_width, h), "no_op": False, "replace_with_linear": False}})
    out = _base_config(cfg, layers)
    out.update(_rope_fields(cfg))
    out.update(model_type="nemotron-nas", architectures=["DeciLMForCausalLM"], num_hidden_layers=dense_layers,
               intermediate_size=max(l.ffn_width for l in layers), block_configs=blocks,
               auto_map={"AutoConfig": "configuration_decilm.DeciLMConfig"})
    if out["head_dim"] * out["num_attention_heads"] != h:
        log.warning("head_dim x heads != hidden_size: vLLM reads head_dim from the config; mlx-lm's nemotron-nas "
                    "derives it from hidden_size / heads and cannot load this export")
    return out


# Shipped beside the export so `AutoConfig.from_pretrained(..., trust_remote_code=True)` (vLLM's path) turns
# block_configs into objects with attribute access; written by greenprune from the documented schema.
CONFIG_MODULE = '''"""DeciLM / Nemotron-NAS config for a checkpoint exported by greenprune: a LlamaConfig plus per-layer
block_configs (attention: n_heads_in_group, no_op, replace_with_linear; ffn: ffn_mult, no_op, replace_with_linear)."""
from dataclasses import asdict, dataclass, fields
from typing import Optional

from transformers import LlamaConfig


@dataclass(frozen=True)
class AttentionConfig:
    no_op: bool = False
    replace_with_linear: bool = False
    n_heads_in_group: Optional[int] = None
    sparsify: Optional[list] = None


@dataclass(frozen=True)
class FFNConfig:
    no_op: bool = False
    replace_with_linear: bool = False
    ffn_mult: Optional[float] = None
    sparsify: Optional[list] = None


@dataclass(frozen=True)
class BlockConfig:
    attention: AttentionConfig
    ffn: FFNConfig

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, cls):
            return d
        pick = lambda c, x: c(**{f.name: x[f.name] for f in fields(c) if f.name in x})
        return cls(pick(AttentionConfig, d.get("attention", {})), pick(FFNConfig, d.get("ffn", {})))


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        self.block_configs = [BlockConfig.from_dict(b) for b in (block_configs or [])]
        super().__init__(**kwargs)

    def to_dict(self):
        d = super().to_dict()
        d["block_configs"] = [asdict(b) for b in self.block_configs]
        return d
'''


def export_model(model: str, fmt: str = "auto", out: Optional[str] = None, overwrite: bool = False,
                 max_shard_bytes: int = 4 * 2**30) -> dict:
    """Write `model` (a saved greenprune output or any Llama-layout directory) to `out` in `fmt`; returns a summary."""
    if fmt not in FORMATS:
        raise GreenpruneError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    if out is None:
        raise GreenpruneError("--out is required")
    src = Path(resolve_model(model))
    if not src.is_dir():
        raise GreenpruneError(f"{src}: export needs a model directory")
    if Path(out).resolve() == src.resolve():
        raise GreenpruneError("--out must differ from --model (the source is never modified)")
    cfg, layers, dense_layers = read_layout(src)
    uniform = len({(l.ffn_width, l.heads, l.kv_heads) for l in layers}) == 1
    if fmt == "auto":
        fmt = "llama" if uniform else "decilm"
    new_cfg = llama_config(cfg, layers) if fmt == "llama" else decilm_config(cfg, layers, dense_layers)
    reader = CheckpointReader(src)
    position = {j: l.index for j, l in enumerate(layers)}  # saved layer j -> its layer index in the export
    if fmt == "llama":
        position = {j: j for j in range(len(layers))}
    files: list = []

    def write_weights(tmp: Path) -> None:
        w = ShardWriter(tmp, max_shard_bytes)
        for name in reader.keys():
            where = layer_of(name)
            if where is not None and where[0] not in position:
                raise GreenpruneError(f"{src}: tensor {name} belongs to no layer of the config")
            w.add(name if where is None else f"model.layers.{position[where[0]]}.{where[1]}", reader.get(name))
        files.extend(w.finish())
        write_json_atomic(tmp / "config.json", new_cfg)
        if fmt == "decilm":
            (tmp / "configuration_decilm.py").write_text(CONFIG_MODULE)
        copy_tokenizer_files(src, tmp)

    save_model_dir(Path(out), writers=[write_weights], overwrite=overwrite,
                   copy_files=[src / "plan.json"] if (src / "plan.json").exists() else [])
    return {"format": fmt, "out": str(out), "layers_kept": len(layers), "layers": dense_layers if fmt == "decilm" else len(layers),
            "ffn_widths": [l.ffn_width for l in layers], "shards": files}
