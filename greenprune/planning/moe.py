"""Mixture-of-experts plans by router statistics (families/moe.py describes the layout).

The unified planner's KL tables mask FFN channels through a dense FFN's output projection (replay.py); a MoE
layer has none (fused 3-D experts), so MoE models are planned by this rule instead, from one calibration pass:

- expert importance = its routed mass: the sum over calibration tokens of the routing weight the expert gets
  when it is in the token's top-k (0 for an expert the router never selects);
- channel importance inside an expert = sum over its routed tokens of (weight x act(gate) x up)^2 times
  ||down_proj[:, j]||^2, the energy channel j adds to the layer output (FLAP's diagonal term, routing-weighted);
- the plan is uniform (one expert count and one expert width for every layer: MoE saves are the family's own
  checkpoint, which has no per-layer widths). Among the counts from all experts down to top-k and the aligned
  widths (PlanOptions.widths), it takes the pair inside the parameter budget that keeps the most importance,
  sum over layers of sum over kept experts of routed mass x kept share of channel importance (normalised);
- each layer keeps its own highest-mass experts, each kept expert its own highest-scoring channels. Attention
  and the layer count are left whole; the vocabulary is chosen as for every family (pruning/vocab.py).

The rule ignores that tokens of a removed expert are re-routed to the kept ones; it is a ranking, not a KL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..errors import GreenpruneError
from ..families import ModelShape, family_for
from ..families.moe import expert_channels
from ..scoring.stats import run_with_hooks
from .options import PlanOptions
from .plan import LayerPlan, PruningPlan, keep_top

METHOD = "moe-router"


@dataclass
class MoeLayerStats:
    routed_mass: torch.Tensor  # [E] sum of the routing weights the expert got (top-k only), float64
    tokens: torch.Tensor  # [E] routed token count
    prob_mass: torch.Tensor  # [E] sum over tokens of softmax(router logits) (all experts)
    channel_energy: torch.Tensor  # [E, I] sum over routed tokens of (routing weight x channel activation)^2

    def channel_scores(self, experts: torch.nn.Module) -> torch.Tensor:
        """[E, I]: routed channel energy x ||down_proj[e][:, j]||^2."""
        col = torch.linalg.vector_norm(experts.down_proj.detach().float(), dim=1).pow(2).cpu()  # [E, I]
        return self.channel_energy.float() * col


@torch.no_grad()
def collect_moe_stats(model, blocks: torch.Tensor, batch_size: int = 4,
                      progress: bool = True) -> tuple[list[MoeLayerStats], torch.Tensor]:
    """Router and expert statistics of every MoE layer over calibration blocks [N, L], and the dense model's
    output mass per token id [V] (as scoring.stats.collect_activation_stats, for the vocabulary)."""
    fam = family_for(model)
    layers, head = fam.layers(model), fam.lm_head(model)
    s = fam.shape(model.config)
    E, I = s.num_experts, s.intermediate_size
    stats = [MoeLayerStats(torch.zeros(E, dtype=torch.float64), torch.zeros(E, dtype=torch.long),
                           torch.zeros(E, dtype=torch.float64), torch.zeros(E, I, dtype=torch.float64)) for _ in layers]
    mass = torch.zeros(head.out_features, dtype=torch.float64)

    def router_hook(st):
        def hook(mod, args, out):
            logits = out[0]
            st.prob_mass.add_(logits.float().softmax(-1).sum(0).double().cpu())
        return hook

    def experts_hook(st):
        def hook(mod, args, out):
            x, idx, w = args[0], args[1], args[2]  # [T, H], [T, k], [T, k] (the experts' forward arguments)
            st.tokens.add_(torch.bincount(idx.flatten().cpu(), minlength=E))
            st.routed_mass.index_add_(0, idx.flatten().cpu(), w.flatten().double().cpu())
            for e in idx.unique().tolist():
                tok, pos = torch.where(idx == e)
                a = expert_channels(mod, x[tok], e).float() * w[tok, pos, None].float()
                st.channel_energy[e].add_(a.pow(2).sum(0).double().cpu())
        return hook

    def mass_hook(mod, args, out):
        mass.add_(out.detach().float().softmax(-1).flatten(0, -2).sum(0).double().cpu())

    handles = [head.register_forward_hook(mass_hook)]
    for st, layer in zip(stats, layers):
        handles.append(fam.router(layer).register_forward_hook(router_hook(st)))
        handles.append(fam.experts(layer).register_forward_hook(experts_hook(st)))
    run_with_hooks(model, blocks, handles, batch_size, "router statistics", progress)
    return stats, mass


def check_moe_options(opts: PlanOptions) -> None:
    """What the router rule does not do, refused before any work."""
    if opts.method == "layers":
        raise GreenpruneError("method 'layers' is not available for mixture-of-experts models: they are pruned by "
                              "router statistics (experts and expert channels, uniform); use method unified or uniform")
    if opts.kv:
        raise GreenpruneError("removing KV groups is not available for mixture-of-experts models (--kv)")


def candidates(shape: ModelShape, opts: PlanOptions) -> list[tuple[int, int]]:
    """(experts kept, expert width) pairs a uniform MoE plan may take, the dense pair first."""
    widths = opts.widths(shape)
    return [(e, w) for e in range(shape.num_experts, shape.experts_per_tok - 1, -1) for w in widths]


def _budget(shape: ModelShape, opts: PlanOptions, vocab: int) -> tuple[int, int]:
    """(most parameters the plan may keep, what the smallest candidate keeps)."""
    L, G = shape.num_hidden_layers, shape.num_key_value_heads
    least = shape.total_params([(min(opts.widths(shape)), G, shape.experts_per_tok)] * L, vocab)
    return shape.dense_params - math.ceil(opts.ratio * shape.dense_params), least


def check_moe_reachable(shape: ModelShape, opts: PlanOptions, vocab_floor: Optional[int] = None) -> None:
    """Refuse, before any scoring, a --ratio no uniform MoE plan can reach."""
    check_moe_options(opts)
    vocab = shape.vocab_size if vocab_floor is None else min(shape.vocab_size, max(1, vocab_floor))
    most, least = _budget(shape, opts, vocab)
    if least > most:
        raise GreenpruneError(
            f"--ratio {opts.ratio} is unreachable for this mixture-of-experts model: at most "
            f"{1 - least / shape.dense_params:.1%} of its parameters can go (every layer down to top-k = "
            f"{shape.experts_per_tok} experts of {min(opts.widths(shape))} channels, align {opts.align}, at most "
            f"{opts.max_ffn_prune:.0%} of an expert's channels{'' if vocab_floor is None else f', vocabulary down to {vocab} tokens'}"
            "); lower --ratio or relax the constraints")


def _kept_share(scores: torch.Tensor, w: int) -> torch.Tensor:
    """[E]: the share of each expert's channel importance its top-w channels hold (1 where it has none)."""
    total = scores.sum(1)
    top = scores.topk(w, dim=1).values.sum(1)
    return torch.where(total > 0, top / total.clamp_min(1e-30), torch.ones_like(total)).double()


