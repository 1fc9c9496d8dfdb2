"""The match decision on a list entry: how likely the neighbour is the *same* product (issue 25).

The fused score ranks; it cannot say "same words, different model number" or "prices ten times
apart". A logistic regression over what a list entry already knows reads those signals: for each
field, its cosine between the two products and whether either product lacks it (a model-number
cosine of 0 with both present is a conflict, with one missing merely unknown). (The fused score
would add nothing: it is a weighted sum of the same cosines.) All of it is in the list entry itself
(its per-field contributions ``w * cos``, keyed by the fields both products hold), so the worker, serve, the exactness oracle and any reader compute
the same number, from the catalog alone (no title or price column to read back).

The coefficients are fitted leave-one-dataset-out on labelled pairs of other catalogs
(``simstream.quality.second_stage``) and frozen in the fusion config (``"match"``); their digest is
part of the model tag, so a different match model is a different model. ``threshold`` is the
decision (best F1 on the pairs it was fitted on). Probabilities are rounded to
``PROBABILITY_DECIMALS``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

__all__ = ["PROBABILITY_DECIMALS", "MatchModel", "pair_features", "feature_names"]

PROBABILITY_DECIMALS = 4


def feature_names(fields: Sequence[str]) -> list[str]:
    """The columns of ``pair_features``: each field's cosine, then each field's "a side lacks it"."""
    return [f"cos:{f}" for f in fields] + [f"missing:{f}" for f in fields]


def pair_features(cosines: np.ndarray, owner_has: np.ndarray, has: np.ndarray) -> np.ndarray:
    """One row per pair of an owner with its neighbours. ``cosines`` [n, F]: each field's cosine
    (any value where a side lacks the field: it reads as 0); ``owner_has`` [F] and ``has`` [n, F]:
    which fields each product holds. No fusion weight enters: a decision holds for any weighting."""
    both = np.asarray(owner_has, bool)[None, :] & np.asarray(has, bool)
    cos = np.where(both, np.asarray(cosines, np.float64), 0.0)
    return np.hstack([cos, (~both).astype(np.float64)])


@dataclass(frozen=True)
class MatchModel:
    """A fitted match decision: logistic regression on ``pair_features`` of ``fields`` (the
    coefficients apply to the raw features: standardisation folded in)."""

    fields: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float

    def __post_init__(self) -> None:
        if len(self.coef) != 2 * len(self.fields):
            raise ValueError(f"a match model over {len(self.fields)} fields needs {2 * len(self.fields)} "
                             f"coefficients, got {len(self.coef)}")
        if not all(math.isfinite(c) for c in (*self.coef, self.intercept, self.threshold)):
            raise ValueError("a match model's coefficients must be finite")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"a match threshold is a probability in (0, 1), got {self.threshold}")

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Each row's match probability. The sum runs along each row in one fixed order, so a pair
        gets the same number however many rows come with it."""
        z = (np.asarray(features, np.float64) * np.asarray(self.coef, np.float64)).sum(axis=1) + self.intercept
        return np.round(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))), PROBABILITY_DECIMALS)

    def of_entries(self, shares: Sequence[Mapping[str, float]], weights: Mapping[str, float]) -> list[float]:
        """Probabilities of list entries from what an entry carries: its per-field contributions
        (``w * cos``, keyed by the fields *both* products hold: a missing key means a side lacks the
        field); ``weights``: the fusion weights that made them (a field weighted 0 reads as missing)."""
        if not len(shares):
            return []
        w = np.asarray([weights.get(f, 0.0) for f in self.fields], np.float64)
        cos = np.asarray([[s.get(f, 0.0) for f in self.fields] for s in shares], np.float64)
        cos = np.divide(cos, w, out=np.zeros_like(cos), where=w > 0)
        both = np.asarray([[f in s for f in self.fields] for s in shares], bool) & (w > 0)
        return self.probabilities(pair_features(cos, np.ones(len(self.fields), bool), both)).tolist()

    def to_config(self) -> dict[str, Any]:
        return {"fields": list(self.fields), "features": feature_names(self.fields), "coef": list(self.coef),
                "intercept": self.intercept, "threshold": self.threshold}

    @classmethod
    def from_config(cls, doc: Mapping[str, Any]) -> "MatchModel":
        """The fusion config's ``"match"`` block (``features`` there is only for readers)."""
        try:
            return cls(tuple(str(f) for f in doc["fields"]), tuple(float(c) for c in doc["coef"]),
                       float(doc["intercept"]), float(doc["threshold"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a match block needs fields, coef, intercept and threshold: {exc}") from None

    @property
    def digest(self) -> str:
        """8 hex digits of the coefficients: the model tag's ``-m<digest>``."""
        return hashlib.blake2b(orjson.dumps(self.to_config()), digest_size=4).hexdigest()
