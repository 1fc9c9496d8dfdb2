"""The match decision: is a published neighbour the same product? (``simstream eval``)

Every (query, neighbour) pair among a query's top-K neighbours is a candidate; it is called a match
when its score reaches a threshold. Precision = true matches among the called pairs; recall = true
matches called among *all* gold pairs of the queries (a gold pair outside the top-K is a miss), so
the figures describe what a recommender dropping duplicates, or a catalog team merging them, gets.

The threshold is chosen where F1 is highest on labelled pairs that are not the measured ones
(train/valid splits, or other catalogs), never on the gold it is reported on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Candidates", "candidates", "pr_curve", "best_threshold", "decision", "sampled_curve", "recall_curve"]

Ranked = Mapping[str, Sequence[tuple[str, float]]]  # query -> [(right id, score)], best first


@dataclass
class Candidates:
    """Scores and labels of the candidate pairs, and how many gold pairs there are in all."""

    scores: np.ndarray
    labels: np.ndarray
    gold_pairs: int


def candidates(ranked: Ranked, gold: Mapping[str, set[str]], k: int) -> Candidates:
    """The top-``k`` neighbours of every gold query as labelled candidate pairs."""
    scores, labels, pairs = [], [], 0
    for q, matches in gold.items():
        if q not in ranked:
            continue
        pairs += len(matches)
        for rid, score in list(ranked[q])[:k]:
            scores.append(score)
            labels.append(rid in matches)
    return Candidates(np.asarray(scores, np.float64), np.asarray(labels, bool), pairs)


def pr_curve(c: Candidates) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall), thresholds descending: calling every pair >= t a match."""
    order = np.argsort(-c.scores, kind="stable")
    s, y = c.scores[order], c.labels[order]
    tp = np.cumsum(y)
    called = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # one point per distinct score (ties are called together)
    return s[last], tp[last] / called[last], tp[last] / max(c.gold_pairs, 1)


def best_threshold(c: Candidates) -> float:
    """The threshold with the highest F1 on ``c`` (the midpoint to the next lower score)."""
    t, p, r = pr_curve(c)
    if not len(t):
        return float("inf")
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    i = int(np.argmax(f1))
    return float((t[i] + t[i + 1]) / 2) if i + 1 < len(t) else float(t[i])


def decision(c: Candidates, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of calling the candidates scoring >= ``threshold`` matches."""
    called = c.scores >= threshold
    tp = int((called & c.labels).sum())
    p = tp / max(int(called.sum()), 1)
    r = tp / max(c.gold_pairs, 1)
    return {"threshold": round(threshold, 6), "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0, "called": int(called.sum()),
            "gold_pairs": c.gold_pairs}


def sampled_curve(c: Candidates, points: int = 200) -> dict[str, list[float]]:
    """The PR curve thinned to about ``points`` points (for the JSON report and the plot)."""
    t, p, r = pr_curve(c)
    keep: np.ndarray = (np.unique(np.linspace(0, len(t) - 1, min(points, len(t))).round().astype(int)) if len(t)
                        else np.zeros(0, int))
    return {"threshold": [round(float(x), 5) for x in t[keep]], "precision": [round(float(x), 4) for x in p[keep]],
            "recall": [round(float(x), 4) for x in r[keep]]}


def recall_curve(ranked: Ranked, gold: Mapping[str, set[str]], limit: int) -> list[float]:
    """Pair recall at every K from 1 to ``limit``."""
    found = np.zeros(limit)
    pairs = 0
    for q, matches in gold.items():
        if q not in ranked:
            continue
        pairs += len(matches)
        for rank, (rid, _) in enumerate(list(ranked[q])[:limit]):
            if rid in matches:
                found[rank] += 1
    return [round(float(x), 4) for x in np.cumsum(found) / max(pairs, 1)]
