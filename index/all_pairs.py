"""Every live row's exact top-``limit`` at once, each pair of rows multiplied once.

An every-list pass (``simstream backfill``, the worker's bulk round) needs every product's list
against the whole catalog. Searching it page by page multiplies each pair twice (r as the query
against c, and c against r). Here the rows are cut into blocks; each pair of blocks (i <= j) is
multiplied once, with the scan's arithmetic (index/packed_scan.py: int8 segments as exact integer
products, float segments in float32), and the one product serves both sides: row r of block i
ranks block j's rows, and row c of block j ranks block i's rows. A scan score is within the same
proven bound of the real dot product whichever side is the query, so docs/exactness.md §2b holds
for either use.

Each row keeps its ``keep`` best scan scores. Its candidates are the kept rows within the window
of its ``limit``-th best; they are a complete superset of its exact top-``limit`` when the
``keep``-th best kept score is below that (every row dropped scored at most the ``keep``-th), and
the caller rescores them with the oracle's arithmetic. A row whose near ties run past ``keep``
(many twins) has no candidates here and is searched on its own.

The pass runs a few pairs of blocks per ``advance``, so a worker interleaves its writes. A row written or
deleted after the pass began ("touched", told by the side index) may have been multiplied with
old and new contents: a query whose own row or any of whose candidates is touched gets no
candidates either. Rows changed since the pass began that are not among a query's candidates are
what the refresh's re-check looks for (``Refresher``: the lists count as computed when the pass
began), as for any search.
"""

from __future__ import annotations

import numpy as np
import torch

from simstream.clock import now_ms
from simstream.index.device_rows import DeviceRows, exact_float32_matmul
from simstream.index.packed_rows import PackedRows
from simstream.index.packed_scan import PackedQueries, block_scores, window

__all__ = ["ALL_PAIRS_BLOCK", "DEVICE_BLOCK", "AllPairs"]

ALL_PAIRS_BLOCK = 2_048  # rows per block: a block pair's scores (2,048 x 2,048 float32) are 16 MiB
DEVICE_BLOCK = 16_384  # on a GPU, where a block pair's scores (1 GiB) stay on the device


