"""The packed scan: exact top-k by the ranking rule without decoding the matrix (index/packed_scan.py)."""

from __future__ import annotations

import numpy as np
import torch
import pytest

from simstream.index import packed_scan
from simstream.index.exact import rank_key
from simstream.index.rows import StoredProduct
from simstream.index.side import SideIndex
from simstream.metric import IP, Metric
from simstream.vector_codec import Segment, canonical_rows

SEGMENTS = [Segment("text", 0, 24, "f16"), Segment("lex", 24, 56, "i8"), Segment("brand", 56, 64, "i8"),
            Segment("price", 64, 68, "f16")]
DIM = 72  # columns 68..71 belong to no segment (zero on the grid)
L2 = Metric("l2")
METRICS = [pytest.param(IP, id="ip"), pytest.param(L2, id="l2")]


def catalog(n: int, seed: int, *, duplicates: int = 0, missing: bool = False) -> np.ndarray:
    """Unit-norm rows on the grid, with blocks of identical rows (exact ties) and coarse values
    (many near ties), like hashed n-gram counts and one-hot slots; ``missing``: some rows lack
    the brand or the price segment (shorter rows, as products with fields missing: what makes
    ``l2`` rank differently from ``ip``)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, DIM), np.float32)
    x[:, :24] = rng.standard_normal((n, 24))
    x[:, 24:56] = rng.integers(0, 3, (n, 32))
    x[np.arange(n), 56 + rng.integers(0, 8, n)] = 1.0
    x[:, 64:68] = rng.standard_normal((n, 4))
    for s in SEGMENTS:
        seg = x[:, s.start:s.stop]
        seg /= np.maximum(np.linalg.norm(seg, axis=1, keepdims=True), 1e-9)
        seg *= 0.5
    if missing:
        x[rng.random(n) < 0.3, 56:64] = 0
        x[rng.random(n) < 0.3, 64:68] = 0
    if duplicates:
        x[n - duplicates:] = x[0]
    canonical_rows(x, SEGMENTS)
    return x


def brute_force(x: np.ndarray, ids: list[str], live: np.ndarray, queries: np.ndarray, k: int,
                metric: Metric = IP) -> list[list[str]]:
    """The definition: the metric's scores one by one (float32 dot products, plus the offsets
    under ``l2``), ranked by rank_key over every live row."""
    out = []
    for q in queries:
        scored = sorted((rank_key(metric.pair(x[j], q), ids[j]) for j in np.flatnonzero(live)))
        out.append([pid for _, pid in scored[:k]])
    return out


def fill(x: np.ndarray, ids: list[str], capacity: int = 1024, resident: bool = False, metric: Metric = IP) -> SideIndex:
    """A side index of ``x``; ``resident``: its rows also decoded on a device (the CPU here), as on a GPU."""
    side = SideIndex(DIM, capacity=capacity, segments=SEGMENTS, resident=resident, metric=metric)
    side.put([StoredProduct(ids[i], x[i], 1, {}, "m", 1, 2) for i in range(len(x))])
    return side


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_rows,resident", [(97, False), (8_192, False), (97, True)])
def test_equals_brute_force_with_ties_deletes_and_block_edges(monkeypatch: pytest.MonkeyPatch, block_rows: int,
                                                              resident: bool, metric: Metric) -> None:
    """``resident``: the rows decoded on a device (the CPU here) and multiplied in float32, as on a
    GPU, kept in step with the deletes. Under both metrics, over rows of different lengths."""
    monkeypatch.setattr(packed_scan, "BLOCK_ROWS", block_rows)
    monkeypatch.setattr(packed_scan, "DEVICE_CHUNK_ROWS", block_rows)
    x = catalog(1_500, seed=3, duplicates=40, missing=True)
    rng = np.random.default_rng(4)
    ids = [f"p{v:05d}" for v in rng.permutation(len(x))]  # id order unrelated to row order
    side = fill(x, ids, resident=resident, metric=metric)
    gone = rng.choice(len(x), 200, replace=False)
    side.delete(ids[i] for i in gone)
    live = np.ones(len(x), bool)
    live[gone] = False
    queries = np.concatenate([x[:30], x[-5:]])  # the duplicates' twin among them
    for k in (1, 10, 70):
        got = side.search_scores(queries, k)
        assert [[pid for pid, _ in row] for row in got] == brute_force(x, ids, live, queries, k, metric)
        for q, row in zip(queries, got):
            assert all(sc == metric.pair(x[ids.index(pid)], q) for pid, sc in row)  # the oracle's own numbers
    if metric is L2:  # the metric changes the answer on these rows
        assert brute_force(x, ids, live, queries, 10, L2) != brute_force(x, ids, live, queries, 10)


def test_a_near_tie_within_rounding_goes_to_the_smaller_id() -> None:
    """0.5000004 and 0.5000001 both rank as 0.500000, so the id decides: the scan must keep the
    lower-scored row as a candidate (the window), or it would publish the wrong one."""
    segments = [Segment("all", 0, 4, "f32")]
    x = np.array([[0.5000004, 0, 0, 0], [0.5000001, 0, 0, 0], [0.1, 0, 0, 0]], np.float32)
    side = SideIndex(4, capacity=8, segments=segments)
    side.put([StoredProduct(pid, x[i], 1, {}, "m", 1, 2) for i, pid in enumerate(["z", "a", "m"])])
    assert [pid for pid, _ in side.search_scores(np.array([[1, 0, 0, 0]], np.float32), 1)[0]] == ["a"]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("resident", [False, True])
def test_loose_rows_and_queries_off_the_grid(resident: bool, metric: Metric) -> None:
    x = catalog(600, seed=5, missing=True)
    ids = [f"q{i:04d}" for i in range(len(x))]
    odd = x[7].copy()
    odd[30] += 1e-3  # not on the i8 grid: kept loose, scored in float32
    odd[70] = 0.01  # outside every segment
    x[7] = odd
    side = fill(x, ids, resident=resident, metric=metric)
    assert side.loose_rows == 1
    queries = np.concatenate([x[:5], x[7:8], np.random.default_rng(6).standard_normal((3, DIM)).astype(np.float32)])
    got = side.search_scores(queries, 15)
    assert [[pid for pid, _ in row] for row in got] == brute_force(x, ids, np.ones(len(x), bool), queries, 15, metric)


def test_fewer_live_rows_than_the_limit() -> None:
    x = catalog(12, seed=7)
    ids = [f"r{i}" for i in range(12)]
    side = fill(x, ids, capacity=16)
    side.delete(ids[:4])
    live = np.array([False] * 4 + [True] * 8)
    got = side.search_scores(x[:3], 50)
    assert [[pid for pid, _ in row] for row in got] == brute_force(x, ids, live, x[:3], 50)
    assert all(len(row) == 8 for row in got)


def test_the_window_covers_the_proven_bound() -> None:
    w = packed_scan.window(3_232, 416, 7, 1.0, 1.0)
    assert 2 * packed_scan.gamma(3_232) < w < 1e-3  # wide enough for the oracle's error, still narrow
    assert packed_scan.window(3_232, 416, 7, 0.5, 1.0) < w


def reach_brute_force(x: np.ndarray, ids: list[str], live: np.ndarray, bars: np.ndarray, q: np.ndarray,
                      margin: float, metric: Metric = IP) -> set[str]:
    """The definition: rows whose score with ``q`` is at least their bar - margin."""
    return {ids[j] for j in np.flatnonzero(live) if metric.pair(x[j], q) >= float(bars[j]) - margin}


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_rows", [97, 8_192])
def test_reaching_holds_every_row_whose_bar_the_query_reaches(monkeypatch: pytest.MonkeyPatch, block_rows: int,
                                                              metric: Metric) -> None:
    """Bars set exactly at the oracle's score of a query (the edge), -inf (a list holding
    everyone), +inf (no list) and random; deleted rows never reached; extra rows only within the
    proven error bound."""
    monkeypatch.setattr(packed_scan, "BLOCK_ROWS", block_rows)
    monkeypatch.setattr(packed_scan, "DEVICE_CHUNK_ROWS", block_rows)
    x = catalog(1_200, seed=11, duplicates=20, missing=True)
    rng = np.random.default_rng(12)
    ids = [f"b{v:05d}" for v in rng.permutation(len(x))]
    side = fill(x, ids, metric=metric)
    queries = np.concatenate([x[:6], x[-2:], rng.standard_normal((2, DIM)).astype(np.float32)])
    bars = rng.uniform(0.2, 1.0, len(x)).astype(np.float32) - (1.0 if metric is L2 else 0.0)
    for q in queries[:4]:  # at the edge: exactly the oracle's score for a query, for many rows
        edge = rng.choice(len(x), 150, replace=False)
        bars[edge] = [np.float32(metric.pair(x[j], q)) for j in edge]
    bars[rng.choice(len(x), 5, replace=False)] = -np.inf
    bars[rng.choice(len(x), 300, replace=False)] = np.inf
    side.set_bars({ids[j]: float(bars[j]) for j in range(len(x))})
    gone = rng.choice(len(x), 100, replace=False)
    side.delete(ids[j] for j in gone)
    live = np.ones(len(x), bool)
    live[gone] = False
    bars[gone] = np.inf  # a deleted row has no bar
    margin = 0.0  # the bound alone must cover the scan's rounding at the edge
    rows, reaching = side.search_reaching(queries, 20, margin)
    assert [[pid for pid, _ in r] for r in rows] == brute_force(x, ids, live, queries, 20, metric)
    for q, got in zip(queries, reaching):
        must = reach_brute_force(x, ids, live, bars, q, margin, metric)
        assert must <= got
        assert got <= reach_brute_force(x, ids, live, bars, q, margin + 1e-3, metric)  # within the bound, no more
    assert any(reaching)


@pytest.mark.parametrize("metric", METRICS)
def test_rows_written_since_that_reach_a_bar(monkeypatch: pytest.MonkeyPatch, metric: Metric) -> None:
    """The merge's pre-filter: per query, the products written since its cut whose oracle score
    reaches its bar (edge bars at the exact score, -inf: all of them, a loose row), and no row
    written before the cut, with the vectors bit-identical."""
    monkeypatch.setattr(packed_scan, "BLOCK_ROWS", 61)
    x = catalog(900, seed=13, missing=True)
    x[5, 30] += 1e-3  # off the grid: a loose row
    rng = np.random.default_rng(14)
    ids = [f"w{i:04d}" for i in range(len(x))]
    side = SideIndex(DIM, capacity=1024, segments=SEGMENTS, metric=metric)
    stamps = rng.integers(0, 1_000, len(x))
    side.put([StoredProduct(ids[i], x[i], 1, {}, "m", 1, int(stamps[i])) for i in range(len(x))])
    side.delete(ids[:50])
    queries = np.concatenate([x[100:104], x[5:6], x[200:260]])
    cuts = [500, 0, 900, 999, 200] + [0] * 60
    edge = rng.choice(np.arange(50, len(x)), 60)  # bars exactly at a row's oracle score
    shift = -1.0 if metric is L2 else 0.0
    bars = [0.1 + shift, 0.3 + shift, -np.inf, 0.9 + shift, 0.2 + shift] + [
        float(np.float32(metric.pair(x[j], q))) for j, q in zip(edge, x[200:260])]
    got = side.reaching_written_since(queries, cuts, bars)
    for q, cut, bar, row in zip(queries, cuts, bars, got):
        ids_got = {pid for pid, _ in row}
        want = {ids[j] for j in range(50, len(x)) if stamps[j] >= cut and metric.pair(x[j], q) >= bar}
        near = {ids[j] for j in range(50, len(x)) if stamps[j] >= cut and metric.pair(x[j], q) >= bar - 1e-3}
        assert want <= ids_got <= near
        assert all(np.array_equal(vec, x[ids.index(pid)]) for pid, vec in row)
    assert {pid for pid, _ in got[2]} == {ids[j] for j in range(50, len(x)) if stamps[j] >= 900}
    assert all(ids[j] in {pid for pid, _ in row} for j, row in zip(edge, got[5:]))


def test_resident_rows_follow_every_write_and_growth() -> None:
    """The decoded rows on the device are the packed rows' own values after inserts that grow the
    matrix, replacements and deletes (a scan there must score what the oracle reads)."""
    x = catalog(700, seed=12)
    ids = [f"d{i:04d}" for i in range(len(x))]
    side = fill(x[:300], ids[:300], capacity=64, resident=True)  # grows several times
    side.put([StoredProduct(ids[i], x[i], 1, {}, "m", 1, 2) for i in range(300, 700)])
    side.put([StoredProduct(ids[i], x[699 - i], 2, {}, "m", 1, 3) for i in range(0, 50)])  # replaced
    side.delete(ids[100:120])
    assert side._resident is not None
    n = len(side._ids)
    held = side._resident.data[:n].numpy()
    live = side._live[:n]
    assert np.array_equal(held[live], side._rows.read(np.flatnonzero(live)))
    assert not held[~live].any()
    assert SideIndex(DIM, segments=SEGMENTS)._resident is None  # on the CPU, by default, none


def test_a_catalog_that_outgrows_the_device_is_scanned_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """No room left on the GPU when the matrix grows: the side index drops its resident rows and
    scans the packed rows instead; the answers stay exact."""
    from simstream.index.device_rows import DeviceRows

    def full(self: DeviceRows, capacity: int) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    x = catalog(400, seed=14)
    ids = [f"o{i:04d}" for i in range(len(x))]
    side = fill(x[:50], ids[:50], capacity=64, resident=True)
    monkeypatch.setattr(DeviceRows, "grow", full)
    side.put([StoredProduct(ids[i], x[i], 1, {}, "m", 1, 2) for i in range(50, 400)])
    assert side._resident is None
    got = side.search_scores(x[:10], 12)
    assert [[pid for pid, _ in row] for row in got] == brute_force(x, ids, np.ones(len(x), bool), x[:10], 12)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_rows,subset_rows,resident,subset_cost", [
    (97, 0, False, 3), (97, 100_000, False, 0), (97, 100_000, False, 3), (8_192, 300, True, 0)])
def test_filtered_search_equals_brute_force_over_the_allowed_rows(monkeypatch: pytest.MonkeyPatch, block_rows: int,
                                                                   subset_rows: int, resident: bool, subset_cost: int,
                                                                   metric: Metric) -> None:
    """Per-query masks (serve's filters): the full pass with masks (subset_rows 0), the subset scan
    of the allowed rows alone (every mask small enough; queries with the same rows in one scan),
    and both in one call; or the small masks' queries joining the full pass (subset_cost 3: it runs
    anyway); re-weighted queries (off the i8 grid), rows held loose and an empty mask included."""
    from simstream.index import side as side_module

    monkeypatch.setattr(packed_scan, "BLOCK_ROWS", block_rows)
    monkeypatch.setattr(packed_scan, "DEVICE_CHUNK_ROWS", block_rows)
    monkeypatch.setattr(side_module, "SUBSET_ROWS", subset_rows)
    monkeypatch.setattr(side_module, "SUBSET_COST", subset_cost)
    monkeypatch.setattr(side_module, "SUBSET_SHARE", 1)
    x = catalog(1_500, seed=5, duplicates=30, missing=True)
    loose = [3, 700, 1_200]
    x[loose, 68:72] = 0.5  # columns outside every segment: held loose (float32), absent from the packed values
    rng = np.random.default_rng(6)
    ids = [f"p{v:05d}" for v in rng.permutation(len(x))]
    side = fill(x, ids, resident=resident, metric=metric)
    assert resident or side.loose_rows == 3
    gone = rng.choice(len(x), 150, replace=False)
    side.delete(ids[i] for i in gone)
    live = np.ones(len(x), bool)
    live[gone] = False
    rows = side.rows_of(ids)
    queries = np.concatenate([x[:6], x[-2:]]).copy()
    queries[1, 24:56] *= 1.7  # a query-time weight: the i8 segment off its grid
    queries[2, :24] = 0  # a field weighted to zero
    queries[0, 68:72] = 0.5  # ranks the loose rows first, through columns only their float32 copy holds
    masks: list[np.ndarray | None] = []
    for j in range(len(queries)):
        keep = rng.random(len(x)) < (0.05, 0.5, 0.9, 0.2, 0.01, 0.6, 0.3, 0.0)[j]
        mask = np.zeros(side.used, bool)
        for i in np.flatnonzero(keep):
            if ids[i] in rows:
                mask[rows[ids[i]]] = True
        mask[[rows[ids[i]] for i in loose]] = True  # every query may return the loose rows
        masks.append(mask)
    masks[3] = None  # no filter
    # queries whose filters leave the same rows as others' (one subset scan for them together),
    # one of them off the grid
    queries = np.concatenate([queries, x[[10, 11, 12]]])
    queries[-1, 24:56] *= 0.6
    masks += [masks[0].copy(), masks[4].copy(), masks[0].copy()]  # type: ignore[union-attr]
    for k in (1, 12, 60):
        got = side.search_filtered(queries, k, masks)
        for j, (q, row) in enumerate(zip(queries, got)):
            allowed = live.copy() if masks[j] is None else live & np.array(
                [bool(masks[j][rows[pid]]) if pid in rows else False for pid in ids])  # type: ignore[index]
            assert [pid for pid, _ in row] == brute_force(x, ids, allowed, q[None, :], k, metric)[0], (j, k)
            assert all(sc == metric.pair(x[ids.index(pid)], q) for pid, sc in row)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block_rows", [97, 8_192])
def test_queries_off_the_grid_are_exact_with_int8_digits(monkeypatch: pytest.MonkeyPatch, block_rows: int,
                                                         metric: Metric) -> None:
    """Queries off the i8 grid (serve: means of products, query-time weights), multiplied as int8
    digits with their remainder in the window: the same top-k as a float32 brute force, with exact
    ties (duplicated rows) and near ties; the digits' remainder is tiny and accounted for."""
    monkeypatch.setattr(packed_scan, "BLOCK_ROWS", block_rows)
    monkeypatch.setattr(packed_scan, "DEVICE_CHUNK_ROWS", block_rows)
    x = catalog(1_500, seed=11, duplicates=40, missing=True)
    rng = np.random.default_rng(12)
    ids = [f"p{v:05d}" for v in rng.permutation(len(x))]
    side = fill(x, ids, metric=metric)
    live = np.ones(len(x), bool)
    means = np.stack([(x[a] + x[b] + x[c]) / 3 - 0.5 * x[d] for a, b, c, d in rng.integers(0, len(x), (12, 4))])
    scaled = x[:12].copy()
    scaled[:, 24:56] *= np.float32(1.37)
    scaled[:, 56:64] *= np.float32(0.29)
    queries = np.concatenate([means, scaled, x[-3:] * np.float32(0.7)]).astype(np.float32)
    packed = packed_scan.PackedQueries(queries, SEGMENTS, packed_scan.QUERY_DIGITS)
    assert all(v is not None for i, _, v in packed.parts if i in (1, 2))  # the i8 segments stay integer parts
    # each digit leaves at most half a step of 2/127 of the last one's largest value per column
    bound = sum(np.sqrt(s.width) * np.abs(queries[:, s.start:s.stop]).max(axis=1) * (1 / 127) ** packed_scan.QUERY_DIGITS
                for s in SEGMENTS if s.codec == "i8")
    assert (packed.residual <= bound * (1 + 1e-6) + 1e-9).all() and (packed.residual > 0).any()
    for k in (1, 10, 70):
        got = side.search_scores(queries, k)
        assert [[pid for pid, _ in row] for row in got] == brute_force(x, ids, live, queries, k, metric), k
        for q, row in zip(queries, got):
            assert all(sc == metric.pair(x[ids.index(pid)], q) for pid, sc in row)


