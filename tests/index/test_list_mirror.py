"""The list mirror answers its three questions exactly as a scan of its heads would, through any
sequence of records, re-records, tombstone markers and purges (hypothesis drives the sequences)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simstream.index.list_mirror import ListMirror
from simstream.index.rows import TOMBSTONE_BOUNDARY, HeadFacts, ListHead
from simstream.limits import LIST_CAPACITY, LIST_FACTS_BYTES

IDS = [f"p{i}" for i in range(12)]
# NaN: older workers recorded it for products with an extreme price; it never satisfies <= x
BOUNDARIES = st.sampled_from([-TOMBSTONE_BOUNDARY, -0.5, 0.0, 0.1, 0.1, 0.25, 0.7, 0.9, math.nan])
HEAD = st.builds(
    lambda owner, members, boundary, tombstone, at: ListHead(
        owner, () if tombstone else tuple(m for m in members if m != owner),
        TOMBSTONE_BOUNDARY if tombstone else boundary, at),
    st.sampled_from(IDS), st.lists(st.sampled_from(IDS), max_size=5, unique=True), BOUNDARIES,
    st.booleans(), st.integers(0, 10))
STEP = st.one_of(st.tuples(st.just("put"), st.lists(HEAD, max_size=4)), st.tuples(st.just("purge"), st.integers(0, 11)))


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal dicts, NaN equal to NaN."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def scan(heads: dict[str, ListHead], score: float) -> dict[str, float]:
    return {p: h.boundary for p, h in heads.items() if not h.is_tombstone and h.boundary <= score}


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=25), st.sampled_from([-1e39, -0.5, 0.0, 0.1, 0.3, 1.0]))
def test_the_mirror_equals_a_scan_of_its_heads(steps, score) -> None:  # noqa: ANN001
    mirror, heads = ListMirror(), {}
    for kind, arg in steps:
        if kind == "put":
            mirror.put(arg)
            heads.update({h.product_id: h for h in arg})
        else:
            mirror.remove_markers_older_than(arg)
            heads = {p: h for p, h in heads.items() if not (h.is_tombstone and h.updated_at < arg)}
        assert mirror.boundaries_at_most(score) == scan(heads, score)
        assert same(mirror.boundaries(IDS), {p: h.boundary for p, h in heads.items() if not h.is_tombstone})
        assert mirror.listers_of(IDS[:3]) == {p for p, h in heads.items() if set(h.neighbour_ids) & set(IDS[:3])}
        assert len(mirror) == len(heads)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**62),
       st.lists(st.floats(width=32, allow_nan=False), max_size=LIST_CAPACITY))
def test_head_facts_round_trip_bit_for_bit_within_the_field(digest, version, updated_at, scores) -> None:  # noqa: ANN001
    facts = HeadFacts(digest, (version, updated_at), np.asarray(scores, np.float32).tobytes())
    text = facts.to_field()
    assert len(text) <= LIST_FACTS_BYTES and text.isascii()
    assert HeadFacts.from_field(text) == facts


def test_unreadable_facts_are_no_facts() -> None:
    good = HeadFacts(b"d" * 16, (1, 2), np.ones(3, np.float32).tobytes()).to_field()
    for text in ("", None, "not base64!", good[:8], HeadFacts(b"d" * 16, (1, 2), b"abc").to_field()):
        assert HeadFacts.from_field(text) is None


def test_facts_attach_only_to_the_head_they_were_recorded_with() -> None:
    mirror = ListMirror()
    head = ListHead("a", ("b", "c"), 0.5, 10, 9)
    facts = HeadFacts(b"d" * 16, (3, 7), np.asarray([0.9, 0.8], np.float32).tobytes())
    mirror.put([head])
    mirror.keep_known({"a": (ListHead("a", ("b", "c"), 0.5, 11, 9), facts)})  # another record
    assert not mirror.heads(["a"])["a"].scores and mirror.digests(["a"]) == {}
    mirror.keep_known({"a": (head, facts)})
    held = mirror.heads(["a"])["a"]
    assert (held.member_scores(), held.owner, mirror.digests(["a"])) == ([np.float32(0.9), np.float32(0.8)], (3, 7),
                                                                         {"a": b"d" * 16})
    wrong_length = HeadFacts(b"e" * 16, (3, 7), np.ones(3, np.float32).tobytes())
    mirror.put([head], {"a": wrong_length})  # scores for other members: facts of another list
    assert not mirror.heads(["a"])["a"].scores and mirror.digests(["a"]) == {}
