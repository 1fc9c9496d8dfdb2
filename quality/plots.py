"""PNG plots of an ``simstream eval`` report (``--plots DIR``): recall@K and precision-recall curves,
simstream and TF-IDF on the same axes, so the comparison is read off one picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

__all__ = ["LABELS", "write_plots"]

LABELS = {"simstream": "simstream", "simstream_euclidean": "simstream (euclidean)", "tfidf": "TF-IDF char-3",
          "simstream_match": "simstream match probability"}


def write_plots(report: Mapping[str, Any], out_dir: Path, title: str = "") -> list[Path]:
    """Writes ``recall_at_k.png`` and ``precision_recall.png`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = report["curves"]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, curve in curves.items():
        if "recall_at_k" not in curve:  # the match probability reorders nothing: a PR curve only
            continue
        ks = list(range(1, len(curve["recall_at_k"]) + 1))
        ax.plot(ks, curve["recall_at_k"], label=LABELS.get(method, method))
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K (gold pairs)")
    ax.set_title(f"recall@K {title}".strip())
    ax.grid(True, alpha=0.3)
    ax.legend()
    paths.append(out_dir / "recall_at_k.png")
    fig.tight_layout()
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, curve in curves.items():
        pr = curve["pr"]
        line, = ax.plot(pr["recall"], pr["precision"], label=LABELS.get(method, method))
        chosen = report.get("match", {}).get(method)
        if chosen:
            ax.plot([chosen["recall"]], [chosen["precision"]], "o", color=line.get_color())
    ax.set_xlabel("recall (gold pairs)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    k = report.get("match_k", "")
    ax.set_title(f"is a top-{k} neighbour the same product? {title}".strip())
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    paths.append(out_dir / "precision_recall.png")
    fig.tight_layout()
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths
