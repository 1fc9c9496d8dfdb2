"""The exact scan's candidates, computed on the packed rows themselves (no per-pass decode).

A scan used to decode every row to float32 (3,232 columns, most of them int8 on the storage grid)
and multiply: decoding was ~80 % of the pass. Here each segment is multiplied where it lies:

- an ``i8`` segment holds integers ``q`` times ``2**e`` per row. A canonical query is on the same
  grid, so the segment's dot product is ``2**(e_row + e_query)`` times an integer dot product,
  which int8 x int8 -> int32 matrix products (``torch._int_mm``: VNNI on this CPU) compute
  *exactly*; the power of two is applied exactly too;
- ``f16`` (and ``f32``) segments are widened per block of rows, in cache, and multiplied in float32.

The sum of the segments is then within a proven bound of the real dot product, and so is the float32
dot product every list is ranked by (``index/exact.py``: the oracle's arithmetic). So each row that
can be in a query's exact top-``limit`` scores at least (the ``limit``-th best scan score) minus
``window``: this module returns every such row (a few more than ``limit``), and the caller rescores
them with the oracle's arithmetic and ranks them (index/side.py). docs/exactness.md has the proof.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from simstream.index.device_rows import DeviceRows, exact_float32_matmul
from simstream.index.packed_rows import PackedRows
from simstream.logs import get_logger
from simstream.vector_codec import I8_MAX, Segment, pack

__all__ = ["BLOCK_ROWS", "CHUNK_BLOCKS", "DEVICE_CHUNK_ROWS", "GROUP_ROWS", "LOWEST_FLOAT32", "QUERY_DIGITS", "MIN_DIGIT_EXPONENT", "UNIT_ROUNDOFF", "i8_digits", "Candidates", "Offsets", "PackedQueries", "block_scores", "gamma", "window", "windows_of",
           "near_top", "scan_candidates", "subset_reaching"]

# rows per block: a block's scores (rows x queries, int32 then float32) stay in the core's cache
# while each segment's product is scaled and added (100k rows x 32 queries, one core: 2,048 rows
# 123-131 ms a pass, 8,192 rows 149 ms, 512 rows 147 ms)
BLOCK_ROWS = 2_048
# rows per chunk of a pass: scored in one call without the GIL, then selected (a chunk's scores,
# rows x queries float32, are at most 16 MiB at 64 queries)
CHUNK_BLOCKS = 32
# rows per group whose maximum stands for it when a chunk's k-th best is bounded (``near_top``)
GROUP_ROWS = 64
DEVICE_CHUNK_ROWS = 8_192  # rows per chunk on a device (rows resident there: one product a chunk)
# int8 digits of a query segment off the i8 grid (``PackedQueries``): each leaves at most 1/127 of
# the last one's largest value (half a step of at most 2/127 of it), so two leave at most ~6e-5 of
# the segment's largest value, bounded in the window (at 100k, 32 means of products: the pass 103
# ms with three digits, 86 with two, 10.2 against 10.4 rows a query to rescore; one digit: 523)
QUERY_DIGITS = 2
MIN_DIGIT_EXPONENT = -120  # 2**-120 is still a normal float32 (a query scale)
UNIT_ROUNDOFF = 2.0 ** -24  # float32
LOWEST_FLOAT32 = float(np.finfo(np.float32).min)
log = get_logger(__name__)


def gamma(n: int) -> float:
    """Higham's gamma_n: the relative error bound of an n-term float32 dot product, any order."""
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def window(dim: int, widest_float_segment: int, segments: int, query_norm: float, row_norm: float,
           scan_norm: float | None = None, residual: float = 0.0, offsets: bool = False) -> float:
    """How far below the ``limit``-th best scan score a row of the exact top-``limit`` can score.

    With A = sum |q_i v_i| <= |q| |v|: the scan's error is at most (gamma(widest float segment)
    + gamma(segments + 1) + u) A (int8 segments are exact integers, rounded once to float32); the
    oracle's float32 dot product over ``dim`` columns is within gamma(dim) A of the real value. A
    row ranks in the top ``limit`` only if its oracle score reaches the ``limit``-th best oracle
    score (less 1e-6: ranking rounds to 6 decimals and then orders by id), so its scan score is at
    least t - 2 (scan error + oracle error) - 2e-6, where t is the ``limit``-th best scan score.

    ``offsets`` (the ``l2`` metric, simstream.metric): the scan also adds each row's float32 offset
    (at most |v|^2 / 2) to its float32 score and compares with float32 bars less the query's offset:
    three more roundings, each within u of the sum's size."""
    # A query off the i8 grid is multiplied as a sum of int8 digits (``PackedQueries``): the scan
    # then sums ``segments`` products (one per part) of norm at most ``scan_norm`` x the row's, and
    # misses the digits' remainder, whose product with the row is at most ``residual`` x its norm.
    a = query_norm * row_norm
    a_scan = max(scan_norm or 0.0, query_norm) * row_norm
    scan = (gamma(widest_float_segment) + gamma(segments + 1) + UNIT_ROUNDOFF) * a_scan * (1 + 1e-6) \
        + residual * row_norm * (1 + 1e-6)
    if offsets:
        scan += 3 * UNIT_ROUNDOFF * (a_scan + (query_norm ** 2 + row_norm ** 2) / 2) * (1 + 1e-6)
    return 2 * (scan + gamma(dim) * a) + 3e-6  # 1e-6 more: the float32 comparison with t - window


