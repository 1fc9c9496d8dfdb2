"""A learned second stage over the fused top-M, for the quality protocol (issue 25, item 2).

The fused score is a weighted sum of per-field cosines: it cannot say "same words, different model
number" or "prices ten times apart". A logistic regression over each (query, candidate) pair of the
fused top-``M`` reads those signals, fitted on *other* catalogs' labelled pairs only (leave one
dataset out); its probability is the pair's match probability, a threshold chosen on the same pairs
(best F1) the match decision, and either reorders the candidates (``SecondStage.rerank``).

Features of a pair (``pair_features``): each learned field's and channel's cosine, the fused score,
model numbers (``simstream.encoders.lexical.model_numbers`` of the title, or the mpn field) shared,
conflicting (both have some, none in common) or missing on a side, the Jaccard overlap of the
numbers in the titles (and whether a side has none), and |ln(price ratio)| (and whether a price is
missing). The logistic regression sees them standardised.

``kind="vector"``: the features the stream computes on every list entry from the two stored vectors
alone (``simstream.match.pair_features``: each field's cosine and whether a side lacks it); ``SecondStage.match_model`` freezes such a stage for a fusion config's ``"match"`` block.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from simstream.encoders.lexical import model_numbers, normalize_mpn
from simstream.match import MatchModel
from simstream.match import pair_features as vector_features
from simstream.quality.evaluate import top_k
from simstream.quality.fit_weights import Dataset
from simstream.records import ProductEvent

__all__ = ["CANDIDATES", "PairFacts", "facts_of", "pair_features", "SecondStage", "fit_second_stage", "match_scores",
           "best_threshold", "pr_curve"]

CANDIDATES = 50  # the fused top-M the second stage reorders
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


@dataclass(frozen=True)
class PairFacts:
    """What the features read of one product beyond its vectors."""

    models: frozenset[str]
    numbers: frozenset[str]
    price: float | None


_NO_FACTS = PairFacts(frozenset(), frozenset(), None)


def facts_of(event: ProductEvent) -> PairFacts:
    mpn = normalize_mpn(event.mpn)
    models = frozenset([mpn] if mpn else model_numbers(event.title))
    numbers = frozenset(n.replace(",", ".") for n in _NUMBER.findall((event.title or "").lower()))
    price = event.price if event.price is not None and event.price > 0 else None
    return PairFacts(models, numbers, price)


def pair_features(cosines: Sequence[float], fused: float, a: PairFacts, b: PairFacts) -> list[float]:
    """The feature row of a pair: ``cosines`` (one per learned field, in a fixed order), then the rest."""
    shared = bool(a.models & b.models)
    both_models = bool(a.models) and bool(b.models)
    union = a.numbers | b.numbers
    both_prices = a.price is not None and b.price is not None
    return [*cosines, fused,
            float(shared), float(both_models and not shared), float(not both_models),
            len(a.numbers & b.numbers) / len(union) if union else 0.0, float(not a.numbers or not b.numbers),
            abs(math.log(a.price / b.price)) if both_prices else 0.0,  # type: ignore[operator]
            float(not both_prices)]


@dataclass
class SecondStage:
    """A fitted second stage: the fields it reads (in order) and the standardised logistic regression."""

    fields: list[str]
    model: Any  # sklearn Pipeline(StandardScaler, LogisticRegression)
    candidates: int = CANDIDATES
    threshold: float = 0.5  # the match decision: best F1 on the pairs it was fitted on
    kind: str = "facts"  # "facts": the title's model numbers, numbers and the price too; "vector": the stream's

    @property
    def width(self) -> int:
        return (2 * len(self.fields) if self.kind == "vector"
                else len(self.fields) + len(pair_features([], 0.0, _NO_FACTS, _NO_FACTS)))

    def features(self, ds: Dataset, left: int, cand: np.ndarray, fused: np.ndarray) -> np.ndarray:
        if self.kind == "vector":
            cos = np.column_stack([ds.cosines(f, left, cand) for f in self.fields])
            owner = np.asarray([_has(ds, f, "left")[left] for f in self.fields], bool)
            has = np.column_stack([_has(ds, f, "right")[cand] for f in self.fields])
            return vector_features(cos, owner, has)
        facts_l = _facts(ds, "left")[left]
        facts_r = _facts(ds, "right")
        cos = np.column_stack([ds.cosines(f, left, cand) for f in self.fields]) if self.fields \
            else np.zeros((len(cand), 0))
        return np.array([pair_features(cos[n], float(fused[j]), facts_l, facts_r[j]) for n, j in enumerate(cand)])

    def probabilities(self, ds: Dataset, left: int, cand: np.ndarray, fused: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(self.features(ds, left, cand, fused))[:, 1])

    def decisions(self, ds: Dataset, weights: Mapping[str, float], golds: Sequence[Mapping[str, set[str]]]
                  ) -> tuple[np.ndarray, np.ndarray, int]:
        """Over every query of ``golds`` (merged): each top-``candidates`` pair's match probability,
        whether it is a gold pair, and the number of gold pairs (those outside the top-M included)."""
        x, labels, pairs = self.labelled_pairs(ds, weights, golds)
        return (np.asarray(self.model.predict_proba(x)[:, 1]) if len(x) else np.zeros(0)), labels, pairs

    def labelled_pairs(self, ds: Dataset, weights: Mapping[str, float], golds: Sequence[Mapping[str, set[str]]]
                       ) -> tuple[np.ndarray, np.ndarray, int]:
        """Every top-``candidates`` pair of the queries of ``golds`` (merged): its features, whether
        it is a gold pair, and the number of gold pairs (those outside the top-M included)."""
        queries, all_matches, scores = ds.labelled(golds, weights)
        xs, labels = [], []
        for n, (i, matches) in enumerate(zip(queries, all_matches)):
            cand = top_k(scores[n], self.candidates)
            cand = cand[np.isfinite(scores[n][cand])]  # never a masked twin
            xs.append(self.features(ds, i, cand, scores[n]))
            labels.append(np.isin(cand, matches))
        pairs = sum(len(m) for m in all_matches)
        return (np.concatenate(xs) if xs else np.zeros((0, self.width)),
                np.concatenate(labels) if labels else np.zeros(0, bool), pairs)

    def rerank(self, ds: Dataset, weights: Mapping[str, float], split: str, limit: int,
               order: str = "probability", head: int | None = None) -> dict[str, list[str]]:
        """Per query of ``split``'s gold: the fused top-``candidates`` reordered, then the fused ranking
        below them, ``limit`` ids in all. ``order`` "probability": all of them by match probability;
        "promote": the pairs the decision calls matches (probability at least ``threshold``) first, by
        probability, the others after them in the fused order (ties keep the fused order). ``head``:
        reorder only the top ``head`` (default ``candidates``; a published list of K: K)."""
        queries, _, scores = ds.labelled([ds.gold[split]], weights)
        out: dict[str, list[str]] = {}
        m = head or self.candidates
        for n, i in enumerate(queries):
            ranked = top_k(scores[n], max(limit, m))
            head_ids = ranked[:m]
            p = self.probabilities(ds, i, head_ids, scores[n])
            if order == "promote":
                keys = sorted(range(len(head_ids)), key=lambda k: (0, -p[k], k) if p[k] >= self.threshold else (1, 0.0, k))
            else:
                keys = sorted(range(len(head_ids)), key=lambda k: (-p[k], k))
            ids = [int(head_ids[k]) for k in keys] + [int(j) for j in ranked[m:]]
            out[ds.left.ids[i]] = [ds.right.ids[j] for j in ids[:limit]]
        return out

    def match_model(self) -> MatchModel:
        """This stage (``kind="vector"``) as the stream applies it: the standardisation folded into
        the coefficients, which then apply to the raw features."""
        if self.kind != "vector":
            raise ValueError("only a vector stage can run in the stream")
        scaler, lr = self.model[0], self.model[-1]
        coef = lr.coef_[0] / scaler.scale_
        intercept = float(lr.intercept_[0] - (coef * scaler.mean_).sum())
        return MatchModel(tuple(self.fields), tuple(round(float(c), 8) for c in coef), round(intercept, 8),
                          round(float(self.threshold), 4))


def _has(ds: Dataset, f: str, side: str) -> np.ndarray:
    """Which products of a side hold field ``f`` (a non-zero segment), computed once."""
    cache: dict[tuple[str, str], np.ndarray] = ds.__dict__.setdefault("_second_stage_has", {})
    if (f, side) not in cache:
        fv = (ds.left_fv if side == "left" else ds.right_fv).get(f)
        n = len(ds.left.ids if side == "left" else ds.right.ids)
        cache[f, side] = np.zeros(n, bool) if fv is None else np.asarray((fv != 0).any(axis=1))
    return cache[f, side]


def _facts(ds: Dataset, side: str) -> list[PairFacts]:
    """Each product's facts, computed once per dataset and side."""
    cache: dict[str, list[PairFacts]] = ds.__dict__.setdefault("_second_stage_facts", {})
    if side not in cache:
        table = ds.left if side == "left" else ds.right
        cache[side] = [facts_of(e) for e in table.events]
    return cache[side]


