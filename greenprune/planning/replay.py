"""Re-running a model's upper layers from cached inputs, with FFN channels or KV groups masked and layers
skipped: how the KL tables, the layer-removal check and the search's fitness score a change without building
the changed model.

The dense pass runs once per batch of calibration blocks and caches every decoder layer's input, the keyword
arguments the model passes each layer (rotary embeddings, the mask of the layer's attention kind) and the
final normed hidden states. A change then re-runs only the layers from its first changed one up. A masked
channel contributes nothing, so a masked layer computes exactly what the physically pruned layer computes:
the consumer projection's input columns of removed FFN channels (and of removed KV groups' query heads) are
zeroed by forward pre-hooks, installed for one replay and removed after it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from ..families import family_for


@torch.no_grad()
def capture_layer_inputs(model, x: torch.Tensor):
    """One dense pass over token ids x: every decoder layer's input hidden states, the keyword arguments the
    model passes each layer, the final normed hidden states, and (appended to the inputs) the last layer's
    output, the final norm's input."""
    fam = family_for(model)
    inputs, kws = [], []

    def pre(mod, args, kwargs):
        inputs.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])
        kws.append({k: v for k, v in kwargs.items() if k != "hidden_states"})

    def norm_pre(mod, args):
        inputs.append(args[0])

    hs = [l.register_forward_pre_hook(pre, with_kwargs=True) for l in fam.layers(model)]
    hs.append(fam.final_norm(model).register_forward_pre_hook(norm_pre))
    try:
        final = fam.backbone(model)(x, use_cache=False).last_hidden_state
    finally:
        for h in hs:
            h.remove()
    return inputs, kws, final


def channel_mask(keep: Sequence[int], n: int, dtype: torch.dtype) -> torch.Tensor:
    """[n] ones at the kept channels, zeros elsewhere."""
    m = torch.zeros(n, dtype=dtype)
    m[torch.as_tensor(list(keep), dtype=torch.long)] = 1
    return m


def group_mask(keep: Sequence[int], groups: int, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """[channels] ones over the kept groups' channels (each group one contiguous run of channels // groups)."""
    m = torch.zeros(channels, dtype=dtype).view(groups, -1)
    m[torch.as_tensor(list(keep), dtype=torch.long)] = 1
    return m.view(-1)


@dataclass(frozen=True)
class Change:
    """What a candidate changes in one dense layer: kept FFN channels and KV groups (None: all), or removal."""

    ffn_keep: Optional[Sequence[int]] = None
    kv_keep: Optional[Sequence[int]] = None
    dropped: bool = False


class LayerReplay:
    """Cached dense activations of calibration blocks, replayed from any layer up (see the module docstring)."""

    def __init__(self, model, blocks: torch.Tensor, batch_size: int = 4):
        self.model = model
        self.family = family_for(model)
        self.layers = self.family.layers(model)
        self.norm = self.family.final_norm(model)
        self.groups = self.family.shape(model.config).num_key_value_heads
        self.batch_size = batch_size
        self.batches = [capture_layer_inputs(model, blocks[s : s + batch_size]) for s in range(0, len(blocks), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def dense_final(self, b: int) -> torch.Tensor:
        return self.batches[b][2]

    @contextmanager
    def changed(self, changes: dict[int, Change]) -> Iterator[tuple[int, frozenset]]:
        """Within the block the layers are masked as `changes` says; yields (first changed layer, removed
        layers), the arguments of final(). The hooks are removed on exit."""
        handles, skip, first = [], set(), len(self.layers)

        def hook(mask):
            return lambda mod, args: (args[0] * mask,)

        try:
            for i, c in sorted(changes.items()):
                if c.dropped:
                    skip.add(i)
                    first = min(first, i)
                    continue
                if c.ffn_keep is not None:
                    lin = self.family.ffn_out(self.layers[i])
                    m = channel_mask(c.ffn_keep, lin.in_features, lin.weight.dtype)
                    handles.append(lin.register_forward_pre_hook(hook(m)))
                    first = min(first, i)
                if c.kv_keep is not None:
                    lin = self.family.attn_out(self.layers[i])
                    m = group_mask(c.kv_keep, self.groups, lin.in_features, lin.weight.dtype)
                    handles.append(lin.register_forward_pre_hook(hook(m)))
                    first = min(first, i)
            yield first, frozenset(skip)
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def final(self, b: int, first: int, skip: frozenset = frozenset(), depth: int = 0) -> torch.Tensor:
        """Batch b's final normed hidden states with layers first.. re-run (those in `skip` left out) under
        whatever masks are installed; the dense ones when first is past the last layer.

        depth > 0 (a bounded proxy): only layers first .. first + depth - 1 are re-run; the change they make to
        the residual stream is carried to the final norm unchanged (the dense layers above are taken as
        identity on the difference), so a candidate costs `depth` layers whatever its position."""
        inputs, kws, final = self.batches[b]
        n = len(self.layers)
        if first >= n:
            return final
        stop = n if depth <= 0 else min(n, first + depth)
        h = inputs[first]
        for j in range(first, stop):
            if j in skip:
                continue
            out = self.layers[j](h, **kws[j])
            h = out[0] if isinstance(out, tuple) else out
        if stop < n:
            h = inputs[n] + (h - inputs[stop])
        return self.norm(h)