def windows_of(rows: PackedRows, queries: np.ndarray, widest_float_segment: int,
               packed: PackedQueries | None = None, offsets: bool = False) -> np.ndarray:
    """``window`` per query (float32 rows of ``queries``): norms in float64, rows bounded by the
    largest norm ever written; ``packed``: how the scan multiplies them (digits and their remainder);
    ``offsets``: the scan adds the rows' offsets (``window``)."""
    norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
    terms = max(len(rows.segments), packed.terms if packed is not None else 0)
    return np.array([window(rows.dim, widest_float_segment, terms, float(n), rows.max_norm,
                            float(packed.scan_norm[j]) if packed is not None else None,
                            float(packed.residual[j]) if packed is not None else 0.0, offsets)
                     for j, n in enumerate(norms)])


@dataclass(frozen=True, slots=True)
class Candidates:
    """Per query: row numbers and their scan scores (unordered), a superset of its exact top-limit;
    and, when the scan was given per-row bars, the rows whose bar the query may reach."""

    rows: list[np.ndarray]
    scores: list[np.ndarray]
    reaching: list[np.ndarray] | None = None


@dataclass(frozen=True, slots=True)
class Offsets:
    """The ``l2`` metric's per-vector terms (simstream.metric): one float32 per row of the packed
    rows (indexed by row number) and one per query."""

    rows: np.ndarray
    queries: np.ndarray


