"""Importance scores: which FFN channels, KV groups, layers and tokens matter.

One pass over calibration blocks collects per-channel activation statistics of every layer's FFN
intermediate (the input of down_proj) and attention output (the input of o_proj), the block-influence
cosine of every layer, and, when a scorer needs them, gradients. Scorers are small classes behind one
interface: `ffn(layer, stats) -> [F]` and `kv(layer, stats, shape) -> [G]`; higher = more important.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from .errors import GreenpruneError
from .kernels import ChannelStats, group_sum, taylor_scores, wanda_scores
from .plan import ModelShape


@dataclass
class LayerStats:
    ffn: ChannelStats  # over the FFN intermediate activations silu(gate) * up, [F]
    attn: ChannelStats  # over the attention output before o_proj, [heads * head_dim]
    cos_sum: float = 0.0  # sum over tokens of cos(layer input, layer output)
    cos_count: int = 0
    ffn_grad: Optional[torch.Tensor] = None  # per-channel gradient statistic (taylor / fisher), [F]
    attn_grad: Optional[torch.Tensor] = None  # per query-head-channel statistic, [heads * head_dim]
    ffn_gram: Optional[torch.Tensor] = None  # sum over tokens of x x^T of the FFN intermediate, [F, F]
    attn_gram: Optional[torch.Tensor] = None  # the same for the attention output, [C, C]

    @property
    def block_influence(self) -> float:
        """ShortGPT's block influence, 1 - E[cos(x_in, x_out)]: low = the layer barely changes its input."""
        return 1.0 - self.cos_sum / max(self.cos_count, 1)


