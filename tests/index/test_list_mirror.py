"""The list mirror answers its three questions exactly as a scan of its heads would, through any
sequence of records, re-records, tombstone markers and purges (hypothesis drives the sequences)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from simstream.index.list_mirror import ListMirror
from simstream.index.rows import TOMBSTONE_BOUNDARY, ListHead

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
