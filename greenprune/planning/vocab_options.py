"""A vocabulary size the planner can choose, with its measured cost (measured by pruning/vocab_cost.py).

Vocabulary sizes the unified planner trades against FFN channels and layers, each with a measured cost.

A vocabulary option keeps the tokens the calibration corpus uses (the floor, pruning.vocab.VocabularyRanking) and
`extra` of the others, those the dense model expects most; the fewer it keeps, the more embedding (and untied LM
head) rows go. What an option costs is measured, not assumed, on documents it never saw: the calibration documents
the statistics pass never read are split by name; the same rule is applied with the floor from all but a quarter
of them (the fit fold), and the dense model with that vocabulary (its tokenizer pruned, the head's rows kept) is
scored on lines of the other quarter (the probe fold). Cost = its negative log-likelihood there minus the whole
vocabulary's, per token of the whole vocabulary's tokenization: nats per token, the unit of the KL tables
(kl_tables.py), so one dynamic program (planner.plan_layers) weighs a row of the vocabulary against an FFN channel
or a layer. The fit fold has fewer documents than the final floor, so the costs lean high (more tokens unseen).
The token mass that ranks unused tokens comes from the calibration blocks, which hold no probe document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..families import ModelShape


@dataclass(frozen=True)
class VocabOption:
    extra: Optional[int]  # unused tokens kept beyond the floor; None: the whole vocabulary
    keep: Optional[tuple[int, ...]]  # the kept original ids (all calibration documents); None: the whole vocabulary
    cost: float  # measured nats per probe token (0 for the whole vocabulary)
    removed_rows: int

    def removed_params(self, shape: ModelShape) -> int:
        return shape.vocab_params(shape.vocab_size) - shape.vocab_params(shape.vocab_size - self.removed_rows)

    def record(self) -> dict:
        return {"extra": self.extra, "kept": None if self.keep is None else len(self.keep),
                "removed_rows": self.removed_rows, "cost": self.cost}
