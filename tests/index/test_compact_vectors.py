"""Compact vector storage is lossless for canonical vectors: the side index gives back the exact
float32 values, searches equal a float32 brute force, non-canonical rows are kept exact, and the
metadata columns round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from simstream.index.exact import top_k_rows
from simstream.index.rows import StoredProduct
from simstream.index.side import SideIndex
from simstream.index.packed_rows import PackedRows, memory_per_row
from simstream.vector_codec import Segment, bytes_per_row, canonical, canonical_rows, pack, unpack, Packed

SEGMENTS = [Segment("text", 0, 24, "f16"), Segment("lexical", 24, 56, "i8"), Segment("price", 56, 60, "f16")]
DIM = 64  # columns 60..63: a field with weight 0, zero in every canonical vector


def canonical_vectors(rng: np.random.Generator, n: int, *, sparse_counts: bool = True) -> np.ndarray:
    x = np.zeros((n, DIM), np.float32)
    x[:, :24] = rng.normal(size=(n, 24)) * 0.2
    counts = rng.integers(-3, 4, size=(n, 32)) * (rng.random((n, 32)) < 0.3) if sparse_counts else rng.normal(size=(n, 32))
    x[:, 24:56] = counts / max(1.0, float(np.abs(counts).max())) * 0.7
    x[:, 56:60] = rng.random((n, 4)) * 0.1
    x[:, :60] /= np.linalg.norm(x[:, :60], axis=1, keepdims=True)
    canonical_rows(x, SEGMENTS)
    return x


@pytest.mark.parametrize("codec", ["f16", "i8", "f32"])
def test_canonical_values_pack_exactly_and_canonical_is_idempotent(codec):
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(200, 40)).astype(np.float32) * rng.choice([0.01, 0.3, 1.0], size=(200, 1))
    raw[:3] = 0.0  # empty fields stay exactly zero
    x = canonical(raw, codec)  # type: ignore[arg-type]
    assert np.array_equal(canonical(x, codec), x)  # type: ignore[arg-type]
    packed, inexact = pack(x, codec)  # type: ignore[arg-type]
    assert not inexact.any()
    out = np.empty_like(x)
    unpack(packed, codec, out)  # type: ignore[arg-type]
    assert np.array_equal(out, x) and not out[:3].any()
    cos = (raw * x).sum(1)[3:] / (np.linalg.norm(raw, axis=1) * np.linalg.norm(x, axis=1))[3:]
    assert cos.min() > (0.999 if codec == "i8" else 0.99999)


def test_pack_reports_values_off_the_grid():
    x = np.full((3, 8), 0.125, np.float32)  # on both grids
    x[1, 0] = 0.123456789  # on neither
    x[2, 0] = 0.1  # not a float16, and off the int8 step 2**-9
    for codec in ("f16", "i8"):
        _, inexact = pack(x, codec)  # type: ignore[arg-type]
        assert inexact.tolist() == [False, True, True]


def test_compact_side_index_equals_float32_brute_force():
    rng = np.random.default_rng(7)
    x = canonical_vectors(rng, 3000)
    x[10] = x[11]  # exact twins: ties ordered by row
    ids = [f"p{i:05d}" for i in range(len(x))]
    side = SideIndex(DIM, capacity=1024, segments=SEGMENTS)  # grows on the way
    for start in range(0, len(x), 700):
        side.put([StoredProduct(ids[i], x[i], 1, {"text": "00ff00ff00ff00ff"}, "m", 5, 9)
                  for i in range(start, min(len(x), start + 700))])
    assert bytes_per_row(SEGMENTS) == 24 * 2 + 32 + 1 + 4 * 2 and side.loose_rows == 0
    assert side.row_bytes == memory_per_row(SEGMENTS) == bytes_per_row(SEGMENTS) + 4  # the i8 segment's scale
    got = side.get(ids[:50])
    assert all(np.array_equal(got[ids[i]].vector, x[i]) for i in range(50))
    gone = set(rng.choice(len(x), 300, replace=False).tolist())
    side.delete(ids[i] for i in gone)
    queries = x[:40]
    sims = queries @ x.T
    sims[:, sorted(gone)] = -np.inf
    want_rows, want_scores = top_k_rows(sims, 25)
    got_scores = side.search_scores(queries, 25)
    assert [[pid for pid, _ in row] for row in got_scores] == [[ids[j] for j in row] for row in want_rows]
    assert np.allclose([[s for _, s in row] for row in got_scores], want_scores, atol=1e-6)
    for row, want in zip(side.search(queries, 5), want_rows):
        assert [pid for pid, _ in row] == [ids[j] for j in want[:5]]
        assert all(np.array_equal(vec, x[int(pid[1:])]) for pid, vec in row)


def test_rows_off_the_grid_are_kept_exact_and_metadata_round_trips():
    rng = np.random.default_rng(3)
    x = canonical_vectors(rng, 10)
    odd = x[3].copy()
    odd[0] += 1e-7  # not a float16 value
    odd[62] = 0.5  # outside every segment
    side = SideIndex(DIM, segments=SEGMENTS)
    hashes = {"text": "0123456789abcdef", "price": "fedcba9876543210"}
    side.put([StoredProduct(f"p{i}", x[i], i, hashes, f"model-{i % 2}", 100 + i, 200 + i) for i in range(10)])
    side.put([StoredProduct("p3", odd, 7, {"text": "not hex"}, "other", 1, 2)])
    assert side.loose_rows == 1
    p3 = side.get(["p3"])["p3"]
    assert np.array_equal(p3.vector, odd) and p3.hashes == {"text": "not hex"} and (p3.version, p3.model) == (7, "other")
    p4 = side.get(["p4"])["p4"]
    assert (p4.hashes, p4.model, p4.event_time, p4.updated_at) == (hashes, "model-0", 104, 204)
    assert side.search_scores(odd[None, :], 1)[0][0][0] == "p3"
    assert side.not_held({"p4": 204, "p5": 1, "zz": 3}) == ["p5", "zz"]
    assert sorted(side.ids_written_since(208)) == ["p8", "p9"]
    side.put([StoredProduct("p3", x[3], 8, hashes, "m", 1, 2)])
    assert side.loose_rows == 0
    unpacked = np.empty((1, 4), np.float32)
    unpack(Packed(np.array([[1, -2, 3, 127]], np.int8), np.array([-3], np.int8)), "i8", unpacked)
    assert unpacked.tolist() == [[0.125, -0.25, 0.375, 15.875]]


def test_each_i8_rows_scale_is_its_power_of_two_through_writes_clears_growth_and_a_reload():
    """The scan multiplies int8 products by the rows' kept scales: they must stay 2**exponent."""
    rng = np.random.default_rng(3)
    rows = PackedRows(DIM, SEGMENTS, capacity=8)
    x = canonical_vectors(rng, 40)
    rows.grow(16)
    rows.write(np.arange(16), x[:16])
    rows.grow(40)
    rows.write(np.arange(16, 40), x[16:])
    rows.write(np.array([3, 30]), x[[7, 8]] * 0.5)  # rewritten on another grid
    rows.clear(5)

    def check(r: PackedRows, n: int) -> None:
        for i, s in enumerate(r.segments):
            scales, (_, _, exps) = r.scales(i), r.segment(i)
            if s.codec != "i8":
                assert scales is None
                continue
            assert scales is not None and exps is not None and scales.dtype == np.float32
            assert np.array_equal(scales[:n], np.ldexp(np.ones(n), exps[:n].astype(np.int64)).astype(np.float32))

    check(rows, 40)
    copy = PackedRows(DIM, SEGMENTS, capacity=40)
    copy.load(rows.export(np.arange(40)), 40)
    check(copy, 40)
    assert np.array_equal(copy.read(np.arange(40)), rows.read(np.arange(40)))
