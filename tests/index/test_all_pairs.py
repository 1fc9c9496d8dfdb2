"""Every row's top list at once, each pair multiplied once (index/all_pairs.py)."""

from __future__ import annotations

import numpy as np
import pytest

from simstream.index import all_pairs
from simstream.index.all_pairs import AllPairs
from simstream.index.rows import StoredProduct
from simstream.index.side import SideIndex
from simstream.vector_codec import Segment

from simstream.metric import Metric

from tests.index.test_packed_scan import DIM, METRICS, SEGMENTS, brute_force, catalog, fill


def finished(scan: AllPairs) -> AllPairs:
    while not scan.done:
        scan.advance(pairs=3)
    return scan


def side_pass(side: SideIndex, used: int, limit: int, **kwargs: object) -> AllPairs:
    """An all-pairs pass of ``side`` with a chosen block size (as ``SideIndex.all_pairs`` makes it)."""
    offsets = side._offsets[:used].copy() if side.metric.has_offsets else None
    scan = AllPairs(side._rows, side._live, used, limit, started_ms=0, offsets=offsets, **kwargs)  # type: ignore[arg-type]
    side._passes.add(scan)
    return scan


def scanned_lists(side: SideIndex, scan: AllPairs, x: np.ndarray, ids: list[str], live: np.ndarray,
                  limit: int) -> list[list[str]]:
    rows = [i for i in range(len(x)) if live[i]]
    got = side.search(x[rows], limit, ids=[ids[i] for i in rows], scan=scan)
    return [[pid for pid, _ in hits] for hits in got]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block", [97, 2_048])
def test_every_row_equals_brute_force_with_ties_deletes_and_block_edges(block: int, metric: Metric) -> None:
    x = catalog(1_300, seed=5, duplicates=30, missing=True)
    rng = np.random.default_rng(6)
    ids = [f"p{v:05d}" for v in rng.permutation(len(x))]
    side = fill(x, ids, capacity=2_048, metric=metric)
    gone = rng.choice(len(x) - 30, 150, replace=False)
    side.delete(ids[i] for i in gone)
    live = np.ones(len(x), bool)
    live[gone] = False
    limit = 21
    scan = finished(side_pass(side, len(x), limit, block=block))
    rows = np.flatnonzero(live)
    held = [c for r in rows if (c := scan.candidates(int(r))) is not None]
    # a query scoring the 31 identical rows (row 0 and its twins) equally at its limit-th place
    # ties past keep and is searched instead: a few
    assert 0.9 * len(rows) < len(held) < len(rows)
    assert np.mean([len(c) for c in held]) < scan.keep
    assert scanned_lists(side, scan, x, ids, live, limit) == brute_force(x, ids, live, x[rows], limit, metric)


def test_ties_past_keep_are_searched_instead() -> None:
    """60 identical rows: each twin's limit-th and keep-th scores are equal, so the kept rows
    cannot prove they hold every row of its top list; those rows get no candidates and the
    search answers them, still equal to the brute force."""
    x = catalog(400, seed=7, duplicates=60)
    ids = [f"p{i:04d}" for i in range(len(x))]
    side = fill(x, ids)
    live = np.ones(len(x), bool)
    scan = finished(side.all_pairs(10))
    assert scan.keep == 26
    twins = [0, *range(len(x) - 60, len(x))]
    assert all(scan.candidates(r) is None for r in twins)
    assert scan.candidates(1) is not None
    assert scanned_lists(side, scan, x, ids, live, 10) == brute_force(x, ids, live, x, 10)


def test_a_near_tie_within_rounding_goes_to_the_smaller_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """z scores 0.5000004 with q and a 0.5000001: both rank as 0.500000, so a (the smaller id)
    is q's second; the candidates must reach below the best scan score by the window. Fails with
    a zero window."""
    segments = [Segment("all", 0, 4, "f32")]
    x = np.array([[1, 0, 0, 0], [0.5000004, 0.2, 0, 0], [0.5000001, 0, 0.3, 0], [0.1, 0, 0, 0.9]], np.float32)
    ids = ["q", "z", "a", "m"]
    side = SideIndex(4, capacity=8, segments=segments)
    side.put([StoredProduct(pid, x[i], 1, {}, "m", 1, 2) for i, pid in enumerate(ids)])
    scan = finished(side.all_pairs(2))
    assert [pid for pid, _ in side.search(x[:1], 2, ids=["q"], scan=scan)[0]] == ["q", "a"]
    monkeypatch.setattr(all_pairs, "window", lambda *a, **k: 0.0)
    assert [pid for pid, _ in side.search(x[:1], 2, ids=["q"], scan=scan)[0]] == ["q", "z"]