def test_int8_digits_rebuild_the_query() -> None:
    rng = np.random.default_rng(3)
    q = rng.standard_normal((5, 64)) * np.array([[1.0], [1e-3], [1e3], [0.0], [1e-30]])
    digits, rest = packed_scan.i8_digits(q, 3)
    rebuilt = sum(np.ldexp(v.astype(np.float64), e[:, None]) for v, e in digits)
    assert np.allclose(rebuilt + rest, q, rtol=0, atol=1e-300)
    peak = np.abs(q).max(axis=1)
    assert (np.abs(rest).max(axis=1) <= peak / 127 ** 3 * 1.01 + 2.0 ** -120).all()
    assert all(np.abs(v.astype(int)).max() <= 127 for v, _ in digits)


def test_a_segments_digits_are_one_product_with_the_same_sums() -> None:
    """A segment's int8 digits are multiplied in one product (columns side by side) and added digit
    after digit: the same scores, to the bit, as one product per digit; the window counts each digit."""
    x = catalog(700, seed=21)
    side = fill(x, [f"p{i:04d}" for i in range(len(x))])
    rng = np.random.default_rng(22)
    queries = np.stack([(x[a] + x[b]) / 3 - 0.3 * x[c] for a, b, c in rng.integers(0, len(x), (9, 3))]).astype(np.float32)
    packed = packed_scan.PackedQueries(queries, SEGMENTS, packed_scan.QUERY_DIGITS)
    stacked = [(i, v, s) for i, v, s in packed.parts if s is not None and s.shape[0] > len(queries)]
    assert stacked, "the queries are off the grid: their i8 segments have several digits"
    one_each = packed_scan.PackedQueries.__new__(packed_scan.PackedQueries)
    one_each.parts = []
    for i, v, s in packed.parts:
        for d in range(0, v.shape[1], len(queries)):
            one_each.parts.append((i, v[:, d:d + len(queries)].contiguous(), None if s is None else s[d:d + len(queries)]))
    assert packed.terms == len(one_each.parts) > len(packed.parts)
    rows = side._rows  # noqa: SLF001 - the scan's own input
    got = packed_scan.block_scores(rows, packed, 0, len(x), len(queries))
    want = packed_scan.block_scores(rows, one_each, 0, len(x), len(queries))
    assert torch.equal(got, want)


