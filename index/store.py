"""VectorStore: Milvus as the system of record, answered from exact in-memory copies when enabled.

``MilvusStore`` (index/milvus.py) only talks to Milvus; ``SideIndex`` and ``ListMirror`` only hold
memory. This layer keeps the copies in step and answers the stream's questions:

- built from Milvus at start (every product with its vector, every list head);
- this worker's own writes are applied to the copies as they are made;
- before every read, a sync applies what *any* writer did since the last sync: products written
  and lists recorded at or after (last sync - ``RACE_LOOKBACK_MS``), and products deleted in that
  window (their tombstones, which the tombstone mirror keeps with their versions). So with several
  workers sharing a Milvus server, a read sees every write that was visible in Milvus when the
  sync ran, as a Strong-consistency Milvus query would; writes landing later are caught by the
  refresh step's race re-check (docs/exactness.md).
- A milvus-lite *file* opens in one process only, so there nothing needs syncing.
- Before building, the copies' footprint is checked against the process's memory limit
  (``index/budget.py``): MemoryBudgetExceeded names the numbers instead of an OOM kill mid-build.
- Purged list tombstone markers leave this worker's mirror by the same rule as Milvus; another
  worker's mirror drops them at its own next purge (until then it reports an old marker, which
  stands for the same thing as no list: a tombstone published long ago). Product delete markers
  likewise; and a marker another worker removed when the product came back stays held until
  then, which changes no answer: a product's current version is the larger of its row's and its
  marker's, and the returned product's row is the newer.

Without the copies (``SIMSTREAM_SIDE_INDEX=false``) every question is a Milvus query.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from simstream.clock import RACE_LOOKBACK_MS, now_ms
from simstream.errors import IndexUnavailable
from simstream.index.all_pairs import AllPairs
from simstream.index.budget import BUILD_PAGE_ROWS, Footprint, check_fits, side_capacity
from simstream.index.list_mirror import ListMirror
from simstream.index.milvus import DEFAULT_TIMEOUT_S, MilvusStore
from simstream.index.packed_rows import memory_per_row
from simstream.index.rows import HeadFacts, ListHead, StoredList, StoredProduct
from simstream.index.side import SideIndex
from simstream.index.snapshot import identity, read_snapshot, write_snapshot
from simstream.index.tombstone_mirror import TombstoneMirror
from simstream.logs import get_logger
from simstream.memory import current_rss, memory_limit
from simstream.vector_codec import Segment

__all__ = ["VectorStore", "REGRESSION_PROBE", "COUNT_CHECK_TRIES", "COUNT_CHECK_PAUSE_S"]

log = get_logger(__name__)
T = TypeVar("T")

# A restored snapshot's newest rows are looked up in Milvus first: one of them older there means
# Milvus went back in time (a backup restored) and the snapshot is not used.
REGRESSION_PROBE = 64
# Then the counts: a count read just after a sync may include a write made in between by a live
# worker (a row added or deleted), so a differing count is synced and read again this many times
# before the copy is checked row by row (which took 132 s at 100k beside a busy server).
COUNT_CHECK_TRIES = 5
COUNT_CHECK_PAUSE_S = 0.2


class _NotUsable(Exception):
    """A snapshot found not to fit Milvus after all."""


class VectorStore:
    """The index as the stream sees it: one object, plain records in and out."""

    def __init__(self, milvus: MilvusStore, *, memory_limit_bytes: int | None = None,
                 segments: Sequence[Segment] | None = None) -> None:
        """``memory_limit_bytes``: the limit the copies must fit in; None: detected (cgroup, RAM).
        ``segments``: how the side index stores the vectors (the encoder's, simstream.vector_codec);
        None: float32."""
        self.milvus = milvus
        self.metric = milvus.metric  # what a score is (simstream.metric): the collections' own
        self.dim = milvus.dim
        self.segments = list(segments) if segments else None
        self.memory_limit_bytes = memory_limit_bytes
        self.side: SideIndex | None = None
        self.mirror: ListMirror | None = None
        self.tombstones: TombstoneMirror | None = None  # beside the side index
        self._side_synced_at = 0
        self._mirror_synced_at = 0
        # Inside ``one_sync``: which copies were synced since it began (None: sync before every read)
        self._synced_once: set[str] | None = None
        self._readers: ThreadPoolExecutor | None = None  # concurrent sync reads (a server only)
        # Counts the writes applied to the copies (own and synced): a snapshot is due only when it moved
        self.changes = 0
        self.restored = False  # whether the copies came from a snapshot (else built from Milvus, or none)

    @classmethod
    def connect(cls, uri: str, prefix: str, dim: int, *, token: str | None = None, in_memory: bool = False,
                timeout_s: float = DEFAULT_TIMEOUT_S, memory_limit_bytes: int | None = None,
                segments: Sequence[Segment] | None = None, snapshot: Path | None = None,
                **kwargs: Any) -> "VectorStore":
        """Open the index; ``timeout_s`` is the deadline of every Milvus call, ``in_memory`` builds
        the copies (within ``memory_limit_bytes``, else the detected limit), restored from
        ``snapshot`` when it is there and fits (index/snapshot.py). Other ``kwargs`` go to
        ``MilvusStore``. Nothing stays open when this raises."""
        store = cls(MilvusStore.connect(uri, prefix, dim, token=token, timeout_s=timeout_s, **kwargs),
                    memory_limit_bytes=memory_limit_bytes, segments=segments)
        if in_memory:
            try:
                store.load_into_memory(snapshot)
            except BaseException:
                store.close()
                raise
        return store

    def footprint(self) -> Footprint:
        """Estimated bytes of the in-memory copies of what Milvus holds now (index/budget.py)."""
        lists = self.milvus.count_lists() if self.milvus.lists_stamped else 0
        row_bytes = memory_per_row(self.segments) if self.segments else self.dim * 4
        return Footprint(self.milvus.count_products(), self.dim, lists, self.milvus.sample_list_depth() if lists else 0.0,
                         row_bytes=row_bytes)

    def load_into_memory(self, snapshot: Path | None = None) -> None:
        """Build the side index and the list mirror from Milvus, or restore them from ``snapshot``
        when it is there and fits (index/snapshot.py); from now on reads use them. Raises
        MemoryBudgetExceeded, before allocating, when they would not fit (index/budget.py)."""
        need = self.footprint()
        limit = memory_limit(self.memory_limit_bytes)
        rss = current_rss()
        check_fits(need, limit, rss)
        log.info("in-memory index copies fit", need_mib=need.total >> 20, limit_mib=limit.bytes >> 20 if limit else None,
                 limit_source=limit.source if limit else None, rss_mib=rss >> 20)
        if snapshot is not None and self._restore(snapshot, need, limit.bytes if limit else None):
            return
        t0 = time.perf_counter()
        started = now_ms()
        side = SideIndex(self.dim, capacity=side_capacity(need.products), segments=self.segments, metric=self.metric)
        for page in self.milvus.iter_products(BUILD_PAGE_ROWS, with_vectors=True):
            side.put(page)
        self.side, self._side_synced_at = side, started
        log.info("side index built", products=len(side), seconds=round(time.perf_counter() - t0, 2),
                 bytes_per_vector=side.row_bytes, loose_rows=side.loose_rows)
        tombstones = TombstoneMirror()  # delete markers: this process's own, and others' with each sync
        for markers in self.milvus.iter_tombstones():
            for pid, version, deleted_at in markers:
                tombstones.put({pid: version}, deleted_at)
        self.tombstones = tombstones
        if not self.milvus.lists_stamped:
            log.warning("lists collection has no updated_at (created by an older simstream); "
                        "list questions go to Milvus", collection=self.milvus.lists)
            return
        t0 = time.perf_counter()
        started = now_ms()
        mirror = ListMirror()
        for heads in self.milvus.iter_list_heads():
            mirror.put(heads)
        self.mirror, self._mirror_synced_at = mirror, started
        side.set_bars(mirror.boundaries(side.ids()))
        log.info("list mirror built", lists=len(mirror), seconds=round(time.perf_counter() - t0, 2))

    # --- snapshots ------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return identity(self.milvus.products.removesuffix("_products"), self.dim, self.segments,
                        self.milvus.collection_ids())

    def save_snapshot(self, path: Path) -> int | None:
        """Write the copies to ``path`` (index/snapshot.py), stamped with the times they were last
        in step with Milvus; returns the bytes written, None without copies. Own writes are
        applied as they are made, so a milvus-lite file's copies (no other writer) stand at now."""
        if self.side is None or self.tombstones is None:
            return None
        t0 = time.perf_counter()
        now = now_ms()
        side_at, mirror_at = (now, now) if self.milvus.exclusive else (self._side_synced_at, self._mirror_synced_at)
        size = write_snapshot(path, self._identity(), side=self.side, mirror=self.mirror, tombstones=self.tombstones,
                              side_synced_at=side_at, mirror_synced_at=mirror_at)
        log.info("snapshot written", path=str(path), mib=size >> 20, products=len(self.side),
                 lists=len(self.mirror) if self.mirror is not None else None, seconds=round(time.perf_counter() - t0, 2))
        return size

    def _restore(self, path: Path, need: Footprint, limit: int | None) -> bool:
        """Restore the copies from the snapshot at ``path`` and bring them in step with Milvus:
        the regular sync from the snapshot's times (every row written and every delete marker
        since, less the skew allowance), then the counts. The sync can miss only a row deleted
        without a marker it reads (a marker purged since, a collection emptied by hand), which
        leaves the copy with more rows than Milvus; on a count that still differs after a few syncs
        (``_counts_differ``), the copy is checked row by row against Milvus' write stamps (ids and
        times, no vectors). False: no usable
        snapshot (the caller builds from Milvus)."""
        t0 = time.perf_counter()
        snap = read_snapshot(path, self._identity(), capacity=side_capacity(need.products), max_bytes=limit,
                             segments=self.segments, metric=self.metric)
        if snap is None:
            return False
        read_s = time.perf_counter() - t0
        self.side, self.tombstones, self.restored = snap.side, snap.tombstones, True
        self.mirror = snap.mirror if self.milvus.lists_stamped else None
        self._side_synced_at, self._mirror_synced_at = snap.side_synced_at, snap.mirror_synced_at
        before = self.side.applied
        newest = self.side.newest(REGRESSION_PROBE)
        try:
            # Milvus must not be older than the snapshot (restored from a backup): then the
            # snapshot's newest rows would be missing or older there, and the sync, which reads
            # only what is newer, could not tell.
            there = {pid: p.updated_at for pid, p in self.milvus.read_products(list(newest), with_vectors=False).items()}
            if any(there.get(pid, t) < t for pid, t in newest.items()):
                log.warning("Milvus holds older rows than the snapshot (restored from a backup?); building from Milvus")
                raise _NotUsable
            checked = self._counts_differ()
            if "products" in checked:
                self._reconcile_side()
            if "lists" in checked:
                self._reconcile_mirror()
        except IndexUnavailable:
            raise  # Milvus down: the caller waits for it, as for a build
        except Exception as exc:  # anything else: the snapshot is not worth a failed start
            if not isinstance(exc, _NotUsable):
                log.warning("catching a snapshot up failed; building from Milvus", error=repr(exc)[:300])
            self.side = self.mirror = self.tombstones = None
            self.restored = False
            return False
        caught_up = self.side.applied - before
        if self.mirror is not None:
            self.side.set_bars(self.mirror.boundaries(self.side.ids()))
        log.info("copies restored from a snapshot", path=str(path), products=len(self.side),
                 lists=len(self.mirror) if self.mirror is not None else None, mib=snap.bytes >> 20,
                 age_s=round((now_ms() - snap.taken_at) / 1000, 1), read_s=round(read_s, 2),
                 caught_up_writes=caught_up, checked_row_by_row=checked, seconds=round(time.perf_counter() - t0, 2))
        return True

    def _counts_differ(self) -> list[str]:
        """The copies ("products", "lists") whose count still differs from Milvus' after a sync,
        read again up to ``COUNT_CHECK_TRIES`` times: other workers keep writing while a joiner
        restores, and a write between a sync and the count is caught by the next sync; a row
        deleted without a marker is not, and its count differs every time."""
        copies = {"side", "mirror"} if self.mirror is not None else {"side"}
        differ: list[str] = []
        for attempt in range(COUNT_CHECK_TRIES):
            if attempt:
                time.sleep(COUNT_CHECK_PAUSE_S)
            self._sync(copies)
            assert self.side is not None
            differ = ["products"] if len(self.side) != self.milvus.count_products() else []
            if self.mirror is not None and len(self.mirror) != self.milvus.count_lists():
                differ.append("lists")
            if not differ:
                break
        return differ

    def _reconcile_side(self) -> None:
        """Make the side index hold exactly Milvus' products: fetch those it does not hold at their
        write stamp, drop those Milvus no longer has."""
        assert self.side is not None
        stamps = self.milvus.all_write_stamps()
        for start in range(0, len(fetch := self.side.not_held(stamps)), BUILD_PAGE_ROWS):
            got = self.milvus.read_products(fetch[start:start + BUILD_PAGE_ROWS])
            self.side.put(list(got.values()))
        self.side.delete([pid for pid in self.side.ids() if pid not in stamps])

    def _reconcile_mirror(self) -> None:
        """Make the list mirror hold exactly Milvus' recorded lists (heads by write stamp)."""
        assert self.mirror is not None
        stamps = self.milvus.all_write_stamps(lists=True)
        held = self.mirror.heads(stamps)
        stale = sorted(pid for pid, t in stamps.items() if (h := held.get(pid)) is None or h.updated_at != t)
        for start in range(0, len(stale), BUILD_PAGE_ROWS):
            self.mirror.put(self.milvus.read_list_heads(stale[start:start + BUILD_PAGE_ROWS]).values())
        self.mirror.drop([pid for pid in self.mirror.owners() if pid not in stamps])

    # --- keeping the copies in step -----------------------------------------------------------
    @contextlib.contextmanager
    def one_sync(self) -> Iterator[None]:
        """Answer the reads inside from one sync of the copies with Milvus, made at the first
        read, instead of one before every read: as Strong-consistency queries issued at that
        moment would be answered (docs/exactness.md §2a says why a step may read so). Beside a
        Milvus server each Strong read waits for the server's time tick (200 ms by default), so a
        step that asks a dozen questions waits about once. Nothing changes for a milvus-lite file,
        which never syncs."""
        outer, self._synced_once = self._synced_once, set()
        try:
            yield
        finally:
            self._synced_once = outer

    def _due(self, copy: str) -> set[str]:
        """The copies to sync before this read of ``copy``: ``copy`` itself, always outside
        ``one_sync``; inside it, once, and then the other copy too (its reads go out together)."""
        if self._synced_once is None:
            return {copy}
        if copy in self._synced_once:
            return set()
        due = {c for c, held in (("side", self.side), ("mirror", self.mirror))
               if held is not None and c not in self._synced_once} | {copy}
        self._synced_once |= due
        return due

    def _synced_side(self) -> SideIndex | None:
        """The side index with every write visible in Milvus applied; None when off."""
        if self.side is not None and not self.milvus.exclusive:
            self._sync(self._due("side"))
        return self.side

    def _synced_mirror(self) -> ListMirror | None:
        """The list mirror with every list recorded in Milvus applied; None when off."""
        if self.mirror is not None and not self.milvus.exclusive:
            self._sync(self._due("mirror"))
        return self.mirror

    def _sync(self, copies: set[str]) -> None:
        """Apply what any worker wrote to Milvus since the last sync (less the skew allowance) to
        ``copies``. The Strong reads go out together: each waits for the server's time tick, so
        together they wait about one."""
        if not copies:
            return
        started = now_ms()
        reads: dict[str, Callable[[], Any]] = {}
        if "side" in copies:
            since = self._side_synced_at - RACE_LOOKBACK_MS
            reads["deleted"] = lambda: self.milvus.tombstones_since(since)
            reads["stamps"] = lambda: self.milvus.write_stamps_since(since)
        if "mirror" in copies:
            reads["heads"] = lambda: self.milvus.list_heads_since(self._mirror_synced_at - RACE_LOOKBACK_MS)
        got = self._together(reads)
        if (side := self.side) is not None and "side" in copies:
            # Vectors are read only for rows not held at that updated_at already (own writes carry
            # their stamp), so a single worker's sync reads no vector.
            stamps, markers = got["stamps"], got["deleted"]
            deleted = {pid for pid, _, _ in markers}
            if self.tombstones is not None:
                for pid, version, deleted_at in markers:
                    self.tombstones.put({pid: version}, deleted_at)
            if fetch := side.not_held(stamps):
                self.changes += 1
                products = self.milvus.read_products(fetch)
                self._put_side([products[pid] for pid in fetch if pid in products])
            if gone := deleted - stamps.keys():
                self.changes += 1
                side.delete(gone)
            self._side_synced_at = started
        if (mirror := self.mirror) is not None and "mirror" in copies:
            if new := mirror.not_held(got["heads"]):
                self.changes += 1
                self._put_heads(new)
            self._mirror_synced_at = started

    def _together(self, reads: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
        """Run ``reads`` concurrently (threads: the client waits on the network) and return their
        results by name; the first failure is raised."""
        if len(reads) == 1:
            return {name: read() for name, read in reads.items()}
        if self._readers is None:
            self._readers = ThreadPoolExecutor(max_workers=3, thread_name_prefix="milvus-sync")
        futures = {name: self._readers.submit(read) for name, read in reads.items()}
        return {name: future.result() for name, future in futures.items()}

    # --- products -------------------------------------------------------------------------
    def get_products(self, ids: Sequence[str]) -> dict[str, StoredProduct]:
        """Stored products with vectors, as Milvus holds them now."""
        if (side := self._synced_side()) is not None:
            return side.get(ids)
        return self.milvus.read_products(ids)

    def upsert_products(self, rows: list[dict[str, Any]]) -> None:
        """Write product rows (``index.rows.product_row``)."""
        if not rows:
            return
        self.changes += 1
        stored = self.milvus.upsert_products(rows)
        if self.side is not None:
            self._put_side(stored)

    def _put_side(self, products: Sequence[StoredProduct]) -> None:
        """Put products into the side index with the boundaries of their recorded lists."""
        assert self.side is not None
        self.side.put(products)
        if self.mirror is not None:
            self.side.set_bars(self.mirror.boundaries(p.product_id for p in products))

    def _put_heads(self, heads: Sequence[ListHead], facts: Mapping[str, HeadFacts] | None = None) -> None:
        """Hold recorded list heads in the mirror, and their boundaries beside the side index's rows."""
        assert self.mirror is not None
        self.mirror.put(heads, facts)
        if self.side is not None:
            owners = {h.product_id for h in heads}
            bars = self.mirror.boundaries(owners)
            self.side.set_bars({pid: bars.get(pid, np.inf) for pid in owners})

    def delete_products(self, ids: Sequence[str]) -> None:
        self.changes += 1
        self.milvus.delete_products(ids)
        if self.side is not None:
            self.side.delete(ids)

    def changed_since(self, since_ms: int) -> dict[str, StoredProduct]:
        """Products written at or after ``since_ms``: the concurrent changes a refresh re-checks."""
        if (side := self._synced_side()) is not None:
            return side.get(side.ids_written_since(since_ms))
        return self.milvus.read_changed_since(since_ms)

    def view(self) -> int | None:
        """Where the in-memory copy stands now (the side index's write sequence number): a step
        that takes it right after its first read, inside ``one_sync``, can later ask what changed
        since it read (``changes_after``). None without the side index."""
        return self.side.applied if self.side is not None else None

    def changes_after(self, view: int | None, since_ms: int) -> tuple[dict[str, StoredProduct], set[str]]:
        """Products written and ids deleted since a step read, after a sync: with the side index,
        exactly the writes applied to it after ``view`` (what that step could not have seen);
        else (or when ``view`` is too old to tell) every product written and deleted at or after
        ``since_ms`` as Milvus has them, a superset."""
        if view is not None and (side := self._synced_side()) is not None \
                and (after := side.changes_after(view)) is not None:
            put, deleted = after
            return side.get(put), deleted
        changed = self.changed_since(since_ms)  # with the side index: one sync, the markers' too
        if self.tombstones is not None:
            return changed, self.tombstones.deleted_since(since_ms)
        return changed, self.milvus.deleted_since(since_ms)

    def count_written_since(self, times_ms: Sequence[int]) -> list[int]:
        """Per time, how many live products were written at or after it (as of the last sync).
        Needs the side index."""
        assert self.side is not None
        return self.side.count_written_since(times_ms)

    def written_at(self, ids: Iterable[str]) -> dict[str, int]:
        """When each live product among ``ids`` was last written, as of the last sync (no new sync).
        Needs the side index."""
        assert self.side is not None
        return self.side.written_at(ids)

    def reaching_written_since(self, vectors: np.ndarray, cuts: Sequence[int], bars: Sequence[float],
                               ) -> list[list[tuple[str, np.ndarray]]]:
        """Per query j, the products written at or after ``cuts[j]`` whose score with
        ``vectors[j]`` may reach ``bars[j]`` (a superset; -inf: all), with their vectors, after a
        sync (``written_at`` and ``snapshot_vectors`` after it answer from the same state). Needs
        the side index."""
        side = self._synced_side()
        assert side is not None
        return side.reaching_written_since(vectors, cuts, bars)

    def snapshot_vectors(self, ids: Sequence[str] | set[str]) -> dict[str, np.ndarray]:
        """Vectors of the live products among ``ids`` as of the last sync (no new sync, so they
        match what the preceding ``changed_since`` saw); read-only views. Needs the side index."""
        if self.side is None:
            return {pid: p.vector for pid, p in self.milvus.read_products(sorted(ids)).items()}
        return self.side.vectors(ids)

    def search(self, vectors: np.ndarray, limit: int, *, ids: Sequence[str] | None = None,
               scan: AllPairs | None = None) -> list[list[tuple[str, np.ndarray]]]:
        """Top-``limit`` products per query vector: (id, vector) pairs, so the caller computes exact
        scores and per-field contributions itself. ``scan``/``ids``: an every-list pass's
        candidates for the queries' own products (``all_pairs``), used where they still hold."""
        if len(vectors) == 0:
            return []
        if (side := self._synced_side()) is not None:
            return side.search(vectors, limit, ids=ids, scan=scan)
        return self.milvus.search(vectors, limit)

    def all_pairs(self, limit: int) -> AllPairs | None:
        """An every-list pass over the side index (index/all_pairs.py), after a sync; None without
        the side index (every list is then a Milvus search)."""
        started = now_ms()  # before the sync: writes it misses are younger
        side = self._synced_side()
        return None if side is None else side.all_pairs(limit, started_ms=started)

    def search_reaching(self, vectors: np.ndarray, limit: int, margin: float,
                        ) -> tuple[list[list[tuple[str, float]]], list[set[str]]] | None:
        """``search_scores``, and per query every product whose recorded list it may enter (score
        >= the list's boundary - ``margin``, a superset), in one pass over the side index; None
        without the side index and the list mirror (the caller then searches and checks the
        boundaries itself)."""
        side, mirror = self._synced_side(), self._synced_mirror()
        if side is None or mirror is None or len(vectors) == 0:
            return None
        return side.search_reaching(vectors, limit, margin)

    def search_scores(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        """Top-``limit`` (id, score) per query vector; cheap enough for wide candidate searches."""
        if len(vectors) == 0:
            return []
        if (side := self._synced_side()) is not None:
            return side.search_scores(vectors, limit)
        return self.milvus.search_scores(vectors, limit)

    def product_count(self) -> int:
        """Live products: from the side index when there is one, else a Milvus count."""
        side = self._synced_side()
        return len(side) if side is not None else self.milvus.count_products()

    def iter_products(self, batch_size: int = 1000) -> Iterator[list[StoredProduct]]:
        return self.milvus.iter_products(batch_size)

    # --- lists ----------------------------------------------------------------------------
    def get_lists(self, ids: Sequence[str]) -> dict[str, StoredList]:
        """Recorded lists with their payloads (always from Milvus)."""
        return self.milvus.read_lists(ids)

    def _from_lists(self, from_mirror: Callable[[ListMirror], T], from_milvus: Callable[[], T]) -> T:
        """A question about the recorded lists, answered by the in-memory mirror when it is in step
        with Milvus, else by Milvus itself."""
        mirror = self._synced_mirror()
        return from_mirror(mirror) if mirror is not None else from_milvus()

    def listers_of(self, ids: Sequence[str]) -> set[str]:
        """Products whose current list contains any of ``ids`` (the reverse neighbour index)."""
        return self._from_lists(lambda mirror: mirror.listers_of(ids), lambda: self.milvus.read_listers_of(ids))

    def list_boundaries(self, ids: Sequence[str]) -> dict[str, float]:
        """Boundary of each recorded list among ``ids`` (tombstone markers left out)."""
        return self._from_lists(lambda mirror: mirror.boundaries(ids), lambda: self.milvus.read_boundaries(ids))

    def lists_with_boundary_at_most(self, score: float) -> dict[str, float]:
        """Recorded lists whose boundary is <= ``score`` (lists holding everyone count as -inf):
        the only lists a product outside a candidate search can still enter."""
        return self._from_lists(lambda mirror: mirror.boundaries_at_most(score), lambda: self.milvus.read_boundaries_at_most(score))

    def list_heads(self, ids: Sequence[str]) -> dict[str, ListHead]:
        """Recorded lists without payloads, tombstone markers included. A held head that does not
        carry its members' scores yet gets what its writer recorded beside it (``HeadFacts``), read
        once from Milvus: from then on it merges and diffs from memory."""
        mirror = self._synced_mirror()
        if mirror is None:
            return self.milvus.read_list_heads(ids)
        heads = mirror.heads(ids)
        cold = [pid for pid, h in heads.items() if not h.scores and not h.is_tombstone]
        if cold and self.milvus.lists_facts:
            read = self.milvus.read_head_facts(cold)
            mirror.keep_known({pid: (heads[pid], facts) for pid, (updated_at, as_of, facts) in read.items()
                               if (updated_at, as_of) == (heads[pid].updated_at, heads[pid].as_of)})
            heads = mirror.heads(ids)
        return heads

    def upsert_lists(self, lists: Sequence[StoredList], facts: Mapping[str, HeadFacts] | None = None) -> None:
        """Record lists (an empty payload is a tombstone marker) with what the writer knows beside
        them (``facts``: the content digest, the owner's row, the deep members' exact scores), in
        Milvus and beside the heads in memory."""
        written_at = now_ms()
        self.changes += 1
        heads = self.milvus.upsert_lists(lists, written_at, facts)
        if self.mirror is not None:
            self._put_heads(heads, facts)

    def keep_known(self, known: Mapping[str, tuple[ListHead, HeadFacts]]) -> None:
        """Hold ``HeadFacts`` beside heads in memory, for each owner whose held head is still the
        given one; nothing is written to Milvus."""
        if self.mirror is not None and known:
            self.mirror.keep_known(known)

    def list_digests(self, ids: Sequence[str]) -> dict[str, bytes]:
        """Content digests of the recorded lists among ``ids`` that are known to belong to the
        recorded payload (held beside the head, or recorded with it); the others are not answered."""
        mirror = self._synced_mirror()
        if mirror is not None:
            return mirror.digests(ids)
        return {pid: facts.digest for pid, (_, _, facts) in self.milvus.read_head_facts(ids).items()}

    def list_owners(self) -> list[str]:
        """Every product in the index and every product with a recorded list (a list whose owner is
        gone gets its tombstone), sorted: whose lists a full refresh computes. From the side index
        and the list mirror when there are (after a sync), else ids alone read from Milvus."""
        side, mirror = self._synced_side(), self._synced_mirror()
        products = set(side.ids()) if side is not None else self.milvus.all_product_ids()
        return sorted(products | (mirror.owners() if mirror is not None else self.all_list_ids()))

    def all_list_ids(self) -> set[str]:
        return self.milvus.all_list_ids()

    # --- tombstones -----------------------------------------------------------------------
    def get_tombstones(self, ids: Sequence[str]) -> dict[str, int]:
        """The delete marker's version of each id among ``ids`` that has one."""
        if self.tombstones is not None:
            self._synced_side()  # other workers' markers arrive with the side index's sync
            return self.tombstones.versions(ids)
        return self.milvus.read_tombstones(ids)

    def deleted_since(self, since_ms: int) -> set[str]:
        """Products whose delete marker was written at or after ``since_ms``."""
        if self.tombstones is not None:
            self._synced_side()
            return self.tombstones.deleted_since(since_ms)
        return self.milvus.deleted_since(since_ms)

    def upsert_tombstones(self, versions: dict[str, int], deleted_at: int) -> None:
        self.changes += 1
        self.milvus.upsert_tombstones(versions, deleted_at)
        if self.tombstones is not None:
            self.tombstones.put(versions, deleted_at)

    def delete_tombstones(self, ids: Sequence[str]) -> None:
        self.changes += 1
        self.milvus.delete_tombstones(ids)
        if self.tombstones is not None:
            self.tombstones.remove(ids)

    def purge_tombstones(self, older_than_ms: int) -> None:
        """Forget product tombstones and list tombstone markers recorded before ``older_than_ms``,
        in Milvus and in the list mirror (the same rule: ``MilvusStore.purge_list_markers``)."""
        self.changes += 1
        self.milvus.purge_tombstones(older_than_ms)
        if self.tombstones is not None:
            self.tombstones.purge(older_than_ms)
        self.milvus.purge_list_markers(older_than_ms)
        if self.mirror is not None:
            self.mirror.remove_markers_older_than(older_than_ms)

    # --- lifecycle ------------------------------------------------------------------------
    def flush(self) -> None:
        self.milvus.flush()

    def ping(self) -> bool:
        return self.milvus.ping()

    def close(self) -> None:
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        self.milvus.close()
