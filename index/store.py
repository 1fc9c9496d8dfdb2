"""VectorStore: the only module that talks to Milvus (milvus-lite file or a real server).

Three collections, all keyed by product_id:
- ``<prefix>_products``: the fused vector and what is needed to skip stale events and re-use
  unchanged fields (version, per-field content hashes, model, updated_at). Milvus is the system of
  record that recommenders query.
- ``<prefix>_lists``: the neighbour list last published for each product (ids, k-th score, the
  payload). Written only by the refresh step that owns the product's partition; read by the ingest
  step to find whose lists a changed product enters or leaves (``array_contains_any``).
- ``<prefix>_tombstones``: a deleted product's version, kept for a retention period so that an
  older upsert arriving late cannot bring the product back.

Always ``upsert`` (a real server keeps duplicates on insert); searches and queries use Strong
consistency so a refresh sees the writes of the same batch. Flush policy: milvus-lite converts
unflushed rows again on every search, so we flush after ``flush_every_rows`` writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import orjson
from pymilvus import DataType, MilvusClient, MilvusException

from simstream.index.list_mirror import ListHead, ListMirror, stored_boundary
from simstream.errors import IndexUnavailable
from simstream.logs import get_logger

log = get_logger(__name__)

MAX_ID = 256
MAX_PAYLOAD = 65_535
_CONSISTENCY = {"consistency_level": "Strong"}


@dataclass(frozen=True, slots=True)
class StoredProduct:
    product_id: str
    vector: np.ndarray
    version: int
    hashes: dict[str, str]
    model: str
    event_time: int
    updated_at: int = 0


@dataclass(frozen=True, slots=True)
class StoredList:
    product_id: str
    neighbour_ids: list[str]
    kth_score: float  # the list's boundary: everyone outside it scores at most this; -inf: it holds everyone
    payload: bytes  # the published top-k; empty for a tombstone marker
    as_of: int = 0  # when the state it was computed from was read (index.neighbours.BuiltList)


def _hit_id(hit: Any) -> str:
    """pymilvus names a hit's key after the primary field; older servers/clients call it "id"."""
    return hit["product_id"] if "product_id" in hit else hit["id"]


def _quote(ids: Iterable[str]) -> str:
    return "[" + ",".join(orjson.dumps(i).decode() for i in ids) + "]"


def _product(r: dict[str, Any]) -> StoredProduct:
    return StoredProduct(r["product_id"], np.asarray(r.get("vector", ()), dtype=np.float32), int(r["version"]),
                         dict(r["hashes"] or {}), r["model"], int(r["event_time"]), int(r.get("updated_at") or 0))


def _head(r: dict[str, Any]) -> ListHead:
    return ListHead(r["product_id"], tuple(r["neighbor_ids"]), float(r["kth_score"]), int(r.get("updated_at") or 0),
                    int(r.get("as_of") or 0))


_HEAD_FIELDS = ["neighbor_ids", "kth_score", "updated_at", "as_of"]


