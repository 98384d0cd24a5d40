"""Which dense token id each row of a pruned vocabulary is: the map every comparison of a pruned model with its
dense reference needs (evaluation's KL and agreement, recovery's distillation loss)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import GreenpruneError
from ..families import shape_of
from ..planning.plan import PruningPlan


def dense_ids_by_string(pruned_tok, dense_tok) -> list[int]:
    """The dense id of every pruned tokenizer token, in pruned id order, matched by token string."""
    dvocab = dense_tok.get_vocab()
    pvocab = sorted(pruned_tok.get_vocab().items(), key=lambda kv: kv[1])
    missing = [t for t, _ in pvocab if t not in dvocab]
    if missing:
        raise GreenpruneError(f"the pruned tokenizer has {len(missing)} tokens the reference's lacks (e.g. "
                              f"{missing[:3]}): this reference is not the model it was pruned from")
    return [dvocab[t] for t, _ in pvocab]


def plan_of(model_dir) -> Optional[PruningPlan]:
    """The plan saved beside a pruned model (plan.json), None when there is none."""
    p = Path(model_dir) / "plan.json" if model_dir else None
    return PruningPlan.load(p) if p is not None and p.exists() else None


def vocab_mapping(pruned, ptok, dense, dtok, plan: Optional[PruningPlan]) -> Optional[torch.Tensor]:
    """Dense id of each pruned vocabulary row (None: same vocabulary): the plan's vocab_keep where there is a
    plan, else by token string; checked against both models and both tokenizers."""
    hid_p, hid_d = pruned.config.hidden_size, dense.config.hidden_size
    if hid_p != hid_d:
        raise GreenpruneError(f"the reference does not match the pruned model: hidden size {hid_d} vs {hid_p}")
    if plan is not None and plan.shape != shape_of(dense):
        raise GreenpruneError(f"the reference's architecture ({shape_of(dense)}) is not the one "
                              f"the pruned model was planned from ({plan.shape})")
    by_string = dense_ids_by_string(ptok, dtok)
    keep = list(plan.vocab_keep) if plan is not None and plan.vocab_keep is not None else by_string
    K, V = pruned.config.vocab_size, dense.config.vocab_size
    if len(keep) != K or max(keep, default=0) >= V:
        raise GreenpruneError(f"the pruned vocabulary ({K} rows) does not map into the reference's ({V} rows)")
    if len(by_string) == len(keep) and by_string != keep:
        raise GreenpruneError("the pruned tokenizer's tokens sit at other ids in the reference tokenizer")
    return None if K == V and keep == list(range(V)) else torch.tensor(keep)
