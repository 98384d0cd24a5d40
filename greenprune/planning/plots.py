"""Plots written next to a pruned model: per-layer widths of the plan, and the KL tables behind it."""
from __future__ import annotations

from pathlib import Path

from .plan import PruningPlan


def plot_plan(plan: PruningPlan, path: Path, kl_tables: dict | None = None, vocab_options: dict | None = None) -> Path:
    """Per-layer widths; with kl_tables, the planner's per-layer costs; with vocab_options (the record of
    vocab_options.measure_vocab_options), each vocabulary size's measured cost, the one chosen marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = plan.shape
    kept = {lp.index: lp for lp in plan.layers}
    idx = list(range(s.num_hidden_layers))
    ffn = [kept[i].ffn_width / s.intermediate_size if i in kept else 0 for i in idx]
    kv = [kept[i].kv_heads / s.num_key_value_heads if i in kept else 0 for i in idx]
    measured = bool(vocab_options and vocab_options.get("measured"))
    rows = 1 + bool(kl_tables) + measured
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.2 * rows), squeeze=False)
    ax = axes[0][0]
    ax.bar([i - 0.2 for i in idx], ffn, width=0.4, label=f"FFN width (of {s.intermediate_size})")
    ax.bar([i + 0.2 for i in idx], kv, width=0.4, label=f"KV groups (of {s.num_key_value_heads})")
    for i in plan.dropped_layers:
        ax.axvspan(i - 0.5, i + 0.5, color="red", alpha=0.15)
    ax.set_xlabel("decoder layer (red: removed)")
    ax.set_ylabel("fraction kept")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"greenprune plan: {plan.params():,} of {s.dense_params:,} parameters ({plan.ratio():.1%} removed), "
                 f"vocabulary {plan.vocab_size:,} of {s.vocab_size:,}", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    if kl_tables:
        ax2 = axes[1][0]
        widths = kl_tables["ffn_widths"]
        for k in range(1, len(widths), max(1, len(widths) // 4)):
            ax2.plot(idx, [row[k] for row in kl_tables["ffn"]], marker=".", label=f"FFN -> {widths[k]}")
        if kl_tables.get("drop"):
            ax2.plot(idx, kl_tables["drop"], "k--", label="layer removed")
        ax2.set_yscale("log")
        ax2.set_xlabel("decoder layer")
        ax2.set_ylabel("KL(dense || changed), nats")
        ax2.set_title("KL tables: cost of changing one layer alone (the planner's input)", fontsize=9)
        ax2.legend(fontsize=7, ncol=3)
    if measured:
        ax3 = axes[-1][0]
        opts = vocab_options["options"]
        ax3.plot([o["removed_rows"] for o in opts] + [0], [o["cost"] for o in opts] + [0.0], "o-",
                 label="option (the whole vocabulary at 0)")
        chosen = plan.meta.get("vocab_option") or {}
        if chosen.get("removed_rows") is not None:
            ax3.plot([chosen["removed_rows"]], [chosen["cost"]], "r*", markersize=14, label="chosen")
        ax3.axhline(0.0, color="gray", lw=0.5)
        ax3.set_xlabel("vocabulary rows removed")
        ax3.set_ylabel("cost, nats per token")
        ax3.set_title(f"vocabulary sizes: NLL change on {vocab_options['probe_tokens']:,} tokens of "
                      f"{vocab_options['probe_documents']} held-out calibration documents (the planner's input)",
                      fontsize=9)
        ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
