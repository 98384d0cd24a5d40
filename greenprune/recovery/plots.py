"""The loss curve of a recovery run (loss.png beside the recovered model)."""
from __future__ import annotations

from pathlib import Path


def plot_loss(history: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss, kl = history["loss"], history.get("kl") or []
    series = [("loss: KL(dense || pruned)", loss)]
    if history.get("ce_weight") and len(kl) == len(loss):  # the total is mostly the data's entropy: show the KL too
        series = [(f"loss: KL + {history['ce_weight']:g} CE", loss), ("its KL(dense || pruned) term", kl)]
    fig, axes = plt.subplots(1, len(series), figsize=(7 * len(series), 3.5), squeeze=False)
    w = max(1, min(10, len(loss) // 5))
    for ax, (name, ys) in zip(axes[0], series):
        ax.plot(range(1, len(ys) + 1), ys, lw=0.8, alpha=0.5, label="per step")
        if w > 1:
            avg = [sum(ys[i - w : i]) / w for i in range(w, len(ys) + 1)]
            ax.plot(range(w, len(ys) + 1), avg, lw=2, label=f"mean of {w} steps")
        ax.legend()
        ax.set_xlabel("step")
        ax.set_ylabel(f"{name}, nats/token")
        ax.grid(alpha=0.3)
    fig.suptitle("greenprune recovery: LoRA self-distillation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
