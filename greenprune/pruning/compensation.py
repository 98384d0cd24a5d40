"""Training-free reconstruction: refit the projections that consume pruned channels.

When channels R of an FFN intermediate (or query heads of an attention output) are removed, the consumer
W [out, C] can be refitted on the kept channels K so that it reproduces the dense output as well as the
kept channels allow, over the calibration activations x (second moments G = E[x x^T]):

    W'_K = argmin E||W'_K x_K - W x||^2 + lam ||W'_K - W_K||^2  =  (W G[:, K] + lam W_K) (G[K, K] + lam I)^-1

The correlated part of the removed channels is folded into the kept ones. The ridge pulls towards the
original kept weights, not towards zero (a zero-centred ridge shrank every weight and made SmolLM2 worse:
bits per byte 1.103x -> 1.115x at lam 1e-3); lam is relative to the mean diagonal of G[K, K].

Bias compensation (FLAP): a removed channel j still has a mean E[x_j]; its mean contribution
b = sum_{j in R} W[:, j] E[x_j] is folded into an output bias, so only the fluctuation around the mean is lost.
With the refit, the intercept is fitted jointly (ridge regression with an unpenalised intercept): the refit
uses the covariance C = G/n - mu mu^T instead of the second moments, and b = W mu - W'_K mu_K.
Most families have no down_proj / o_proj bias: the pruned model carries them as greenprune_<type> config fields
(`down_proj_bias`, `o_proj_bias`, modelio/per_layer.py), zero where a layer kept everything.
"""
from __future__ import annotations

import torch

from ..errors import GreenpruneError
from ..families import family_for
from ..modelio.per_layer import add_output_biases_, heterogeneous_config, is_per_layer
from ..planning.plan import PruningPlan


def refit(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """Least-squares refit of weight[out, C] onto the columns `keep`, given gram[C, C] = sum x x^T."""
    g = gram.double()
    gkk = g[keep][:, keep]
    lam = ridge * gkk.diagonal().mean().clamp_min(1e-12)
    rhs = weight.double() @ g[:, keep] + lam * weight.double()[:, keep]  # [out, K]
    sol = torch.linalg.solve(gkk + lam * torch.eye(len(keep), dtype=torch.float64), rhs.T).T
    return sol.to(weight.dtype)


@torch.no_grad()
def reconstruct_(pruned, dense, plan: PruningPlan, stats, ridge: float = 1e-2) -> int:
    """Refit down_proj / o_proj of every narrowed layer of `pruned` in place from the dense model's Gram
    statistics (scoring.stats.collect_activation_stats with gram=True). Returns the number of refitted matrices."""
    fam, n = family_for(dense), 0
    for new, lp in enumerate(plan.layers):
        dense_layer, st = fam.layers(dense)[lp.index], stats[lp.index]
        layer = fam.layers(pruned)[new]
        if lp.ffn_width < plan.shape.intermediate_size:
            keep = torch.tensor(lp.ffn_keep)
            fam.ffn_out(layer).weight.copy_(refit(fam.ffn_out(dense_layer).weight, st.ffn_gram, keep, ridge))
            n += 1
        if lp.kv_heads < plan.shape.num_key_value_heads:
            keep = plan.shape.query_channels(lp.kv_keep)
            fam.attn_out(layer).weight.copy_(refit(fam.attn_out(dense_layer).weight, st.attn_gram, keep, ridge))
            n += 1
    return n


def refit_with_intercept(weight: torch.Tensor, gram: torch.Tensor, mean: torch.Tensor, count: int,
                         keep: torch.Tensor, ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares refit of weight[out, C] onto columns `keep` plus an intercept: returns (W'_K, b)."""
    mu = mean.double()
    cov = gram.double() / max(count, 1) - torch.outer(mu, mu)  # [C, C]
    w = weight.double()
    wk = refit(w, cov, keep, ridge).double()
    b = w @ mu - wk @ mu[keep]
    return wk.to(weight.dtype), b.to(weight.dtype)


def enable_output_biases_(model, down: bool, o: bool) -> None:
    """Give every decoder layer's down_proj / o_proj a (zero) bias and record it in the config, so the saved
    model reloads with them: a plain config becomes greenprune_<type> with uniform per-layer lists."""
    cfg = model.config
    fam = family_for(cfg)
    first = fam.layers(model)[0]
    down = down and fam.ffn_out(first).bias is None  # StarCoder2's c_proj / o_proj have biases of their own
    o = o and fam.attn_out(first).bias is None
    if not (down or o):
        return
    if not is_per_layer(cfg):
        n = cfg.num_hidden_layers
        new = heterogeneous_config(cfg, [cfg.intermediate_size] * n, [cfg.num_attention_heads] * n,
                                   [cfg.num_key_value_heads] * n)
        new._attn_implementation = cfg._attn_implementation
        model.config = new
        cfg = new
    cfg.down_proj_bias = bool(getattr(cfg, "down_proj_bias", False) or down)
    cfg.o_proj_bias = bool(getattr(cfg, "o_proj_bias", False) or o)
    for layer in fam.layers(model):
        add_output_biases_(layer, cfg.down_proj_bias, cfg.o_proj_bias)


@torch.no_grad()
def compensate_(pruned, dense, plan: PruningPlan, stats, refit_weights: bool, ridge: float = 1e-2) -> int:
    """Bias compensation of every narrowed layer of `pruned`, in place: the removed channels' mean output goes
    into a down_proj / o_proj bias; with refit_weights, the kept weights are refitted jointly with the bias
    (needs the Gram statistics). Returns the number of compensated matrices."""
    narrowed_ffn = any(lp.ffn_width < plan.shape.intermediate_size for lp in plan.layers)
    narrowed_kv = any(lp.kv_heads < plan.shape.num_key_value_heads for lp in plan.layers)
    enable_output_biases_(pruned, narrowed_ffn, narrowed_kv)
    fam, n = family_for(dense), 0
    for new, lp in enumerate(plan.layers):
        dl, st, layer = fam.layers(dense)[lp.index], stats[lp.index], fam.layers(pruned)[new]
        jobs = []
        if lp.ffn_width < plan.shape.intermediate_size:
            jobs.append((fam.ffn_out(dl), fam.ffn_out(layer), st.ffn, st.ffn_gram, torch.tensor(lp.ffn_keep)))
        if lp.kv_heads < plan.shape.num_key_value_heads:
            jobs.append((fam.attn_out(dl), fam.attn_out(layer), st.attn, st.attn_gram,
                         plan.shape.query_channels(lp.kv_keep)))
        for src, dst, ch, gram, keep in jobs:
            base = src.bias.double() if src.bias is not None else 0.0
            if refit_weights:
                if gram is None:
                    raise GreenpruneError("refit with bias compensation needs Gram statistics (gram=True)")
                wk, b = refit_with_intercept(src.weight, gram, ch.mean, ch.count, keep, ridge)
                dst.weight.copy_(wk)
            else:
                removed = torch.ones(src.weight.shape[1], dtype=torch.bool)
                removed[keep] = False
                b = src.weight.double()[:, removed] @ ch.mean.double()[removed]
            dst.bias.copy_((b + base).to(dst.bias.dtype))
            n += 1
    return n