@pytest.mark.parametrize("rows,k", [(64 * 40, 10), (64 * 40 + 17, 10), (64 * 3 + 5, 10), (30, 10), (64 * 12, 12)])
def test_near_top_keeps_every_score_within_the_window_of_the_kth(rows: int, k: int) -> None:
    """The bound from groups' maxima: every finite score within the window of its query's k-th best
    is returned (with its score), nothing barred (-inf) is, and little more than needed: ties and
    groups holding two of the best included, chunks shorter than k groups and a ragged tail too."""
    rng = np.random.default_rng(rows)
    count = 7
    acc = torch.from_numpy(rng.standard_normal((rows, count)).astype(np.float32))
    acc[rng.random((rows, count)) < 0.2] = -torch.inf  # barred by a filter, or dead
    acc[:5, 0] = 9.0  # the best of query 0 in one group: its k-th best lies elsewhere
    acc[:, 1] = -torch.inf
    acc[rng.choice(rows, 3, replace=False), 1] = 1.0  # fewer allowed rows than k
    acc[:, 2] = torch.round(acc[:, 2] * 4) / 4  # many exact ties
    win = torch.full((count,), 0.05)
    got_rows, got_queries, got_scores = packed_scan.near_top(acc, k, win)
    got = set(zip(got_rows.tolist(), got_queries.tolist()))
    assert len(got) == len(got_rows)
    assert torch.equal(got_scores, acc[got_rows, got_queries])
    assert bool(torch.isfinite(got_scores).all())
    for j in range(count):
        col = acc[:, j]
        finite = col[torch.isfinite(col)]
        kth = torch.topk(finite, min(k, len(finite))).values.min() if len(finite) >= k else -torch.inf
        need = {int(r) for r in torch.nonzero(torch.isfinite(col) & (col >= kth - win[j])).flatten()}
        mine = {r for r, q in got if q == j}
        assert need <= mine, j
        assert len(mine) <= len(need) + 4 * 64 or len(finite) < k, j  # a few groups' worth at most