class AllPairs:
    """A blocked, symmetric scan of rows [0, used) of ``rows``, a few pairs of blocks per ``advance``."""

    def __init__(self, rows: PackedRows, live: np.ndarray, used: int, limit: int, *, keep: int | None = None,
                 block: int | None = None, resident: DeviceRows | None = None, started_ms: int | None = None,
                 offsets: np.ndarray | None = None) -> None:
        """``keep``: scan scores held per row (default 2 x ``limit``, at least ``limit`` + 16).
        ``resident``: the rows decoded on a device (a GPU: index/device_rows.py), multiplied there
        in float32, with the kept scores on the device too until the pass is done; else the packed
        rows on the CPU. ``block``: rows per block (default ``ALL_PAIRS_BLOCK``, on a GPU
        ``DEVICE_BLOCK``). ``started_ms``: when the state it scans was read (default now): the
        lists it gives count as computed then. ``offsets``: the ``l2`` metric's per-row terms
        (simstream.metric) of rows [0, used), added to both sides of every pair's score."""
        self.started_ms = now_ms() if started_ms is None else started_ms
        self.rows = rows
        self.used = used
        self.limit = limit
        self.keep = max(keep or max(2 * limit, limit + 16), limit)
        self.resident = resident
        self.device = resident.device if resident is not None else torch.device("cpu")
        self.block = block or (DEVICE_BLOCK if self.device.type != "cpu" else ALL_PAIRS_BLOCK)
        self._live = torch.from_numpy(np.array(live[:used], bool)).to(self.device)
        self._scores = torch.full((used, self.keep), -torch.inf, dtype=torch.float32, device=self.device)
        self._ids = torch.full((used, self.keep), -1, dtype=torch.int32, device=self.device)
        self._norms = np.zeros(used, np.float64)
        self._offsets = None if offsets is None else torch.from_numpy(np.asarray(offsets[:used], np.float32)).to(self.device)
        self._widest = rows.dim if self.decoded else 0  # widest run of columns summed in float32
        self._band, self._next = 0, 0  # the next pair of blocks to multiply: (band, next)
        self._mine = np.zeros((0, rows.dim), np.float32)  # block ``band``, decoded
        self._queries: PackedQueries | None = None  # and packed as queries
        self.touched: set[int] = set()

    @property
    def decoded(self) -> bool:
        """Whether the pass multiplies decoded float32 rows (resident on a device)."""
        return self.resident is not None

    @property
    def bands(self) -> int:
        return -(-self.used // self.block)

    @property
    def done(self) -> bool:
        return self._band >= self.bands

    def touch(self, rows: object) -> None:
        """Rows written or deleted since the pass began (the side index calls this)."""
        self.touched.update(int(r) for r in np.atleast_1d(np.asarray(rows)).tolist())

    def advance(self, pairs: int = 16) -> None:
        """Multiply up to ``pairs`` more pairs of blocks (block i with itself and each later block
        j, band by band), folding each product into both sides' kept rows: a step of seconds, so
        that writes and readiness checks go on between steps."""
        for _ in range(pairs):
            if self.done:
                break
            i, j = self._band, self._next
            first, stop = i * self.block, min(self.used, (i + 1) * self.block)
            if j == i:  # a new band: its block decoded once, and packed as the band's queries
                self._mine = self.rows.read(slice(first, stop))
                self._norms[first:stop] = np.sqrt(np.einsum("ij,ij->i", self._mine, self._mine, dtype=np.float64))
                if not self.decoded:
                    self._queries = PackedQueries.of_rows(self.rows, first, stop) or \
                        PackedQueries(self._mine, self.rows.segments)  # a loose row: as any query off the grid
                    self._widest = max(self._widest, self._queries.widest_float)
            j_first, j_stop = j * self.block, min(self.used, (j + 1) * self.block)
            scores = self._pair_scores(first, stop, j_first, j_stop)  # block j's rows x block i's
            if self._offsets is not None:  # score = dot + offset(row) + offset(query), either way round
                scores.add_(self._offsets[j_first:j_stop, None]).add_(self._offsets[None, first:stop])
            dead_i, dead_j = ~self._live[first:stop], ~self._live[j_first:j_stop]
            if bool(dead_j.any()):
                scores[dead_j] = -torch.inf
            if bool(dead_i.any()):
                scores[:, dead_i] = -torch.inf
            self._fold(j_first, j_stop, scores, first)
            if j != i:
                self._fold(first, stop, scores, j_first, by_column=True)
            self._next += 1
            if self._next >= self.bands:
                self._band += 1
                self._next = self._band
        if self.done and self._scores.device.type != "cpu":  # ``candidates`` reads them row by row
            self._scores, self._ids = self._scores.cpu(), self._ids.cpu()

    def _pair_scores(self, first: int, stop: int, j_first: int, j_stop: int) -> torch.Tensor:
        """Scan scores of rows [j_first, j_stop) against the band's rows [first, stop)."""
        if self.resident is not None:
            with exact_float32_matmul():
                return self.resident.block(j_first, j_stop) @ self.resident.block(first, stop).T
        assert self._queries is not None
        scores = block_scores(self.rows, self._queries, j_first, j_stop, stop - first)
        loose = [(r, vec) for r, vec in self.rows.loose_items() if j_first <= r < j_stop]
        if loose:  # rows off the grid: float32 over every column
            self._widest = self.rows.dim
            t = torch.from_numpy(self._mine)
            for r, vec in loose:
                scores[r - j_first] = t @ torch.from_numpy(vec)
        return scores

    def _fold(self, first: int, stop: int, scores: torch.Tensor, col_first: int, *, by_column: bool = False) -> None:
        """Keep, for rows [first, stop), the ``keep`` best of what they held and ``scores`` (row r's
        scores in row r - first, column c being row ``col_first`` + c; ``by_column``: in column
        r - first instead, so the product need not be transposed). Only scores above a row's
        ``keep``-th best so far can enter it (one comparison each); once rows hold ``keep`` scores
        those are few, and only they are merged."""
        floor = self._scores[first:stop, -1]
        hit = scores > (floor[None, :] if by_column else floor[:, None])
        a, b = torch.nonzero(hit, as_tuple=True)
        if not len(a):
            return
        if len(a) * 4 > hit.numel():  # dense (the first blocks of a row): select directly
            k = min(self.keep, scores.shape[0 if by_column else 1])
            top = torch.topk(scores.T if by_column else scores, k, dim=1)
            self._merge(torch.arange(first, stop, device=scores.device), top.values,
                        (top.indices + col_first).to(torch.int32))
            return
        values_at = scores[a, b]
        r, c = (b, a) if by_column else (a, b)
        if by_column:  # group the hits by row
            order = torch.argsort(r, stable=True)
            r, c, values_at = r[order], c[order], values_at[order]
        counts = torch.bincount(r, minlength=stop - first)
        holders = torch.nonzero(counts, as_tuple=True)[0]
        slot = torch.cumsum(counts > 0, 0) - 1  # row -> its place among the holders
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(r), device=r.device) - starts[r]
        width = int(counts.max())
        values = torch.full((len(holders), width), -torch.inf, device=r.device)
        ids = torch.full((len(holders), width), -1, dtype=torch.int32, device=r.device)
        values[slot[r], pos] = values_at
        ids[slot[r], pos] = (c + col_first).to(torch.int32)
        self._merge(holders + first, values, ids)

    def _merge(self, rows: torch.Tensor, values: torch.Tensor, ids: torch.Tensor) -> None:
        """Fold (value, row id) candidates into ``rows``' kept scores: the ``keep`` best stay."""
        both_scores = torch.cat([self._scores[rows], values], dim=1)
        both_ids = torch.cat([self._ids[rows], ids], dim=1)
        best = torch.topk(both_scores, self.keep, dim=1)
        self._scores[rows] = best.values
        self._ids[rows] = torch.gather(both_ids, 1, best.indices)

    def candidates(self, row: int) -> np.ndarray | None:
        """Row numbers holding a superset of ``row``'s exact top-``limit`` among the rows live when
        the pass began, or None (not scanned yet, touched, a touched candidate, or ties past ``keep``)."""
        if not self.done or row >= self.used or row in self.touched:
            return None
        scores = self._scores[row].numpy().astype(np.float64)
        finite = scores > -np.inf
        count = int(finite.sum())
        ids = self._ids[row].numpy()
        if count < self.limit:  # fewer live rows than the limit: everyone was kept
            chosen = ids[finite]
        else:
            # kept scores are in descending order (topk, sorted)
            win = window(self.rows.dim, self._widest, len(self.rows.segments),
                         float(self._norms[row]), self.rows.max_norm, offsets=self._offsets is not None)
            bar = scores[self.limit - 1] - win
            if count == self.keep and scores[self.keep - 1] >= bar:
                return None  # rows at or above the bar may have been dropped
            chosen = ids[finite & (scores >= bar)]
        if self.touched and not self.touched.isdisjoint(chosen.tolist()):
            return None
        return chosen.astype(np.int64)