def i8_digits(x: np.ndarray, count: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Rows of ``x`` (float64) as ``count`` int8 digits, each on a grid 2**e (e per row) finer
    than the last: x = sum(values_t x 2**e_t) + rest; returns the digits and the rest (float64:
    each step subtracts a number with at most 8 significant bits, exactly or within float64's
    rounding, which the caller's margin covers)."""
    rest = np.array(x, np.float64)
    digits = []
    for _ in range(count):
        peak = np.abs(rest).max(axis=1) if rest.shape[1] else np.zeros(len(rest))
        e = np.where(peak > 0, np.ceil(np.log2(np.where(peak > 0, peak, 1.0) / I8_MAX)), 0).astype(np.int64)
        e = np.maximum(e, MIN_DIGIT_EXPONENT)  # below it a digit is all zeros: left in the rest
        values = np.clip(np.rint(np.ldexp(rest, -e[:, None])), -I8_MAX, I8_MAX)
        rest = rest - np.ldexp(values, e[:, None])
        digits.append((values.astype(np.int8), e))
    return digits, rest


class PackedQueries:
    """Queries split by segment, as the scan multiplies them.

    An i8 segment on the grid is one int8 part. Off it (a query re-weighted at query time, or a
    mean of several products: serve), with ``digits`` > 0 it is ``digits`` int8 parts on finer and
    finer grids, each multiplied exactly like an on-grid query, instead of widening every row of the
    segment to float32 per pass; what the digits leave (``residual``, a norm per query) is bounded
    in the window. With ``digits`` 0 such a segment is widened (float32 arithmetic).

    A segment's digits are one part: their columns side by side (queries x digits), so the rows
    are read once for all of them (one int8 product of 3 digits cost ~1.8x one digit's, where three
    cost 3x); the scores still add digit after digit, in the same order."""

    def __init__(self, queries: np.ndarray, segments: Sequence[Segment], digits: int = 0) -> None:
        # segment no., values (width x queries, times its digits for int8), 2**e (one per column)
        self.parts: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        self.terms = 0  # the products the scan adds up (a digit is one): the window's term count
        self.widest_float = 0  # columns of the widest segment multiplied in float32
        self.scan_norm = np.zeros(len(queries))  # per query: the sum of its parts' norms
        self.residual = np.zeros(len(queries))  # per query: the sum of its digits' remainders' norms
        for i, s in enumerate(segments):
            q = queries[:, s.start:s.stop]
            if not q.any():
                continue  # every query is zero here: the segment adds nothing to any score
            if s.codec == "i8":
                packed, inexact = pack(q, "i8")
                if not inexact.any():
                    assert packed.exponents is not None
                    self._add(i, s.width, packed.values, packed.exponents)
                    continue
                if digits:
                    parts, rest = i8_digits(q, digits)
                    used = [(values, exps) for values, exps in parts if values.any()]
                    if used:  # digit after digit: rows [t * queries, (t + 1) * queries) are digit t
                        self._add(i, s.width, np.concatenate([v for v, _ in used]),
                                  np.concatenate([e for _, e in used]), digits=len(used))
                    # float64's rounding in the steps: far below this margin
                    self.residual += np.sqrt(np.einsum("ij,ij->i", rest, rest)) * (1 + 1e-9) \
                        + 1e-12 * np.abs(q).sum(axis=1)
                    continue
            # f16/f32 segments, and i8 segments of a query off the grid: float32 arithmetic
            self._add(i, s.width, q, None)

    def _add(self, i: int, width: int, values: np.ndarray, exponents: np.ndarray | None, digits: int = 1) -> None:
        """Segment ``i``'s query values ((digits x queries) x width): int8 with their powers of
        two, or widened to float32 (``exponents`` None, one digit)."""
        norms = np.sqrt(np.einsum("ij,ij->i", values, values, dtype=np.float64))
        self.terms += digits
        if exponents is not None:
            self.scan_norm += np.ldexp(norms, exponents.astype(np.int64)).reshape(digits, -1).sum(axis=0)
            scale = np.ldexp(np.float32(1.0), exponents.astype(np.int32)).astype(np.float32)
            self.parts.append((i, torch.from_numpy(np.ascontiguousarray(values.T)), torch.from_numpy(scale)))
            return
        self.scan_norm += norms
        self.widest_float = max(self.widest_float, width)
        self.parts.append((i, torch.from_numpy(np.ascontiguousarray(values.T, np.float32)), None))

    @classmethod
    def of_rows(cls, rows: PackedRows, first: int, stop: int) -> PackedQueries | None:
        """Rows [first, stop) of ``rows`` as queries, straight from their packed values (the same
        numbers a decode and a re-pack would give, without either); None when one is held loose."""
        if any(first <= r < stop for r, _ in rows.loose_items()):
            return None
        self = cls.__new__(cls)
        self.parts, self.widest_float, self.terms = [], 0, 0
        self.scan_norm, self.residual = np.zeros(stop - first), np.zeros(stop - first)
        for i, s in enumerate(rows.segments):
            _, values, exps = rows.segment(i)
            if values[first:stop].any():
                self._add(i, s.width, values[first:stop], None if exps is None else exps[first:stop])
        return self


def _parts_scores(values: List[torch.Tensor], row_scales: List[Optional[torch.Tensor]],
                  queries: List[torch.Tensor], scales: List[Optional[torch.Tensor]], count: int,
                  block_rows: int) -> torch.Tensor:
    """Rows x queries scan scores, summed over the parts (one per entry of the lists: the rows'
    packed values and, for i8 segments, their 2**e, the queries' values and, for int8 parts, their
    2**e), block by block of ``block_rows`` (a block's widened columns and scores stay in cache)."""
    n = values[0].shape[0]
    acc = torch.zeros((n, count), dtype=torch.float32)
    for first in range(0, n, block_rows):
        stop = min(n, first + block_rows)
        out = acc[first:stop]  # a view: the in-place products below land in ``acc``
        for i in range(len(values)):
            block = values[i][first:stop]
            rows_scale = row_scales[i]
            q_scale = scales[i]
            if q_scale is not None:
                assert rows_scale is not None
                exact = torch._int_mm(block, queries[i])  # int8 x int8 -> int32, exact (every digit)
                # times 2**(e_row + e_query), one power of two at a time: exact, as one product
                # would be, without a rows x queries matrix of scales; a digit at a time
                scaled = exact.float().mul_(rows_scale[first:stop, None])
                for d in range(0, q_scale.shape[0], count):
                    out.addcmul_(scaled[:, d:d + count], q_scale[d:d + count][None, :].expand(stop - first, count))
            elif rows_scale is None:
                out.addmm_(block.float(), queries[i])
            else:  # an i8 segment against a query off its grid: widen the rows exactly
                out.addmm_(block.float() * rows_scale[first:stop, None], queries[i])
    return acc


def _scripted(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` compiled by TorchScript, whose call releases the GIL for the whole of it; ``fn``
    itself where TorchScript cannot compile it (a torch without it: the same operations, eagerly).

    Eagerly, each of a pass's ~800 torch operations releases the GIL and must take it back: with
    serve's request threads running Python meanwhile, each return waited up to the interpreter's
    switch interval (5 ms), and a pass of 32 rankings at 100k took ~500 ms instead of 150
    (the convoy effect: 100 int8 products beside 4 busy Python threads, 6.1 s eagerly, 60 ms
    scripted). TorchScript runs the same aten kernels in the same order (CPU fusion is off), so
    the scores are the same to the bit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.script is deprecated"
            return torch.jit.script(fn)  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - any failure to compile: run it eagerly
        log.warning("packed scan runs eagerly: TorchScript could not compile it", error=str(exc)[:200])
        return fn


_parts_scores_scripted = _scripted(_parts_scores)


def block_scores(rows: PackedRows, q: PackedQueries, first: int, stop: int, count: int,
                 sel: np.ndarray | None = None) -> torch.Tensor:
    """(stop - first) x queries scan scores of rows [first, stop), on the CPU; with ``sel``, of
    the rows ``sel[first:stop]`` instead (gathered, still packed). One call without the GIL."""
    if not q.parts:
        return torch.zeros((stop - first, count), dtype=torch.float32)
    pick: slice | np.ndarray = slice(first, stop) if sel is None else sel[first:stop]
    values: list[torch.Tensor] = []
    row_scales: list[torch.Tensor | None] = []
    for i, _, _ in q.parts:
        _, held, _ = rows.segment(i)
        values.append(torch.from_numpy(held[pick]))
        scales = rows.scales(i)
        row_scales.append(None if scales is None else torch.from_numpy(scales[pick]))
    return _parts_scores_scripted(values, row_scales, [v for _, v, _ in q.parts], [s for _, _, s in q.parts],
                                  count, BLOCK_ROWS)


def near_top(acc: torch.Tensor, k: int, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, query, score), on the CPU, of every entry of ``acc`` (rows x queries scan scores, -inf
    for a row barred) at least the query's floor: a lower bound of its ``k``-th best less
    ``window`` (per query), and never -inf.

    The bound is the ``k``-th best of the maxima of ``GROUP_ROWS``-row groups: ``k`` groups reach
    it, so ``k`` rows do, so the ``k``-th best row does too. Only the groups whose maximum reaches
    the floor are read again (a few per query). Against a top-k of every query's scores (which
    wants them transposed: a copy of the whole chunk) it costs ~0.5 ms instead of ~7 ms per
    65,536 rows x 32 queries, and keeps a row or two more when two of the best share a group."""
    m, count = acc.shape
    groups = m // GROUP_ROWS
    body = acc[: groups * GROUP_ROWS].view(groups, GROUP_ROWS, count)
    tail = acc[groups * GROUP_ROWS:]
    best = body.amax(dim=1) if groups else acc.new_empty((0, count))
    if len(tail):
        best = torch.cat([best, tail.amax(dim=0, keepdim=True)])
    if len(best) >= k:
        kth = torch.topk(best, k, dim=0, sorted=False).values.min(dim=0).values
    else:  # fewer groups than k (a short chunk): the k-th best itself
        kth = torch.topk(acc, k, dim=0, sorted=False).values.min(dim=0).values
    # the lowest finite float32 at least, so that a row barred (-inf) is never kept
    floor = torch.clamp(kth - window, min=LOWEST_FLOAT32)
    rows_out, queries_out, scores_out = [], [], []
    if groups:
        g, q = torch.nonzero(best[:groups] >= floor[None, :], as_tuple=True)  # groups worth reading
        if len(g):
            part = body[g, :, q]  # (pairs, GROUP_ROWS): each pair's group, its query's column
            p, r = torch.nonzero(part >= floor[q][:, None], as_tuple=True)
            rows_out.append(g[p] * GROUP_ROWS + r)
            queries_out.append(q[p])
            scores_out.append(part[p, r])
    if len(tail):
        r, q = torch.nonzero(tail >= floor[None, :], as_tuple=True)
        rows_out.append(r + groups * GROUP_ROWS)
        queries_out.append(q)
        scores_out.append(tail[r, q])
    if not rows_out:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, torch.zeros(0, dtype=torch.float32)
    return (torch.cat(rows_out).cpu(), torch.cat(queries_out).cpu(), torch.cat(scores_out).cpu())


def subset_reaching(rows: PackedRows, subset: np.ndarray, queries: np.ndarray, bars: np.ndarray,
                    offsets: Offsets | None = None) -> list[np.ndarray]:
    """Per query j, the positions i in ``subset`` (row numbers, all live) whose oracle score with
    query j may reach ``bars[j]``: a superset, every row whose scan score is within the scan's and
    the oracle's error bounds of it. The subset's packed values are gathered, not decoded.
    ``offsets``: the metric's per-vector terms (``Offsets``), added to each score."""
    queries = np.asarray(queries, np.float32)
    count = len(queries)
    out: list[list[np.ndarray]] = [[] for _ in range(count)]
    if not len(subset) or not count:
        return [np.zeros(0, np.int64) for _ in range(count)]
    q = PackedQueries(queries, rows.segments, QUERY_DIGITS)
    slack = windows_of(rows, queries, rows.dim if rows.loose_rows else q.widest_float, q, offsets is not None) / 2
    if offsets is not None:  # score = scan + row offset + query offset: the query's moves to the bar
        slack = slack + offsets.queries.astype(np.float64)
    need = torch.from_numpy(np.asarray(np.asarray(bars, np.float64) - slack, np.float32))
    loose = dict(rows.loose_items())
    qf = torch.from_numpy(np.ascontiguousarray(queries))
    subset = np.asarray(subset, np.int64)
    chunk = BLOCK_ROWS * CHUNK_BLOCKS
    for first in range(0, len(subset), chunk):
        stop = min(len(subset), first + chunk)
        acc = block_scores(rows, q, first, stop, count, sel=subset)
        if loose:
            for i, r in enumerate(subset[first:stop].tolist()):
                if (vec := loose.get(r)) is not None:
                    acc[i] = qf @ torch.from_numpy(vec)
        if offsets is not None:
            acc.add_(torch.from_numpy(offsets.rows[subset[first:stop]])[:, None])
        hit_rows, hit_queries = torch.nonzero(acc >= need[None, :], as_tuple=True)
        if len(hit_rows):
            _split(hit_rows.numpy() + first, hit_queries.numpy(), count, out)
    return [np.concatenate(o) if o else np.zeros(0, np.int64) for o in out]


def _split(hr: np.ndarray, hq: np.ndarray, count: int, into: list[list[np.ndarray]],
           scores: np.ndarray | None = None, scores_into: list[list[np.ndarray]] | None = None) -> None:
    """Append each query's share of the (row, query) hits to ``into[query]``."""
    order = np.argsort(hq, kind="stable")
    hr, hq = hr[order], hq[order]
    ordered = scores[order] if scores is not None else None
    bounds = np.searchsorted(hq, np.arange(count + 1))
    for j in range(count):
        a, b = bounds[j], bounds[j + 1]
        if a < b:
            into[j].append(hr[a:b])
            if ordered is not None and scores_into is not None:
                scores_into[j].append(ordered[a:b])


def scan_candidates(rows: PackedRows, live: np.ndarray, used: int, queries: np.ndarray, limit: int,
                    resident: DeviceRows | None = None, bars: np.ndarray | None = None,
                    margin: float = 0.0, *, allowed: np.ndarray | None = None,
                    sel: np.ndarray | None = None, offsets: Offsets | None = None) -> Candidates:
    """Every live row among [0, used) whose scan score is within ``window`` of query j's
    ``limit``-th best: a superset of each query's exact top-``limit``. Rows held loose (float32,
    off the grid) are scored with a float32 dot product instead (within the same bound).

    ``bars`` (one float32 per row, +inf for none): also every live row whose bar query j may reach,
    i.e. each row r whose oracle score with the query is at least ``bars[r] - margin``; returned as
    a superset (every row whose scan score is within the scan's and the oracle's error bounds of
    that), in the same pass.

    ``resident``: the rows decoded on a device (a GPU: index/device_rows.py), multiplied there in
    float32 over every column (the window of that sum) instead of on the packed values.

    ``allowed`` (queries x rows, bool): which rows each query may return besides being live (a
    query's filters; simstream serve), without ``bars``. ``sel`` (row numbers, ascending): scan only those rows,
    gathered still packed (a selective filter's rows), on the CPU and without ``bars``.

    ``offsets`` (the ``l2`` metric): each row's offset is added to its scan scores (the scores
    returned hold it, not the query's), and each query's to the bars' side of the comparison."""
    queries = np.asarray(queries, np.float32)
    count = len(queries)
    assert bars is None or allowed is None, "bars are answered over every live row"
    if sel is not None:
        assert bars is None, "a subset scan answers no bars"
        resident, sel = None, np.asarray(sel, np.int64)
    q = None if resident is not None else PackedQueries(queries, rows.segments, QUERY_DIGITS)
    widest = rows.dim if q is None or rows.loose_rows else q.widest_float  # all float32 there
    windows = windows_of(rows, queries, widest, q, offsets is not None)
    win = torch.from_numpy(np.asarray(windows, np.float32))
    loose = [] if resident is not None else rows.loose_items()  # the resident rows already hold them
    q_device = torch.from_numpy(queries).to(resident.device) if resident is not None else None
    kept_rows: list[list[np.ndarray]] = [[] for _ in range(count)]
    kept_scores: list[list[np.ndarray]] = [[] for _ in range(count)]
    qf = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
    reaching: list[list[np.ndarray]] = [[] for _ in range(count)]
    # scan error + oracle error = (window - 3e-6) / 2; the 1.5e-6 left covers the float32 subtraction
    slack = torch.from_numpy(np.asarray(margin + windows / 2 + (offsets.queries.astype(np.float64)
                                                                 if offsets is not None else 0.0), np.float32))
    scanned = used if sel is None else len(sel)
    if sel is not None and loose:  # where each loose row sits among the rows scanned (``sel`` ascends)
        at = np.searchsorted(sel, [r for r, _ in loose])
        loose = [(int(i), vec) for i, (r, vec) in zip(at.tolist(), loose) if i < len(sel) and sel[i] == r]
    chunk = DEVICE_CHUNK_ROWS if resident is not None else BLOCK_ROWS * CHUNK_BLOCKS
    for first in range(0, scanned, chunk):
        stop = min(scanned, first + chunk)
        here: slice | np.ndarray = slice(first, stop) if sel is None else sel[first:stop]
        if q is None:
            assert resident is not None and q_device is not None
            with exact_float32_matmul():
                acc = resident.block(first, stop) @ q_device.T
            win = win.to(acc.device)
        else:
            acc = block_scores(rows, q, first, stop, count, sel=sel)
        for r, vec in loose:  # positions in the rows scanned
            if first <= r < stop:
                acc[r - first] = qf @ torch.from_numpy(vec)
        if offsets is not None:
            acc.add_(torch.from_numpy(offsets.rows[here]).to(acc.device)[:, None])
        dead = torch.from_numpy(~live[here]).to(acc.device)
        if bool(dead.any()):
            acc[dead] = -torch.inf
        if bars is not None:
            bar = torch.from_numpy(bars[first:stop]).to(acc.device)
            reach = (acc >= bar[:, None] - slack.to(acc.device)[None, :]) & (acc > -torch.inf)  # a -inf bar: everyone
            reach_rows, reach_queries = torch.nonzero(reach, as_tuple=True)
            if len(reach_rows):
                _split(reach_rows.cpu().numpy() + first, reach_queries.cpu().numpy(), count, reaching)
        k = min(limit, stop - first)
        if k == 0:
            continue
        if allowed is not None:  # a query's rows its filters bar score -inf for it
            acc.masked_fill_(torch.from_numpy(~allowed[:, here]).to(acc.device).T, -torch.inf)
        hit_rows, hit_queries, hit_scores = near_top(acc, k, win)
        if len(hit_rows) == 0:
            continue
        found = hit_rows.numpy() + first if sel is None else sel[hit_rows.numpy() + first]
        _split(found, hit_queries.numpy(), count, kept_rows, hit_scores.numpy(), kept_scores)
    out_rows, out_scores = [], []
    windows64 = np.asarray(windows, np.float64)
    for j in range(count):
        if not kept_rows[j]:
            out_rows.append(np.zeros(0, np.int64))
            out_scores.append(np.zeros(0, np.float32))
            continue
        rows_j, sc = np.concatenate(kept_rows[j]), np.concatenate(kept_scores[j])
        if len(sc) > limit:  # the global limit-th best, then everyone within the window of it
            t = np.partition(sc, len(sc) - limit)[len(sc) - limit]
            sel = sc >= t - windows64[j]
            rows_j, sc = rows_j[sel], sc[sel]
        out_rows.append(rows_j.astype(np.int64))
        out_scores.append(sc)
    if bars is None:
        return Candidates(out_rows, out_scores)
    return Candidates(out_rows, out_scores, [np.concatenate(r) if r else np.zeros(0, np.int64) for r in reaching])
