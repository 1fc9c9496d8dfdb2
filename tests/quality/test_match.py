"""The match decision: threshold, precision/recall/F1 and curves, on hand-made rankings."""

from __future__ import annotations

import numpy as np
import pytest

from simstream.quality.match import best_threshold, candidates, decision, pr_curve, recall_curve


RANKED = {"a": [("x", 0.9), ("y", 0.5)], "b": [("z", 0.8), ("w", 0.7)], "c": [("v", 0.6), ("u", 0.2)]}
GOLD = {"a": {"x"}, "b": {"w", "q"}, "c": {"u"}}  # q is never retrieved: a miss for recall


def test_precision_recall_f1_by_hand() -> None:
    c = candidates(RANKED, GOLD, k=2)
    assert c.gold_pairs == 4 and len(c.scores) == 6 and int(c.labels.sum()) == 3
    d = decision(c, 0.7)  # calls x (true), z (false), w (true)
    assert (d["precision"], d["recall"], d["called"]) == (round(2 / 3, 4), 0.5, 3)
    assert d["f1"] == round(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 4)
    t, p, r = pr_curve(c)
    assert list(t) == [0.9, 0.8, 0.7, 0.6, 0.5, 0.2] and p[0] == 1.0 and r[-1] == 0.75


def test_best_threshold_maximises_f1() -> None:
    c = candidates(RANKED, GOLD, k=2)
    t = best_threshold(c)
    f1s = [decision(c, s)["f1"] for s in np.unique(c.scores)]
    assert decision(c, t)["f1"] == pytest.approx(max(f1s))


def test_recall_curve() -> None:
    assert recall_curve(RANKED, GOLD, 2) == [0.25, 0.75]
