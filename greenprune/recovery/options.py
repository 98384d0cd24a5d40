"""Options of LoRA recovery; every default lives here once (the command line reads them from this class)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..errors import GreenpruneError


@dataclass(frozen=True)
class RecoverOptions:
    model: Optional[str] = None  # the pruned model directory (run_recover); unused by recover_model
    reference: Optional[str] = None  # None: the dense model named in the pruned model's report
    data: tuple[str, ...] = ("stdlib",)  # stdlib | DIR | pypkg:NAME (mined functions) | FILE.jsonl (instruction rows)
    # defaults = the measured runs (README): 512 tokens a step took 7-12 s on one contended CPU core
    steps: int = 160
    lr: float = 1e-3
    rank: int = 16
    alpha: Optional[float] = None  # LoRA scale alpha / rank; None: 2 x rank
    batch_tokens: int = 512  # tokens per step (batch_tokens // seq_len blocks)
    seq_len: int = 256
    # + ce_weight x cross-entropy on the data (0: pure self-distillation). 0.5 measured at 22% (README), 160 steps,
    # stdlib / rich bpb x dense: KL alone 1.026 / 1.058, KL + 0.5 CE 0.994 / 1.027 (part of that gain is adaptation
    # to the data, which the dense model gets from the same training too: the README's control row)
    ce_weight: float = 0.5
    warmup: int = 10
    max_data_tokens: int = 1_000_000
    checkpoint_every: int = 25
    seed: int = 0
    eval_tokens: int = 2048  # held-out KL to the dense model before / after (0: skip)
    eval_data: tuple[str, ...] = ("pypkg:rich",)  # mined pairs overlapping these corpora are dropped
    gradient_checkpointing: bool = True
    out: Optional[str] = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        for name in ("steps", "rank", "seq_len", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise GreenpruneError(f"recovery option {name} must be >= 1 (got {getattr(self, name)})")
        if self.batch_tokens < self.seq_len:
            raise GreenpruneError(f"batch_tokens ({self.batch_tokens}) must be >= seq_len ({self.seq_len})")
        if not self.lr > 0 or self.ce_weight < 0:
            raise GreenpruneError("recovery needs lr > 0 and ce_weight >= 0")

    def fingerprint(self) -> dict:
        """What determines the training trajectory: a checkpoint made with other values is not resumed."""
        keys = ("data", "steps", "lr", "rank", "alpha", "batch_tokens", "seq_len", "ce_weight", "warmup",
                "max_data_tokens", "seed")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in keys}
