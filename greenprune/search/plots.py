"""Plots of a search: best fitness per generation, and every scored candidate by the operator that made it."""
from __future__ import annotations

import json
from pathlib import Path


def read_candidates(path: Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _family(origin: str) -> str:
    if origin.startswith("seed"):
        return "seed"
    if origin.startswith("llm-fallback"):
        return "LLM reply invalid -> numeric"
    if origin == "llm":
        return "LLM"
    return f"numeric {origin}"


def plot_convergence(history: list[dict], candidates: Path, path: Path, title: str = "",
                     others: dict[str, list[dict]] | None = None, label: str = "this search") -> Path:
    """history: the search's per-generation records; candidates: its candidates.jsonl (stage-2 scores are
    drawn as points by origin); others: more histories (name -> records) drawn as extra best-so-far lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    colours = {}
    for c in read_candidates(candidates):
        if c.get("stage") != 2:
            continue
        fam = _family(c["origin"])
        sc = ax.scatter(c["generation"], c["fitness"], s=10, alpha=0.45, label=fam if fam not in colours else None,
                        color=colours.get(fam))
        colours.setdefault(fam, sc.get_facecolor()[0])
    for name, h in {label: history, **(others or {})}.items():
        ax.plot([r["generation"] for r in h], [r["best"] for r in h], marker="o", ms=3, label=f"{name} (population best)")
    ax.set_xlabel("generation (0: seed plans)")
    ax.set_ylabel("fitness (lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"search convergence{': ' + title if title else ''}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