@pytest.mark.parametrize("metric", METRICS)
def test_loose_rows_and_decoded_products(metric: Metric) -> None:
    x = catalog(500, seed=8, missing=True)
    x[3, 70] = 0.25  # outside every segment: held loose
    x[9, :24] += np.float32(1e-4)  # off the f16 grid
    ids = [f"p{i:04d}" for i in range(len(x))]
    live = np.ones(len(x), bool)
    want = brute_force(x, ids, live, x, 15, metric)
    for resident in (False, True):  # packed, or decoded on a device (the CPU here) as on a GPU
        side = fill(x, ids, resident=resident, metric=metric)
        assert side.loose_rows == 2
        scan = finished(side_pass(side, len(x), 15, block=128, resident=side._resident))
        assert scan.decoded == resident
        assert scan.candidates(3) is not None and scan.candidates(9) is not None
        assert scanned_lists(side, scan, x, ids, live, 15) == want


def test_rows_written_during_the_pass_take_their_queries_to_a_search() -> None:
    x = catalog(600, seed=9)
    ids = [f"p{i:04d}" for i in range(len(x))]
    side = fill(x, ids)
    scan = side.all_pairs(12)
    scan.advance(pairs=1)
    # row 5 rewritten, row 6 deleted mid-pass: their own lists and every list holding them as a
    # candidate are searched
    y = catalog(600, seed=10)
    side.put([StoredProduct(ids[5], y[5], 2, {}, "m", 1, 3)])
    side.delete([ids[6]])
    finished(scan)
    assert scan.candidates(5) is None and scan.candidates(6) is None
    holders = [r for r in range(len(x)) if r not in (5, 6) and scan.candidates(r) is None]
    assert holders  # some lists had row 5 or 6 among their candidates
    x[5] = y[5]
    live = np.ones(len(x), bool)
    live[6] = False
    got, want = scanned_lists(side, scan, x, ids, live, 12), brute_force(x, ids, live, x[live], 12)
    # A list differs only where the rewritten product now enters it without having been a
    # candidate: written after the pass began, it is what the refresh's re-check looks for.
    differ = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert all(ids[5] in want[i] and ids[5] not in got[i] for i in differ)
    assert len(differ) < 10


def test_an_unfinished_pass_or_another_vector_is_searched() -> None:
    x = catalog(300, seed=11)
    ids = [f"p{i:04d}" for i in range(len(x))]
    side = fill(x, ids)
    live = np.ones(len(x), bool)
    scan = side.all_pairs(8)
    assert scan.candidates(0) is None  # nothing multiplied yet
    assert scanned_lists(side, scan, x, ids, live, 8) == brute_force(x, ids, live, x, 8)
    finished(scan)
    other = catalog(300, seed=12)[:4]  # queries that are not their products' vectors
    got = side.search(other, 8, ids=ids[:4], scan=scan)
    assert [[pid for pid, _ in h] for h in got] == brute_force(x, ids, live, other, 8)


def test_memory_and_shape_of_the_default_keep() -> None:
    side = SideIndex(DIM, capacity=64, segments=SEGMENTS)
    scan = side.all_pairs(21)
    assert scan.keep == 42 and scan.done  # an empty index: nothing to multiply


@pytest.mark.parametrize("dim", [7, 64, 1952, 3232, 4099])
def test_the_batched_rescoring_is_the_oracles_dot_product_bit_for_bit(dim: int) -> None:
    """``SideIndex._rescored`` scores a list's candidates with one ``np.vecdot``: numpy's float32
    dot once per row, so each score must equal the oracle's ``float(row @ query)`` exactly (a
    matrix-vector product sums in another order and does not: the check would catch a numpy
    whose vecdot did that)."""
    rng = np.random.default_rng(dim)
    rows = rng.standard_normal((64, dim)).astype(np.float32)
    query = rng.standard_normal(dim).astype(np.float32)
    one_by_one = [float(row @ query) for row in rows]
    assert np.vecdot(rows, query).tolist() == one_by_one
    assert np.vecdot(rows[::3], query).tolist() == one_by_one[::3]
