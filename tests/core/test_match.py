"""The match decision: a logistic regression on what a list entry carries, the same number for
every reader, its config round trip and digest."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simstream.match import MatchModel, feature_names, pair_features

FIELDS = ("text", "mpn", "price")
WEIGHTS = {"text": 0.5, "mpn": 0.3, "price": 0.2}


def model(**over):
    doc = {"fields": list(FIELDS), "coef": [2.0, 3.0, 0.5, -0.2, 1.0, -0.1], "intercept": -1.5,
           "threshold": 0.6}
    return MatchModel.from_config({**doc, **over})


def by_hand(m: MatchModel, fields: dict[str, float], weights=WEIGHTS) -> float:
    """The documented rule written out: cosines (share / weight, 0 when a side lacks the field),
    missing flags; sigmoid of the linear form; 4 decimals."""
    cos = [fields[f] / weights[f] if f in fields else 0.0 for f in m.fields]
    missing = [0.0 if f in fields else 1.0 for f in m.fields]
    z = sum(c * x for c, x in zip(m.coef, cos + missing)) + m.intercept
    return round(1 / (1 + math.exp(-z)), 4)


def test_an_entry_probability_is_the_documented_rule():
    m = model()
    entries = [{"text": 0.45, "mpn": 0.3, "price": 0.19},  # same model number
               {"text": 0.45, "mpn": 0.0, "price": 0.19},  # both have one: they conflict
               {"text": 0.45, "price": 0.19},              # one side has none
               {}]
    got = m.of_entries(entries, WEIGHTS)
    assert got == [by_hand(m, e) for e in entries]
    assert got[0] > got[2] > got[1]  # agreement > unknown > conflict, with these coefficients
    assert all(0.0 <= p <= 1.0 for p in got)


def test_a_field_weighted_zero_reads_as_missing():
    m = model()
    zero = {**WEIGHTS, "mpn": 0.0}
    assert m.of_entries([{"text": 0.45, "price": 0.19}], zero) == m.of_entries([{"text": 0.45, "price": 0.19}], WEIGHTS)
    # the same cosines under another weighting (images off renormalises the rest): the same decision
    scaled = {f: w / 0.9 for f, w in WEIGHTS.items()}
    shares = {f: 0.5 * w for f, w in scaled.items()}
    assert m.of_entries([shares], scaled) == m.of_entries([{f: 0.5 * w for f, w in WEIGHTS.items()}], WEIGHTS)


def test_a_pair_gets_the_same_number_alone_or_with_others():
    rng = np.random.default_rng(3)
    m = model()
    x = pair_features(rng.uniform(-1, 1, (257, 3)), np.ones(3, bool), rng.random((257, 3)) > 0.3)
    together = m.probabilities(x)
    alone = np.concatenate([m.probabilities(x[i:i + 1]) for i in range(len(x))])
    assert np.array_equal(together, alone)


def test_features_name_their_columns():
    x = pair_features(np.array([[0.9, 0.1, 0.5]]), np.array([True, True, False]), np.array([[True, False, True]]))
    assert feature_names(FIELDS) == ["cos:text", "cos:mpn", "cos:price", "missing:text", "missing:mpn",
                                     "missing:price"]
    assert x.tolist() == [[0.9, 0.0, 0.0, 0.0, 1.0, 1.0]]


def test_config_round_trip_and_digest():
    m = model()
    again = MatchModel.from_config(m.to_config())
    assert again == m and again.digest == m.digest and len(m.digest) == 8
    assert model(intercept=-2.4).digest != m.digest


@pytest.mark.parametrize("over, message", [
    ({"coef": [1.0, 2.0]}, "needs 6 coefficients"),
    ({"threshold": 1.0}, "threshold"),
    ({"intercept": float("nan")}, "finite"),
])
def test_a_bad_match_block_is_refused(over, message):
    with pytest.raises(ValueError, match=message):
        model(**over)
    with pytest.raises(ValueError, match="needs fields"):
        MatchModel.from_config({"fields": ["text"]})