class VectorStore:
    """One client, plain rows in and out, like ``MilvusClient`` itself."""

    def __init__(self, client: MilvusClient, prefix: str, dim: int, *, flush_every_rows: int = 20_000,
                 index_type: str = "FLAT", exclusive: bool = False) -> None:
        self.client = client
        self.dim = dim
        self.products = f"{prefix}_products"
        self.lists = f"{prefix}_lists"
        self.tombstones = f"{prefix}_tombstones"
        self.flush_every_rows = flush_every_rows
        self.index_type = index_type
        self._unflushed = 0
        # A milvus-lite *file* opens in one process only, so nobody else writes to it: the memory
        # copies below are then complete without syncing. Servers (milvus-lite server, Milvus) are shared.
        self.exclusive = exclusive
        self.side: Any = None  # index.side.SideIndex once enable_side_index() ran
        self.mirror: ListMirror | None = None  # likewise
        self.lists_stamped = False
        self._call(self._ensure_collections)

    @classmethod
    def connect(cls, uri: str, prefix: str, dim: int, *, token: str | None = None, **kwargs: Any) -> "VectorStore":
        if "://" not in uri:
            # milvus-lite file: make sure its directory exists. Only this process can open it.
            from pathlib import Path

            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            kwargs.setdefault("exclusive", True)
        try:
            client = MilvusClient(uri=uri, token=token or "")
        except MilvusException as exc:
            raise IndexUnavailable(f"cannot open Milvus at {uri}: {exc}") from exc
        return cls(client, prefix, dim, **kwargs)

    # --- schema ---------------------------------------------------------------------------
    def _ensure_collections(self) -> None:
        c = self.client
        if not c.has_collection(self.products):
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
            s.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            s.add_field("version", DataType.INT64)
            s.add_field("brand", DataType.VARCHAR, max_length=256)
            s.add_field("category", DataType.VARCHAR, max_length=1000)
            s.add_field("price", DataType.DOUBLE)  # -1 when unknown
            s.add_field("hashes", DataType.JSON)  # per-field content hashes
            s.add_field("model", DataType.VARCHAR, max_length=256)
            s.add_field("updated_at", DataType.INT64)
            s.add_field("event_time", DataType.INT64)
            idx = c.prepare_index_params()
            # FLAT = exact inner product: the exactness promise of the neighbour topic rests on it.
            idx.add_index("vector", index_type=self.index_type, metric_type="IP")
            self._create(self.products, s, idx)
        else:
            fields = {f["name"]: f for f in c.describe_collection(self.products)["fields"]}
            have = int(fields["vector"]["params"]["dim"])
            if have != self.dim:
                raise ValueError(f"collection {self.products} has dim {have} but the encoders give {self.dim}; "
                                 "set SIMSTREAM_COLLECTION to a new name and run `simstream reconcile`")
        if not c.has_collection(self.lists):
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
            s.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one vector field
            s.add_field("neighbor_ids", DataType.ARRAY, element_type=DataType.VARCHAR,
                        max_capacity=1000, max_length=MAX_ID)
            s.add_field("kth_score", DataType.FLOAT)
            s.add_field("payload", DataType.VARCHAR, max_length=MAX_PAYLOAD)
            s.add_field("updated_at", DataType.INT64)  # lets the list mirror sync (index/list_mirror.py)
            s.add_field("as_of", DataType.INT64)  # lets a refresh merge instead of searching
            idx = c.prepare_index_params()
            idx.add_index("dummy", index_type="FLAT", metric_type="L2")
            self._create(self.lists, s, idx)
        if not c.has_collection(self.tombstones):
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
            s.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
            s.add_field("version", DataType.INT64)
            s.add_field("deleted_at", DataType.INT64)
            idx = c.prepare_index_params()
            idx.add_index("dummy", index_type="FLAT", metric_type="L2")
            self._create(self.tombstones, s, idx)
        for name in (self.products, self.lists, self.tombstones):
            c.load_collection(name)
        list_fields = {f["name"] for f in c.describe_collection(self.lists)["fields"]}
        self.lists_stamped = {"updated_at", "as_of"} <= list_fields

    def _create(self, name: str, schema: Any, index_params: Any) -> None:
        """Create a collection; another worker starting at the same moment may win the race."""
        try:
            self.client.create_collection(name, schema=schema, index_params=index_params, **_CONSISTENCY)
        except MilvusException:
            if not self.client.has_collection(name):
                raise
            log.info("collection created concurrently by another worker", collection=name)

    # --- calls ----------------------------------------------------------------------------
    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Every Milvus failure becomes IndexUnavailable, which the stream retries, then crashes on."""
        try:
            return fn(*args, **kwargs)
        except MilvusException as exc:
            raise IndexUnavailable(f"milvus: {exc}") from exc
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise IndexUnavailable(f"milvus unreachable: {exc}") from exc

    def ping(self) -> bool:
        try:
            self._call(self.client.has_collection, self.products)
            return True
        except IndexUnavailable:
            return False

    def _wrote(self, rows: int) -> None:
        self._unflushed += rows
        if self.flush_every_rows and self._unflushed >= self.flush_every_rows:
            self.flush()

    def flush(self) -> None:
        t0 = time.perf_counter()
        for name in (self.products, self.lists, self.tombstones):
            self._call(self.client.flush, name)
        log.info("milvus flushed", rows=self._unflushed, seconds=round(time.perf_counter() - t0, 3))
        self._unflushed = 0

    def _query(self, collection: str, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 1000):
            chunk = list(ids[start:start + 1000])
            out.extend(self._call(self.client.query, collection, filter=f"product_id in {_quote(chunk)}",
                                  output_fields=fields, **_CONSISTENCY))
        return out

    # --- products -------------------------------------------------------------------------
    def get_products(self, ids: Sequence[str]) -> dict[str, StoredProduct]:
        """Stored products (with vectors) as Milvus holds them now: from the synced side index when
        it is enabled, else one query."""
        if self.side is not None:
            self._sync_side()
            return self.side.get(ids)  # type: ignore[no-any-return]
        return self.read_products(ids)

    def read_products(self, ids: Sequence[str], *, with_vectors: bool = True) -> dict[str, StoredProduct]:
        """Stored products, always read from Milvus."""
        fields = ["version", "hashes", "model", "event_time", "updated_at"] + (["vector"] if with_vectors else [])
        return {r["product_id"]: _product(r) for r in self._query(self.products, ids, fields)}

    def upsert_products(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        for start in range(0, len(rows), 256):
            self._call(self.client.upsert, self.products, rows[start:start + 256])
        self._wrote(len(rows))
        if self.side is not None:
            self.side.put([_product(r) for r in rows])
        return len(rows)

    def delete_products(self, ids: Sequence[str]) -> None:
        if ids:
            self._call(self.client.delete, self.products, ids=list(ids))
            self._wrote(len(ids))
            if self.side is not None:
                self.side.delete(ids)

    def _sync_side(self) -> None:
        if not self.exclusive:
            self.side.sync(self)

    def _synced_mirror(self) -> ListMirror | None:
        """The list mirror, synced with Milvus first unless this process owns the store; None when off."""
        if self.mirror is not None and not self.exclusive:
            self.mirror.sync(self)
        return self.mirror

    def snapshot_vectors(self, ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors of the live products among ``ids`` as of the side index's last sync (no new
        sync, so they match what the preceding ``changed_since`` saw); read-only views."""
        return self.side.vectors(ids)  # type: ignore[no-any-return]

    def enable_side_index(self) -> None:
        """Answer searches and product reads from an exact in-memory copy of the products
        (index/side.py), and list-head questions from a mirror of the lists (index/list_mirror.py);
        both built from Milvus now and synced with Milvus before every use."""
        from simstream.index.side import SideIndex

        self.side = SideIndex.from_store(self)
        if self.lists_stamped:
            self.mirror = ListMirror.from_store(self)
        else:
            log.warning("lists collection has no updated_at (created by an older simstream); "
                        "list questions go to Milvus", collection=self.lists)

    def written_since(self, since_ms: int) -> dict[str, int]:
        """product_id -> updated_at of the products written at or after ``since_ms`` (no vectors)."""
        rows = self._call(self.client.query, self.products, filter=f"updated_at >= {int(since_ms)}",
                          output_fields=["updated_at"], **_CONSISTENCY)
        return {r["product_id"]: int(r["updated_at"]) for r in rows}

    def changed_since(self, since_ms: int) -> dict[str, StoredProduct]:
        """Products written at or after ``since_ms``: the concurrent changes a refresh re-checks."""
        if self.side is not None:
            self._sync_side()
            return self.side.get(self.side.written_since(since_ms))  # type: ignore[no-any-return]
        rows = self._call(self.client.query, self.products, filter=f"updated_at >= {int(since_ms)}",
                          output_fields=["version", "hashes", "model", "event_time", "updated_at", "vector"],
                          **_CONSISTENCY)
        return {r["product_id"]: _product(r) for r in rows}

    def search(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, np.ndarray]]]:
        """Top-``limit`` products per query vector, in one call; returns (id, vector) pairs so the
        caller computes exact scores and per-field contributions itself."""
        if len(vectors) == 0:
            return []
        if self.side is not None:
            self._sync_side()
            return self.side.search(vectors, limit)
        out: list[list[tuple[str, np.ndarray]]] = []
        for start in range(0, len(vectors), 256):
            hits = self._call(self.client.search, self.products, data=vectors[start:start + 256].tolist(),
                              limit=limit, output_fields=["vector"], search_params={"metric_type": "IP"},
                              **_CONSISTENCY)
            out.extend([[(_hit_id(h), np.asarray(h["entity"]["vector"], dtype=np.float32)) for h in row]
                        for row in hits])
        return out

    def search_scores(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        """Top-``limit`` (id, inner product as Milvus computes it) per query vector; no vectors are
        fetched, so this is cheap enough for wide candidate searches."""
        if len(vectors) == 0:
            return []
        if self.side is not None:
            self._sync_side()
            return self.side.search_scores(vectors, limit)
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(vectors), 256):
            hits = self._call(self.client.search, self.products, data=vectors[start:start + 256].tolist(),
                              limit=limit, output_fields=["version"], search_params={"metric_type": "IP"},
                              **_CONSISTENCY)
            out.extend([[(_hit_id(h), float(h["distance"])) for h in row] for row in hits])
        return out

    def count(self) -> int:
        rows = self._call(self.client.query, self.products, filter="", output_fields=["count(*)"], **_CONSISTENCY)
        return int(rows[0]["count(*)"])

    def iter_products(self, batch_size: int = 1000, *, with_vectors: bool = False) -> Iterator[list[StoredProduct]]:
        """Every stored product, in pages (for reconcile and the side index)."""
        fields = ["version", "hashes", "model", "event_time", "updated_at"] + (["vector"] if with_vectors else [])
        for page in self._pages(self.products, fields, batch_size):
            yield [_product(r) for r in page]

    def _pages(self, collection: str, fields: list[str], batch_size: int) -> Iterator[list[dict[str, Any]]]:
        """Every row of a collection, page by page (``query_iterator``, closed however we leave)."""
        it = self._call(self.client.query_iterator, collection, batch_size=batch_size, filter="",
                        output_fields=fields)
        try:
            while page := it.next():
                yield page
        finally:
            it.close()

    # --- lists ----------------------------------------------------------------------------
    def get_lists(self, ids: Sequence[str]) -> dict[str, StoredList]:
        rows = self._query(self.lists, ids, ["neighbor_ids", "kth_score", "payload"])
        return {r["product_id"]: StoredList(r["product_id"], list(r["neighbor_ids"]), float(r["kth_score"]),
                                            r["payload"].encode()) for r in rows}

    def listers_of(self, ids: Sequence[str]) -> set[str]:
        """Products whose current list contains any of ``ids`` (the reverse neighbour index)."""
        if (mirror := self._synced_mirror()) is not None:
            return mirror.listers_of(ids)
        out: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            rows = self._call(self.client.query, self.lists,
                              filter=f"array_contains_any(neighbor_ids, {_quote(chunk)})",
                              output_fields=["product_id"], **_CONSISTENCY)
            out.update(r["product_id"] for r in rows)
        return out

    def lists_with_kth_at_most(self, score: float) -> dict[str, float]:
        """Recorded lists whose k-th score is <= ``score`` (short lists count as -inf): the only
        lists a product outside a candidate search can still enter."""
        if (mirror := self._synced_mirror()) is not None:
            return mirror.with_kth_at_most(score)
        rows = self._call(self.client.query, self.lists, filter=f"kth_score <= {float(score)!r}",
                          output_fields=["kth_score", "payload"], **_CONSISTENCY)
        return {r["product_id"]: float(r["kth_score"]) for r in rows if r["payload"]}

    def list_heads(self, ids: Sequence[str]) -> dict[str, ListHead]:
        """Recorded lists without payloads (``ListHead``), tombstone markers included."""
        if (mirror := self._synced_mirror()) is not None:
            return mirror.heads(ids)
        fields = _HEAD_FIELDS if self.lists_stamped else ["neighbor_ids", "kth_score"]
        return {r["product_id"]: _head(r) for r in self._query(self.lists, ids, fields)}

    def list_kth_scores(self, ids: Sequence[str]) -> dict[str, float]:
        """k-th score of each recorded list among ``ids`` (tombstone markers left out)."""
        if (mirror := self._synced_mirror()) is not None:
            return mirror.kth_scores(ids)
        rows = self._query(self.lists, ids, ["kth_score", "payload"])
        return {r["product_id"]: float(r["kth_score"]) for r in rows if r["payload"]}

    def upsert_lists(self, lists: list[StoredList]) -> None:
        """A list with an empty payload is a tombstone marker: "a tombstone was published"."""
        written_at = int(time.time() * 1000)
        rows: list[dict[str, Any]] = [{"product_id": x.product_id, "dummy": [0.0, 0.0], "neighbor_ids": x.neighbour_ids,
                 "kth_score": stored_boundary(x.kth_score, tombstone=not x.payload), "payload": x.payload.decode()}
                for x in lists]
        if self.lists_stamped:
            for row, x in zip(rows, lists):
                row["updated_at"] = written_at
                row["as_of"] = x.as_of
        for start in range(0, len(rows), 256):
            self._call(self.client.upsert, self.lists, rows[start:start + 256])
        self._wrote(len(rows))
        if self.mirror is not None:
            self.mirror.put([ListHead(r["product_id"], tuple(r["neighbor_ids"]), r["kth_score"], written_at, r["as_of"])
                             for r in rows])

    def iter_list_heads(self, batch_size: int = 2000) -> Iterator[list[ListHead]]:
        """Every recorded list without its payload, in pages (for the list mirror)."""
        for page in self._pages(self.lists, _HEAD_FIELDS, batch_size):
            yield [_head(r) for r in page]

    def list_heads_since(self, since_ms: int) -> list[ListHead]:
        """Lists recorded at or after ``since_ms``, without payloads."""
        rows = self._call(self.client.query, self.lists, filter=f"updated_at >= {int(since_ms)}",
                          output_fields=_HEAD_FIELDS, **_CONSISTENCY)
        return [_head(r) for r in rows]

    def all_list_ids(self) -> set[str]:
        return {r["product_id"] for page in self._pages(self.lists, ["product_id"], 2000) for r in page}

    # --- tombstones -----------------------------------------------------------------------
    def get_tombstones(self, ids: Sequence[str]) -> dict[str, int]:
        return {r["product_id"]: int(r["version"]) for r in self._query(self.tombstones, ids, ["version"])}

    def deleted_since(self, since_ms: int) -> set[str]:
        rows = self._call(self.client.query, self.tombstones, filter=f"deleted_at >= {int(since_ms)}",
                          output_fields=["product_id"], **_CONSISTENCY)
        return {r["product_id"] for r in rows}

    def upsert_tombstones(self, versions: dict[str, int], now_ms: int) -> None:
        rows = [{"product_id": pid, "dummy": [0.0, 0.0], "version": v, "deleted_at": now_ms}
                for pid, v in versions.items()]
        if rows:
            self._call(self.client.upsert, self.tombstones, rows)
            self._wrote(len(rows))

    def delete_tombstones(self, ids: Sequence[str]) -> None:
        if ids:
            self._call(self.client.delete, self.tombstones, ids=list(ids))

    def purge_tombstones(self, older_than_ms: int) -> None:
        """Forget delete markers past their retention (docs/exactness.md explains the trade-off)."""
        self._call(self.client.delete, self.tombstones, filter=f"deleted_at < {int(older_than_ms)}")

    def close(self) -> None:
        self.client.close()
