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

from streams.errors import IndexUnavailable
from streams.logs import get_logger

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


@dataclass(frozen=True, slots=True)
class StoredList:
    product_id: str
    neighbor_ids: list[str]
    kth_score: float  # -inf when the list holds fewer than k neighbours: anyone may enter
    payload: bytes


def _hit_id(hit: Any) -> str:
    """pymilvus names a hit's key after the primary field; older servers/clients call it "id"."""
    return hit["product_id"] if "product_id" in hit else hit["id"]


def _quote(ids: Iterable[str]) -> str:
    return "[" + ",".join(orjson.dumps(i).decode() for i in ids) + "]"


class VectorStore:
    """One client, plain rows in and out, like ``MilvusClient`` itself."""

    def __init__(self, client: MilvusClient, prefix: str, dim: int, *, flush_every_rows: int = 20_000,
                 index_type: str = "FLAT") -> None:
        self.client = client
        self.dim = dim
        self.products = f"{prefix}_products"
        self.lists = f"{prefix}_lists"
        self.tombstones = f"{prefix}_tombstones"
        self.flush_every_rows = flush_every_rows
        self.index_type = index_type
        self._unflushed = 0
        self.side: Any = None  # index.side.SideIndex once enable_side_index() ran
        self._call(self._ensure_collections)

    @classmethod
    def connect(cls, uri: str, prefix: str, dim: int, *, token: str | None = None, **kwargs: Any) -> "VectorStore":
        if "://" not in uri:
            # milvus-lite file: make sure its directory exists.
            from pathlib import Path

            Path(uri).parent.mkdir(parents=True, exist_ok=True)
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
    def get_products(self, ids: Sequence[str], *, with_vectors: bool = True) -> dict[str, StoredProduct]:
        fields = ["version", "hashes", "model", "event_time"] + (["vector"] if with_vectors else [])
        rows = self._query(self.products, ids, fields)
        return {
            r["product_id"]: StoredProduct(
                r["product_id"], np.asarray(r.get("vector", ()), dtype=np.float32), int(r["version"]),
                dict(r["hashes"] or {}), r["model"], int(r["event_time"]))
            for r in rows
        }

    def upsert_products(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        for start in range(0, len(rows), 256):
            self._call(self.client.upsert, self.products, rows[start:start + 256])
        self._wrote(len(rows))
        if self.side is not None:
            self.side.upsert([r["product_id"] for r in rows], [np.asarray(r["vector"], np.float32) for r in rows],
                             [int(r["updated_at"]) for r in rows])
        return len(rows)

    def delete_products(self, ids: Sequence[str]) -> None:
        if ids:
            self._call(self.client.delete, self.products, ids=list(ids))
            self._wrote(len(ids))
            if self.side is not None:
                self.side.delete(ids)

    def enable_side_index(self) -> None:
        """Answer search/search_scores from an exact in-memory copy of the vectors (index/side.py),
        built from Milvus now and synced with Milvus before every search."""
        from index.side import SideIndex

        self.side = SideIndex.from_store(self)

    def written_since(self, since_ms: int) -> dict[str, int]:
        """product_id -> updated_at of the products written at or after ``since_ms`` (no vectors)."""
        rows = self._call(self.client.query, self.products, filter=f"updated_at >= {int(since_ms)}",
                          output_fields=["updated_at"], **_CONSISTENCY)
        return {r["product_id"]: int(r["updated_at"]) for r in rows}

    def changed_since(self, since_ms: int) -> dict[str, StoredProduct]:
        """Products written at or after ``since_ms``: the concurrent changes a refresh re-checks."""
        rows = self._call(self.client.query, self.products, filter=f"updated_at >= {int(since_ms)}",
                          output_fields=["version", "hashes", "model", "event_time", "vector"], **_CONSISTENCY)
        return {r["product_id"]: StoredProduct(r["product_id"], np.asarray(r["vector"], dtype=np.float32),
                                               int(r["version"]), dict(r["hashes"] or {}), r["model"],
                                               int(r["event_time"])) for r in rows}

    def search(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, np.ndarray]]]:
        """Top-``limit`` products per query vector, in one call; returns (id, vector) pairs so the
        caller computes exact scores and per-field contributions itself."""
        if len(vectors) == 0:
            return []
        if self.side is not None:
            self.side.sync(self)
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
            self.side.sync(self)
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
        fields = ["version", "hashes", "model", "event_time"] + (["vector"] if with_vectors else [])
        it = self._call(self.client.query_iterator, self.products, batch_size=batch_size, filter="",
                        output_fields=fields)
        try:
            while page := it.next():
                yield [StoredProduct(r["product_id"], np.asarray(r.get("vector", ()), dtype=np.float32),
                                     int(r["version"]), dict(r["hashes"] or {}), r["model"], int(r["event_time"]))
                       for r in page]
        finally:
            it.close()

    # --- lists ----------------------------------------------------------------------------
    def get_lists(self, ids: Sequence[str]) -> dict[str, StoredList]:
        rows = self._query(self.lists, ids, ["neighbor_ids", "kth_score", "payload"])
        return {r["product_id"]: StoredList(r["product_id"], list(r["neighbor_ids"]), float(r["kth_score"]),
                                            r["payload"].encode()) for r in rows}

    def listers_of(self, ids: Sequence[str]) -> set[str]:
        """Products whose current list contains any of ``ids`` (the reverse neighbour index)."""
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
        rows = self._call(self.client.query, self.lists, filter=f"kth_score <= {float(score)!r}",
                          output_fields=["kth_score", "payload"], **_CONSISTENCY)
        return {r["product_id"]: float(r["kth_score"]) for r in rows if r["payload"]}

    def upsert_lists(self, lists: list[StoredList]) -> None:
        """A list with an empty payload is a tombstone marker: "a tombstone was published"."""
        rows = [{"product_id": x.product_id, "dummy": [0.0, 0.0], "neighbor_ids": x.neighbor_ids,
                 "kth_score": min(max(x.kth_score, -3.0e38), 3.0e38), "payload": x.payload.decode()}
                for x in lists]
        for start in range(0, len(rows), 256):
            self._call(self.client.upsert, self.lists, rows[start:start + 256])
        self._wrote(len(rows))

    def all_list_ids(self) -> set[str]:
        it = self._call(self.client.query_iterator, self.lists, batch_size=2000, filter="",
                        output_fields=["product_id"])
        out: set[str] = set()
        try:
            while page := it.next():
                out.update(r["product_id"] for r in page)
        finally:
            it.close()
        return out

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