def _group_sum(per_channel: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """Sum o_proj-input channel scores per KV group: [heads * head_dim] -> [num_key_value_heads]."""
    return group_sum(per_channel, _group_size(shape))


def _group_size(shape: ModelShape) -> int:
    return shape.head_dim * shape.heads_per_group


class Importance:
    """Scorer interface. `needs` is one of None, 'taylor', 'fisher' (extra gradient passes)."""

    name = "base"
    needs: Optional[str] = None

    def ffn(self, layer, stats: LayerStats) -> torch.Tensor:
        raise NotImplementedError

    def kv(self, layer, stats: LayerStats, shape: ModelShape) -> torch.Tensor:
        raise NotImplementedError


def _col_norm(w: torch.Tensor, dim: int) -> torch.Tensor:
    """L2 norms along `dim` in float32. For float32 weights (layer streaming computes in float32) this is one
    reduction with no weight-sized temporary; w.pow(2).sum() allocated one (measured: +449 MiB peak RSS for an
    8192 x 14336 matrix, +1 MiB this way), 0.9 GB per 70B-shaped down_proj."""
    return torch.linalg.vector_norm(w, dim=dim, dtype=torch.float32)


class Magnitude(Importance):
    """Weight norms only (no data): the classic baseline."""

    name = "magnitude"

    def ffn(self, layer, stats):
        m = layer.mlp
        return _col_norm(m.gate_proj.weight, 1) + _col_norm(m.up_proj.weight, 1) + _col_norm(m.down_proj.weight, 0)

    def kv(self, layer, stats, shape):
        return _group_sum(_col_norm(layer.self_attn.o_proj.weight, 0), shape)


class WandaSP(Importance):
    """Wanda-sp: sum_i |W_down[i, j]| * ||x_j||_2 over calibration tokens (per channel / per KV group)."""

    name = "wanda"

    def ffn(self, layer, stats):
        return wanda_scores(layer.mlp.down_proj.weight, stats.ffn.l2_norm)

    def kv(self, layer, stats, shape):
        return wanda_scores(layer.self_attn.o_proj.weight, stats.attn.l2_norm, _group_size(shape))


class Fluctuation(Importance):
    """FLAP: Var[x_j] * ||W_down[:, j]||^2, the output change when channel j is replaced by its mean."""

    name = "flap"

    def ffn(self, layer, stats):
        return stats.ffn.variance * _col_norm(layer.mlp.down_proj.weight, 0).pow(2)

    def kv(self, layer, stats, shape):
        return _group_sum(stats.attn.variance * _col_norm(layer.self_attn.o_proj.weight, 0).pow(2), shape)


class Taylor(Importance):
    """First-order Taylor: sum over a channel's weights of |w * dL/dw| (LM loss on calibration text)."""

    name = "taylor"
    needs = "taylor"

    def ffn(self, layer, stats):
        return stats.ffn_grad

    def kv(self, layer, stats, shape):
        return _group_sum(stats.attn_grad, shape)


class OutputKL(Importance):
    """KL to the dense output, to second order: removing channel c (delta = -w_c) raises KL(dense || pruned)
    by about 1/2 E[(sum_{w in c} w * d log q(y)/dw)^2] with y sampled from the model itself (Fisher)."""

    name = "kl"
    needs = "fisher"

    def ffn(self, layer, stats):
        return stats.ffn_grad

    def kv(self, layer, stats, shape):
        return _group_sum(stats.attn_grad, shape)


def greedy_removal_order(m: torch.Tensor) -> torch.Tensor:
    """Scores from a greedy removal order under a quadratic cost: removing set R costs 1_R^T M 1_R.
    Each step removes the unit whose removal adds least given those already removed; the score of a unit is
    its step (removed last = most important)."""
    n = m.shape[0]
    m = m.double()
    delta = m.diagonal().clone()
    removed = torch.zeros(n, dtype=torch.bool)
    score = torch.empty(n)
    for step in range(n):
        j = int(torch.where(removed, torch.inf, delta).argmin())
        removed[j] = True
        score[j] = step
        delta += 2 * m[:, j]
    return score


class OutputError(Importance):
    """The layer's output error with cross terms: removing channels R of W_down changes the FFN output
    by sum_{j in R} x_j W[:, j], whose energy over calibration tokens is 1_R^T (G o W^T W) 1_R, G = X^T X.
    Wanda-sp and FLAP keep only the diagonal; correlated channels can cancel, so the order is greedy."""

    name = "output-error"
    needs = "gram"

    def ffn(self, layer, stats):
        w = layer.mlp.down_proj.weight.float()
        return greedy_removal_order(stats.ffn_gram * (w.T @ w))

    def kv(self, layer, stats, shape):
        w = layer.self_attn.o_proj.weight.float()
        m = stats.attn_gram * (w.T @ w)
        g, k = shape.num_key_value_heads, _group_size(shape)
        return greedy_removal_order(m.view(g, k, g, k).sum((1, 3)))


SCORERS = {cls.name: cls for cls in (Magnitude, WandaSP, Fluctuation, Taylor, OutputKL, OutputError)}


# `auto` (the default): output-error where its Gram matrices (every layer's [F, F] and [C, C], float32, held
# together during the calibration pass) fit in this budget, else flap. Measured on SmolLM2-135M at the 22%
# unified plan's widths, FFN channels only, no compensation (bits per byte x dense, stdlib held-out / rich):
# output-error 1.085 / 1.084, taylor 1.094 / 1.096, wanda 1.094 / 1.099, flap 1.107 / 1.107, kl 1.138 / 1.123.
GRAM_BUDGET_BYTES = 4 << 30


def gram_bytes(shape: ModelShape) -> int:
    c = shape.num_attention_heads * shape.head_dim
    return 4 * shape.num_hidden_layers * (shape.intermediate_size ** 2 + c ** 2)


def resolve_scorer_name(name: str, shape: ModelShape) -> str:
    if name != "auto":
        return name
    return "output-error" if gram_bytes(shape) <= GRAM_BUDGET_BYTES else "flap"


def get_scorer(name: str) -> Importance:
    if name not in SCORERS:
        raise GreenpruneError(f"unknown importance scorer '{name}'; choose from auto, {', '.join(SCORERS)}")
    return SCORERS[name]()


def _add_gram(acc: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    g = x2.T @ x2
    return g if acc is None else acc.add_(g)


def _layer_output(out):
    return out[0] if isinstance(out, tuple) else out


def attach_stat_hooks(layer, st: LayerStats, gram: bool = False) -> list:
    """Hooks on one decoder layer that accumulate its statistics into `st`; the caller removes the handles.
    Shared by the whole-model pass below and the layer-streaming pass (stream.py)."""
    def ffn_hook(mod, args):
        st.ffn.update(args[0])  # returns None: the input passes on unchanged
        if gram:
            st.ffn_gram = _add_gram(st.ffn_gram, args[0])

    def attn_hook(mod, args):
        st.attn.update(args[0])
        if gram:
            st.attn_gram = _add_gram(st.attn_gram, args[0])

    def cos_hook(mod, args, kwargs, out):
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        c = torch.nn.functional.cosine_similarity(x.float(), _layer_output(out).float(), dim=-1)
        st.cos_sum += c.sum().item()
        st.cos_count += c.numel()

    return [layer.mlp.down_proj.register_forward_pre_hook(ffn_hook),
            layer.self_attn.o_proj.register_forward_pre_hook(attn_hook),
            layer.register_forward_hook(cos_hook, with_kwargs=True)]


@torch.no_grad()
def collect_activation_stats(model, blocks: torch.Tensor, batch_size: int = 4, progress: bool = True,
                             gram: bool = False) -> tuple[list[LayerStats], torch.Tensor]:
    """One forward pass over calibration blocks [N, L] with hooks on every decoder layer
    (gram: also the [C, C] second-moment matrices of the FFN intermediate and attention output).
    Also returns the dense model's output mass per token id, sum over positions of softmax(logits) [V] (float64):
    how much the model expects each token, seen in the calibration text or not (vocabulary choice uses it)."""
    layers = model.model.layers
    stats = [LayerStats(ChannelStats(), ChannelStats()) for _ in layers]
    mass = torch.zeros(model.lm_head.out_features, dtype=torch.float64)

    def mass_hook(mod, args, out):
        mass.add_(out.detach().float().softmax(-1).flatten(0, -2).sum(0).double().cpu())

    handles = [h for st, layer in zip(stats, layers) for h in attach_stat_hooks(layer, st, gram)]
    handles.append(model.lm_head.register_forward_hook(mass_hook))
    try:
        for s in tqdm(range(0, len(blocks), batch_size), desc="activation statistics", disable=not progress):
            model(blocks[s : s + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats, mass


def collect_gradient_stats(model, blocks: torch.Tensor, stats: list[LayerStats], mode: str, progress: bool = True) -> None:
    """Fill stats[i].ffn_grad / attn_grad. taylor: |w * g| with g the LM-loss gradient summed over blocks.
    fisher: E over blocks of (sum_{w in channel} w * g)^2 with labels sampled from the model's own outputs."""
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    targets = []
    for layer in model.model.layers:
        for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj, layer.self_attn.o_proj):
            lin.weight.requires_grad_(True)
            lin.weight.grad = None
            targets.append(lin.weight)
    for st in stats:
        st.ffn_grad = torch.zeros(st.ffn.n_channels)
        st.attn_grad = torch.zeros(st.attn.n_channels)

    def per_channel(layer, signed: bool):
        """Sums of |w * g| (signed: of w * g) per FFN channel (gate/up rows + down columns) and per o_proj column."""
        m, o = layer.mlp, layer.self_attn.o_proj
        t = lambda w, d: taylor_scores(w, w.grad, d, signed=signed).cpu()  # noqa: E731
        return t(m.gate_proj.weight, 1) + t(m.up_proj.weight, 1) + t(m.down_proj.weight, 0), t(o.weight, 0)

    try:
        batch = 1 if mode == "fisher" else 4
        for s in tqdm(range(0, len(blocks), batch), desc=f"{mode} gradients", disable=not progress):
            x = blocks[s : s + batch]
            logits = model(x, use_cache=False).logits.float()
            if mode == "fisher":
                with torch.no_grad():
                    y = torch.multinomial(logits.detach().softmax(-1).view(-1, logits.shape[-1]), 1).view(x.shape)
                loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1), reduction="sum")
            else:
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
            loss.backward()
            if mode == "fisher":
                with torch.no_grad():
                    for st, layer in zip(stats, model.model.layers):
                        f, a = per_channel(layer, signed=True)
                        st.ffn_grad += f.pow(2)
                        st.attn_grad += a.pow(2)
                for w in targets:
                    w.grad = None
        if mode == "taylor":
            with torch.no_grad():
                for st, layer in zip(stats, model.model.layers):
                    st.ffn_grad, st.attn_grad = per_channel(layer, signed=False)
    finally:
        for w in targets:
            w.grad = None
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@dataclass
class Scores:
    """Per dense layer: FFN channel scores [F], KV group scores [G], and the layer's block influence."""

    ffn: list[torch.Tensor]
    kv: list[torch.Tensor]
    block_influence: list[float]
    scorer: str
    stats: list[LayerStats] = field(repr=False, default_factory=list)
    token_mass: Optional[torch.Tensor] = field(repr=False, default=None)  # dense output mass per token id [V]


def score_model(model, blocks: torch.Tensor, scorer: Importance | str, progress: bool = True, gram: bool = False) -> Scores:
    """Scores of every layer; gram=True also keeps the second-moment matrices (for reconstruction)."""
    shape = ModelShape.from_config(model.config)
    scorer = get_scorer(resolve_scorer_name(scorer, shape)) if isinstance(scorer, str) else scorer
    stats, mass = collect_activation_stats(model, blocks, progress=progress, gram=gram or scorer.needs == "gram")
    if scorer.needs in ("taylor", "fisher"):
        collect_gradient_stats(model, blocks, stats, scorer.needs, progress=progress)
    with torch.no_grad():
        ffn = [scorer.ffn(l, st).float().cpu() for l, st in zip(model.model.layers, stats)]
        kv = [scorer.kv(l, st, shape).float().cpu() for l, st in zip(model.model.layers, stats)]
    return Scores(ffn, kv, [st.block_influence for st in stats], scorer.name, stats, mass)