def retained(stats: list[MoeLayerStats], scores: list[torch.Tensor], e: int, w: int, shares=None) -> float:
    """The rule's importance kept by (e experts, width w) in every layer, as a fraction of the dense model's
    (shares: the layers' _kept_share at width w, when the caller has them)."""
    kept, total = 0.0, 0.0
    for i, (st, sc) in enumerate(zip(stats, scores)):
        m = st.routed_mass
        if float(m.sum()) <= 0:
            continue
        ids = m.topk(e).indices
        share = shares[i] if shares is not None else _kept_share(sc, w)
        kept += float((m[ids] * share[ids]).sum() / m.sum())
        total += 1.0
    return kept / max(total, 1.0)


def moe_layer_plan(shape: ModelShape, index: int, e: int, w: int, st: MoeLayerStats, scores: torch.Tensor) -> LayerPlan:
    experts_keep = keep_top(st.routed_mass, e)
    return LayerPlan(index, w, shape.num_key_value_heads, None, tuple(range(shape.num_key_value_heads)), experts=e,
                     experts_keep=experts_keep, expert_ffn_keep=tuple(keep_top(scores[x], w) for x in experts_keep))


def make_moe_plan(shape: ModelShape, stats: list[MoeLayerStats], scores: list[torch.Tensor], opts: PlanOptions,
                  vocab_keep: Optional[list[int]]) -> tuple[PruningPlan, dict]:
    """The uniform plan of the rule above inside the budget, and a record of the choice (for the report)."""
    check_moe_options(opts)
    vocab = shape.vocab_size if vocab_keep is None else len(vocab_keep)
    most, _ = _budget(shape, opts, vocab)
    L, G = shape.num_hidden_layers, shape.num_key_value_heads
    best, shares = None, {}
    for e, w in candidates(shape, opts):
        params = shape.total_params([(w, G, e)] * L, vocab)
        if params > most:
            continue
        if w not in shares:  # once per width, not per (experts, width) pair
            shares[w] = [_kept_share(sc, w) for sc in scores]
        r = retained(stats, scores, e, w, shares[w])
        if best is None or (r, params) > (best[0], best[3]):
            best = (r, e, w, params)
    if best is None:
        raise GreenpruneError(f"--ratio {opts.ratio} is unreachable for this mixture-of-experts model under the "
                              f"constraints (align {opts.align}, at most {opts.max_ffn_prune:.0%} of an expert's "
                              "channels, at least top-k experts); lower --ratio or relax the constraints")
    r, e, w, _ = best
    layers = tuple(moe_layer_plan(shape, i, e, w, st, sc) for i, (st, sc) in enumerate(zip(stats, scores)))
    plan = PruningPlan(shape, layers, tuple(vocab_keep) if vocab_keep is not None else None,
                       {"method": METHOD, "ratio_requested": opts.ratio, "align": opts.align, "uniform": True})
    record = {"rule": METHOD, "experts": e, "expert_width": w, "importance_retained": r,
              "routed_mass": [st.routed_mass.tolist() for st in stats],
              "routed_tokens": [st.tokens.tolist() for st in stats]}
    return plan, record


def resolve_moe_plan(plan: PruningPlan, stats: list[MoeLayerStats], scores: list[torch.Tensor]) -> PruningPlan:
    """Fill a MoE plan's missing expert and channel ids from the router statistics (as resolve_plan does from
    channel scores); KV groups are kept whole where the plan names none."""
    s, layers = plan.shape, []
    for lp in plan.layers:
        if lp.kv_keep is None and lp.kv_heads < s.num_key_value_heads:
            raise GreenpruneError(f"layer {lp.index}: a mixture-of-experts plan must name its kv_keep (KV groups "
                                  "are not scored for these models)")
        kv = lp.kv_keep if lp.kv_keep is not None else tuple(range(s.num_key_value_heads))
        ek = lp.experts_keep if lp.experts_keep is not None else keep_top(stats[lp.index].routed_mass, lp.experts)
        fk = lp.expert_ffn_keep
        if fk is None:
            fk = tuple(keep_top(scores[lp.index][x], lp.ffn_width) for x in ek)
        layers.append(replace(lp, kv_keep=kv, experts_keep=ek, expert_ffn_keep=fk))
    out = replace(plan, layers=tuple(layers))
    out.validate()
    return out
