"""Sharded safetensors checkpoints: read tensors one at a time, write them in bounded shards with an index.

Reading goes through `safe_open`, which touches only the bytes of the tensors asked for, so a caller can hold
one decoder layer of a checkpoint far larger than memory. Writing buffers tensors until a shard is full, writes
it, and forgets them; `finish` writes `model.safetensors.index.json` (the layout `from_pretrained`, vLLM and
mlx-lm read), or names a lone shard `model.safetensors`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import GreenpruneError
from ..families import LAYER_KEY
from .load import check_safetensors

INDEX_NAME = "model.safetensors.index.json"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class CheckpointReader:
    """Tensor names of a safetensors checkpoint directory, and where each lives; reads one tensor at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        index = self.path / INDEX_NAME
        if index.exists():
            try:
                wm = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise GreenpruneError(f"{index}: not a safetensors index ({e})") from e
            self.where = {k: self.path / v for k, v in wm.items()}
        else:
            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise GreenpruneError(f"{self.path}: no .safetensors weights")
            self.where = {}
            for f in files:
                with safe_open(str(f), framework="pt") as h:
                    self.where.update({k: f for k in h.keys()})
        for f in sorted(set(self.where.values())):
            if not f.exists():
                raise GreenpruneError(f"{self.path}: shard {f.name} named by the index is missing")
            check_safetensors(f)

    def keys(self) -> list[str]:
        return list(self.where)

    def layer_keys(self, i: int) -> list[str]:
        return [k for k in self.where if (m := LAYER_KEY.match(k)) and int(m.group(1)) == i]

    def get(self, name: str, dtype: Optional[torch.dtype] = None, block_bytes: int = 64 * 2**20) -> torch.Tensor:
        """Tensor `name`, converted to `dtype` if given. A conversion fills the converted tensor from blocks of
        rows, each read under its own open file, so beside the result there is at most one block of the source
        (its mapped pages are dropped when the file closes). Measured loading one Llama-2-70B-shaped layer bf16
        -> fp32 (scripts/measure_stream_70b.py's slice): peak RSS 4.01 GiB converting whole tensors, 3.64 GiB by
        blocks, 3.57 GiB once loaded; the whole-tensor way holds a 0.44 GiB source FFN matrix beside the layer."""
        if name not in self.where:
            raise GreenpruneError(f"{self.path}: tensor {name} not in the checkpoint")
        f = str(self.where[name])
        with safe_open(f, framework="pt") as h:
            sl = h.get_slice(name)
            shape, stored = sl.get_shape(), _DTYPES.get(sl.get_dtype())
            if dtype is None or stored is None or dtype == stored or not shape or shape[0] <= 1:
                t = h.get_tensor(name)
                return t if dtype is None else t.to(dtype)
        out = torch.empty(shape, dtype=dtype)
        row_bytes = max(1, math.prod(shape[1:]) * torch.empty((), dtype=stored).element_size())
        step = max(1, block_bytes // row_bytes)
        for a in range(0, shape[0], step):
            with safe_open(f, framework="pt") as h:
                out[a : a + step] = h.get_slice(name)[a : a + step]
        return out


class ShardWriter:
    """Write tensors into `model-XXXXX.safetensors` shards of at most `max_bytes` (a tensor larger than that gets
    a shard of its own), then an index. `flush()` closes the current shard early (one shard per layer)."""

    def __init__(self, out: Path, max_bytes: int = 4 * 2**30, prefix: str = "model"):
        self.out, self.max_bytes, self.prefix = Path(out), max_bytes, prefix
        self.buf: dict[str, torch.Tensor] = {}
        self.buf_bytes = 0
        self.files: list[str] = []
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        if name in self.weight_map or name in self.buf:
            raise GreenpruneError(f"tensor {name} written twice")
        n = t.numel() * t.element_size()
        if self.buf and self.buf_bytes + n > self.max_bytes:
            self.flush()
        self.buf[name] = t.contiguous()
        self.buf_bytes += n

    def flush(self) -> None:
        if not self.buf:
            return
        fname = f"{self.prefix}-{len(self.files) + 1:05d}.safetensors"
        save_file(self.buf, str(self.out / fname), metadata={"format": "pt"})
        self.files.append(fname)
        self.weight_map.update({k: fname for k in self.buf})
        self.total_bytes += self.buf_bytes
        self.buf, self.buf_bytes = {}, 0

    def finish(self, extra_metadata: Optional[dict] = None) -> list[str]:
        self.flush()
        if len(self.files) == 1:
            (self.out / self.files[0]).rename(self.out / f"{self.prefix}.safetensors")
            self.files = [f"{self.prefix}.safetensors"]
            self.weight_map = {k: self.files[0] for k in self.weight_map}
        elif self.files:
            meta = {"total_size": self.total_bytes, **(extra_metadata or {})}
            (self.out / INDEX_NAME).write_text(json.dumps({"metadata": meta, "weight_map": dict(sorted(self.weight_map.items()))}, indent=2) + "\n")
        return self.files