def fit_second_stage(datasets: Sequence[Dataset], weights: Mapping[str, float], fields: Sequence[str], *,
                     splits: Sequence[str] = ("train", "valid"), candidates: int = CANDIDATES,
                     c: float = 1.0, kind: str = "facts") -> SecondStage:
    """Fit on ``datasets``' labelled pairs of ``splits``: every query's fused top-``candidates``
    under ``weights``, labelled by the gold (a match outside the top-M teaches nothing here)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    stage = SecondStage(list(fields), None, candidates, kind=kind)
    seen = [stage.labelled_pairs(ds, weights, [ds.gold.get(split, {}) for split in splits]) for ds in datasets]
    x, y = np.concatenate([x for x, _, _ in seen]), np.concatenate([y for _, y, _ in seen])
    if y.all() or not y.any():
        raise ValueError("the second stage needs matches and non-matches among the candidates")
    stage.model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x, y)
    # the decision's threshold on the same pairs, their features computed once
    stage.threshold = best_threshold(np.asarray(stage.model.predict_proba(x)[:, 1]), y, sum(n for _, _, n in seen))
    return stage


def match_scores(probs: np.ndarray, labels: np.ndarray, gold_pairs: int, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of "a pair is a match when its probability reaches ``threshold``"
    over candidate pairs; recall counts every gold pair, those the candidates missed included."""
    predicted = probs >= threshold
    hits = int((predicted & labels).sum())
    precision = hits / int(predicted.sum()) if predicted.any() else 0.0
    recall = hits / gold_pairs if gold_pairs else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": round(float(threshold), 4), "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(f1, 4)}


def best_threshold(probs: np.ndarray, labels: np.ndarray, gold_pairs: int) -> float:
    """The probability threshold with the best F1 on these pairs (the lowest such, on a 0.01 grid)."""
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
    f1 = [match_scores(probs, labels, gold_pairs, float(t))["f1"] for t in grid]
    return float(grid[int(np.argmax(f1))])


def pr_curve(probs: np.ndarray, labels: np.ndarray, gold_pairs: int, points: int = 20) -> list[dict[str, float]]:
    """Precision and recall at ``points`` evenly spaced thresholds."""
    return [match_scores(probs, labels, gold_pairs, float(t)) for t in np.linspace(0.05, 0.95, points)]
