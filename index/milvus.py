"""MilvusStore: the only class that talks to Milvus (a milvus-lite file or a real server).

Three collections, all keyed by product_id:
- ``<prefix>_products``: the fused vector and what is needed to skip stale events and re-use
  unchanged fields (version, per-field content hashes, model, updated_at). Milvus is the system of
  record that recommenders query.
- ``<prefix>_lists``: the neighbour list last published for each product (deep ids, boundary, the
  payload, and what its writer knew: ``facts``, ``rows.HeadFacts``). Written only by the refresh
  step that owns the product's partition; read by the ingest step to find whose lists a changed
  product enters or leaves (``array_contains_any``).
- ``<prefix>_tombstones``: a deleted product's version, kept for a retention period so that an
  older upsert arriving late cannot bring the product back.

Always ``upsert`` (a real server keeps duplicates on insert); searches and queries use Strong
consistency so a refresh sees the writes of the same batch. Flush policy: milvus-lite converts
unflushed rows again on every search, so we flush after ``flush_every_rows`` writes.
Every call carries the deadline ``timeout_s`` (a hung server is an outage, not a hang); failures
are sorted into retriable and refused-data errors by ``index/failures.py``.
The field names (``neighbor_ids``, ``kth_score``) are the stored schema and stay as they are.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Mapping, Sequence, TypeVar

import grpc
import numpy as np
import orjson
from pymilvus import DataType, MilvusClient
from pymilvus.client import entity_helper

from simstream.errors import IndexRejected, IndexUnavailable
from simstream.index.failures import is_milvus_failure, translate
from simstream.index.rows import (
    SERVING_FIELDS, TOMBSTONE_BOUNDARY, HeadFacts, ListHead, ServedProduct, StoredList, StoredProduct, served_product,
    stored_boundary,
)
from simstream.limits import (
    LIST_CAPACITY, LIST_FACTS_BYTES, LIST_PAYLOAD_BYTES, MAX_BRAND_BYTES, MAX_CATEGORY_BYTES, MAX_CATEGORY_KEY_BYTES, MAX_ID_BYTES,
    MAX_MODEL_BYTES, MILVUS_KEY_PAGE_ROWS, MILVUS_PAGE_ROWS, MILVUS_WRITE_ROWS, search_hit_bytes, search_queries_per_call,
)
from simstream.logs import get_logger
from simstream.metric import IP, Metric

__all__ = ["DEFAULT_TIMEOUT_S", "LITE_OPEN_TIMEOUT_S", "opening_timeout", "GRPC_OPTIONS", "quote_ids", "MilvusStore", "open_client", "close_client"]

log = get_logger(__name__)
T = TypeVar("T")

_CONSISTENCY = {"consistency_level": "Strong"}
_NOT_LOADED = 101  # "collection ... is in state 'released'; call load()": after a server restart
DEFAULT_TIMEOUT_S = 10.0  # settings.milvus_timeout_s
# Opening a milvus-lite file loads its segments in this process: minutes at 100k products of
# 3,232-d (not a hung server), so the opening calls get this deadline instead.
LITE_OPEN_TIMEOUT_S = 600.0

_PRODUCT_FIELDS = ["version", "hashes", "model", "event_time", "updated_at"]
_HEAD_FIELDS = ["neighbor_ids", "kth_score", "updated_at", "as_of"]


def opening_timeout(uri: str, timeout_s: float) -> float:
    """The deadline of the calls that open ``uri``'s collections (``LITE_OPEN_TIMEOUT_S`` for a file)."""
    return max(timeout_s, LITE_OPEN_TIMEOUT_S) if "://" not in uri else timeout_s


# pymilvus' row path checks a VARCHAR value as if it were an array of strings: an isinstance and a
# len per *character* of every payload it packs (11 % of a price-only refresh at 20k products,
# measured in process). Milvus and milvus-lite check max_length themselves, and refuse an over-long
# value (tests/index/test_robustness.py); every string simstream writes is bounded before that
# (simstream.limits). Arrays of VARCHAR are checked by the server the same way.
if hasattr(entity_helper, "CHECK_STR_ARRAY"):
    entity_helper.CHECK_STR_ARRAY = False


# gRPC keepalive of every client: pymilvus pings every 10 s, also on idle channels, but a gRPC
# server with default settings (the milvus-lite server) allows a ping without data only every 5 min
# and answers more with GOAWAY "too_many_pings"; pymilvus' shared connection then never recovers
# ("Fail connecting" for every later client of that process: seen after ~2 min idle). Every call
# carries its own deadline (``timeout_s``), which is what detects a dead server here.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}


def _hit_id(hit: Any) -> str:
    """pymilvus names a hit's key after the primary field; older servers/clients call it "id"."""
    return hit["product_id"] if "product_id" in hit else hit["id"]


def quote_ids(ids: Iterable[str]) -> str:
    """A Milvus expression list literal of ``ids``, each quoted as a JSON string."""
    return "[" + ",".join(orjson.dumps(i).decode() for i in ids) + "]"


def _product(r: dict[str, Any]) -> StoredProduct:
    return StoredProduct(r["product_id"], np.asarray(r.get("vector", ()), dtype=np.float32), int(r["version"]),
                         dict(r["hashes"] or {}), r["model"], int(r["event_time"]), int(r.get("updated_at") or 0))


def _real_boundaries(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """product_id -> boundary of the rows that are real lists. Markers are told by their boundary
    (``TOMBSTONE_BOUNDARY``, as ``ListHead.is_tombstone`` tells them), not by their empty payload:
    read with the payloads, 100k lists passed Milvus 2.3.5's cap on a query's result size ("query
    results exceed the limit size")."""
    return {r["product_id"]: b for r in rows if not (b := float(r["kth_score"])) >= TOMBSTONE_BOUNDARY}  # NaN: real


def _head(r: dict[str, Any]) -> ListHead:
    return ListHead(r["product_id"], tuple(r["neighbor_ids"]), float(r["kth_score"]), int(r.get("updated_at") or 0),
                    int(r.get("as_of") or 0))


class MilvusStore:
    """One client, plain rows in and out, like ``MilvusClient`` itself."""

    def __init__(self, client: MilvusClient, uri: str, prefix: str, dim: int | None, *, flush_every_rows: int = 20_000,
                 index_type: str = "FLAT", exclusive: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
                 metric: Metric = IP) -> None:
        """``dim`` None: open collections that must exist already, at whatever dimension they have
        (readers such as the exactness proof). ``timeout_s``: the deadline of every call.
        ``metric``: the similarity the products collection is indexed and searched by."""
        self.client = client
        self.metric = metric
        self.uri = uri
        self.timeout_s = timeout_s
        self.dim = dim or 0
        self._dim_given = dim is not None
        self.products = f"{prefix}_products"
        self.lists = f"{prefix}_lists"
        self.tombstones = f"{prefix}_tombstones"
        self.flush_every_rows = flush_every_rows
        self.index_type = index_type
        self._unflushed = 0
        # A milvus-lite *file* opens in one process only, so nobody else writes to it. Servers
        # (milvus-lite server, Milvus) are shared by every worker.
        self.exclusive = exclusive
        self.lists_stamped = False
        self.lists_facts = False
        self.timeout_s = opening_timeout(uri, timeout_s)
        try:
            self._ensure_collections()
        finally:
            self.timeout_s = timeout_s

    @classmethod
    def connect(cls, uri: str, prefix: str, dim: int | None, *, token: str | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> "MilvusStore":
        """Open ``uri`` (a milvus-lite file path or a server URL); ``timeout_s`` bounds connecting
        and every later call. A failure to open releases what was opened (a lite file's lock)."""
        if "://" not in uri:
            # milvus-lite file: make sure its directory exists. Only this process can open it.
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            kwargs.setdefault("exclusive", True)
        try:
            client = MilvusClient(uri=uri, token=token or "", timeout=timeout_s, grpc_options=GRPC_OPTIONS)
        except Exception as exc:
            if not is_milvus_failure(exc):
                raise
            raise IndexUnavailable(f"cannot open Milvus at {uri}: {exc}") from exc
        try:
            return cls(client, uri, prefix, dim, timeout_s=timeout_s, **kwargs)
        except BaseException:
            _release(client, uri, exclusive=bool(kwargs.get("exclusive")))
            raise

    # --- schema ---------------------------------------------------------------------------
    def _ensure_collections(self) -> None:
        c = self.client
        if not self._dim_given:
            if not self._call(c.has_collection, self.products):
                raise ValueError(f"collection {self.products} does not exist")
            self.dim = self._vector_dim()
        if not self._call(c.has_collection, self.products):
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
            s.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            s.add_field("version", DataType.INT64)
            s.add_field("brand", DataType.VARCHAR, max_length=MAX_BRAND_BYTES)
            s.add_field("category", DataType.VARCHAR, max_length=MAX_CATEGORY_BYTES)
            s.add_field("price", DataType.DOUBLE)  # -1 when unknown
            s.add_field("hashes", DataType.JSON)  # per-field content hashes
            s.add_field("model", DataType.VARCHAR, max_length=MAX_MODEL_BYTES)
            s.add_field("updated_at", DataType.INT64)
            s.add_field("event_time", DataType.INT64)
            # simstream serve's fields (rows.SERVING_FIELDS); optional, so rows written without them
            # (another tool, an older worker on a shared server) are still accepted
            s.add_field("display", DataType.JSON, nullable=True)  # what serve shows (rows.display_of)
            s.add_field("brand_key", DataType.VARCHAR, max_length=MAX_BRAND_BYTES, default_value="")  # rows.brand_key
            s.add_field("category_key", DataType.VARCHAR, max_length=MAX_CATEGORY_KEY_BYTES, default_value="")
            idx = c.prepare_index_params()
            # FLAT = exact search: the exactness promise of the neighbour topic rests on it.
            idx.add_index("vector", index_type=self.index_type, metric_type=self.metric.milvus_type)
            self._create(self.products, s, idx)
        elif (have := self._vector_dim()) != self.dim:
            raise ValueError(f"collection {self.products} has dim {have} but the encoders give {self.dim}; "
                             "set SIMSTREAM_COLLECTION to a new name and run `simstream reconcile`")
        else:
            self._check_metric()
        if not self._call(c.has_collection, self.lists):
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
            s.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one vector field
            s.add_field("neighbor_ids", DataType.ARRAY, element_type=DataType.VARCHAR,
                        max_capacity=LIST_CAPACITY, max_length=MAX_ID_BYTES)
            s.add_field("kth_score", DataType.FLOAT)  # the list's boundary (rows.StoredList.boundary)
            s.add_field("payload", DataType.VARCHAR, max_length=LIST_PAYLOAD_BYTES)
            s.add_field("updated_at", DataType.INT64)  # lets the list mirror sync (index/list_mirror.py)
            s.add_field("as_of", DataType.INT64)  # lets a refresh merge instead of searching
            # what the writer knew (rows.HeadFacts): the next holder diffs and merges without reads;
            # a default, so rows from writers without it (older workers on a server) are accepted
            s.add_field("facts", DataType.VARCHAR, max_length=LIST_FACTS_BYTES, default_value="")
            idx = c.prepare_index_params()
            idx.add_index("dummy", index_type="FLAT", metric_type="L2")
            self._create(self.lists, s, idx)
        if not self._call(c.has_collection, self.tombstones):
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
            s.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
            s.add_field("version", DataType.INT64)
            s.add_field("deleted_at", DataType.INT64)
            idx = c.prepare_index_params()
            idx.add_index("dummy", index_type="FLAT", metric_type="L2")
            self._create(self.tombstones, s, idx)
        for name in (self.products, self.lists, self.tombstones):
            self._call(c.load_collection, name)
        list_fields = {f["name"] for f in self._call(c.describe_collection, self.lists)["fields"]}
        self.lists_stamped = {"updated_at", "as_of"} <= list_fields
        # lists collections made before the facts were recorded keep working without them
        self.lists_facts = self.lists_stamped and "facts" in list_fields
        product_fields = {f["name"] for f in self._call(c.describe_collection, self.products)["fields"]}
        # simstream serve's fields (rows.SERVING_FIELDS): absent in collections made before it existed
        self.serving_fields = tuple(f for f in SERVING_FIELDS if f in product_fields)
        self.products_display = set(self.serving_fields) == set(SERVING_FIELDS)

    def _check_metric(self) -> None:
        """An existing products collection is searched by the metric it is indexed by: a reader
        (``dim`` None) adopts it; a writer whose model ranks by another one is refused (ValueError)."""
        names = self._call(self.client.list_indexes, self.products, field_name="vector")
        if not names:
            return
        described = self._call(self.client.describe_index, self.products, names[0])
        have = str((described or {}).get("metric_type") or "").upper() if isinstance(described, dict) else ""
        if not have or have == self.metric.milvus_type:
            return
        if not self._dim_given and have in ("IP", "L2"):
            self.metric = Metric("l2" if have == "L2" else "ip")
            return
        raise ValueError(f"collection {self.products} is indexed by {have} but the model ranks by "
                         f"{self.metric.milvus_type}: `simstream migrate --set metric={self.metric.name}` builds a "
                         "generation indexed by it")

    def _vector_dim(self) -> int:
        fields = {f["name"]: f for f in self._call(self.client.describe_collection, self.products)["fields"]}
        return int(fields["vector"]["params"]["dim"])

    def _create(self, name: str, schema: Any, index_params: Any) -> None:
        """Create a collection; another worker starting at the same moment may win the race."""
        try:
            self._call(self.client.create_collection, name, schema=schema, index_params=index_params, **_CONSISTENCY)
        except (IndexUnavailable, IndexRejected):
            if not self._call(self.client.has_collection, name):
                raise
            log.info("collection created concurrently by another worker", collection=name)

    # --- calls ----------------------------------------------------------------------------
    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a client method with the deadline ``timeout_s`` (pymilvus's own retries of
        transient errors stop at it too). A refusal of the data itself becomes IndexRejected (the
        stream dead-letters the record); every other Milvus failure IndexUnavailable (retried)."""
        if getattr(fn, "__self__", None) is self.client:
            kwargs.setdefault("timeout", self.timeout_s)
        try:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if getattr(exc, "code", None) != _NOT_LOADED:
                    raise
                # A restarted server comes back with every collection released: load them, once.
                log.warning("milvus collections were released (server restarted?); loading them again")
                for name in (self.products, self.lists, self.tombstones):
                    self.client.load_collection(name, timeout=self.timeout_s)
                return fn(*args, **kwargs)
        except Exception as exc:
            if not is_milvus_failure(exc):
                raise
            raise translate(exc, _describe(fn, args)) from exc

    def ping(self) -> bool:
        """Whether Milvus answers within the deadline (never raises: readiness and health checks)."""
        try:
            self._call(self.client.has_collection, self.products)
            return True
        except Exception:
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
            out.extend(self._call(self.client.query, collection, filter=f"product_id in {quote_ids(chunk)}",
                                  output_fields=fields, **_CONSISTENCY))
        return out

    def _filter(self, collection: str, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        return self._call(self.client.query, collection, filter=expr, output_fields=fields, **_CONSISTENCY)

    def _pages(self, collection: str, fields: list[str], batch_size: int) -> Iterator[list[dict[str, Any]]]:
        """Every row of a collection, page by page (``query_iterator``, closed however we leave)."""
        # Opening an iterator makes a describe_collection call without the deadline (pymilvus 3.0's
        # QueryIterator), which a frozen server holds until gRPC keepalive gives up (~55 s): bound
        # the whole opening from outside. Its page calls carry the deadline themselves.
        it = self._call(_within, self.timeout_s, self.client.query_iterator, collection, batch_size=batch_size,
                        filter="", output_fields=fields, timeout=self.timeout_s)
        try:
            while page := self._call(it.next):
                yield page
        finally:
            it.close()

    def _pages_with_vectors(self, collection: str, fields: list[str], batch_size: int) -> Iterator[list[dict[str, Any]]]:
        """``_pages`` for reads with vectors. On a milvus-lite file: the keys first, in large
        pages, then ``batch_size`` rows at a time by primary key. A milvus-lite iterator page costs
        a pass over every row with its vector, so serve's start at 100k products took 145 s (50
        pages of 2,000); by key, 110 s. A row deleted between the two reads is left out; one
        written again is read as it is then (callers re-read what changed after they began). On a
        server the iterator is faster (serve ready at 100k on Milvus 2.3.5: 72 s, 88 s by key)."""
        if not self.exclusive:
            yield from self._pages(collection, fields, batch_size)
            return
        for keys in self._pages(collection, ["product_id"], MILVUS_KEY_PAGE_ROWS):
            ids = [r["product_id"] for r in keys]
            for start in range(0, len(ids), batch_size):
                if page := self._query(collection, ids[start:start + batch_size], fields):
                    yield page

    def _count(self, collection: str) -> int:
        rows = self._call(self.client.query, collection, filter="", output_fields=["count(*)"], **_CONSISTENCY)
        return int(rows[0]["count(*)"]) if rows else 0

    def count_products(self) -> int:
        """Rows of the products collection (sizes the side index before it is filled)."""
        return self._count(self.products)

    def count_lists(self) -> int:
        """Rows of the lists collection, tombstone markers included."""
        return self._count(self.lists)

    def sample_list_depth(self, rows: int = 256) -> float:
        """Mean number of ids in up to ``rows`` recorded lists (0.0 when there are none)."""
        got = self._call(self.client.query, self.lists, filter="", output_fields=["neighbor_ids"], limit=rows,
                         **_CONSISTENCY)
        return sum(len(r["neighbor_ids"]) for r in got) / len(got) if got else 0.0

    # --- products -------------------------------------------------------------------------
    def read_products(self, ids: Sequence[str], *, with_vectors: bool = True) -> dict[str, StoredProduct]:
        fields = _PRODUCT_FIELDS + (["vector"] if with_vectors else [])
        return {r["product_id"]: _product(r) for r in self._query(self.products, ids, fields)}

    def upsert_products(self, rows: list[dict[str, Any]]) -> list[StoredProduct]:
        """Write product rows (``rows.product_row``); returns them as stored products."""
        rows = self._fit_products(rows)
        for start in range(0, len(rows), MILVUS_WRITE_ROWS):
            self._call(self.client.upsert, self.products, rows[start:start + MILVUS_WRITE_ROWS])
        self._wrote(len(rows))
        return [_product(r) for r in rows]

    def insert_products(self, rows: list[dict[str, Any]]) -> None:
        """Bulk-load rows of products known to be absent (insert skips upsert's delete step)."""
        rows = self._fit_products(rows)
        for start in range(0, len(rows), 1000):
            self._call(self.client.insert, self.products, rows[start:start + 1000])
        self._wrote(len(rows))

    def delete_products(self, ids: Sequence[str]) -> None:
        if ids:
            self._call(self.client.delete, self.products, ids=list(ids))
            self._wrote(len(ids))

    def write_stamps_since(self, since_ms: int) -> dict[str, int]:
        """product_id -> updated_at of the products written at or after ``since_ms`` (no vectors)."""
        rows = self._filter(self.products, f"updated_at >= {int(since_ms)}", ["updated_at"])
        return {r["product_id"]: int(r["updated_at"]) for r in rows}

    def read_changed_since(self, since_ms: int) -> dict[str, StoredProduct]:
        """Products written at or after ``since_ms``, with vectors."""
        rows = self._filter(self.products, f"updated_at >= {int(since_ms)}", _PRODUCT_FIELDS + ["vector"])
        return {r["product_id"]: _product(r) for r in rows}

    def iter_products(self, batch_size: int = 1000, *, with_vectors: bool = False) -> Iterator[list[StoredProduct]]:
        """Every stored product, in pages."""
        fields = _PRODUCT_FIELDS + (["vector"] if with_vectors else [])
        for page in (self._pages_with_vectors if with_vectors else self._pages)(self.products, fields, batch_size):
            yield [_product(r) for r in page]

    def search(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, np.ndarray]]]:
        """Top-``limit`` (id, vector) per query vector by the collection's metric, in as few calls as keep
        each answer under Milvus' response cap (``search_queries_per_call``)."""
        out: list[list[tuple[str, np.ndarray]]] = []
        step = search_queries_per_call(limit, search_hit_bytes(self.dim, with_vector=True))
        for start in range(0, len(vectors), step):
            hits = self._call(self.client.search, self.products, data=vectors[start:start + step].tolist(),
                              limit=limit, output_fields=["vector"], search_params={"metric_type": self.metric.milvus_type},
                              **_CONSISTENCY)
            out.extend([[(_hit_id(h), np.asarray(h["entity"]["vector"], dtype=np.float32)) for h in row]
                        for row in hits])
        return out

    def search_scores(self, vectors: np.ndarray, limit: int) -> list[list[tuple[str, float]]]:
        """Top-``limit`` (id, score as Milvus computes it: ``Metric.from_milvus``) per query; no vectors fetched."""
        out: list[list[tuple[str, float]]] = []
        step = search_queries_per_call(limit, search_hit_bytes(self.dim, with_vector=False))
        for start in range(0, len(vectors), step):
            hits = self._call(self.client.search, self.products, data=vectors[start:start + step].tolist(),
                              limit=limit, output_fields=["version"], search_params={"metric_type": self.metric.milvus_type},
                              **_CONSISTENCY)
            score = self.metric.from_milvus
            out.extend([[(_hit_id(h), score(h["distance"])) for h in row] for row in hits])
        return out

    def _fit_products(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A products collection made before the serving fields existed takes rows without them;
        one that has them takes rows built elsewhere (tests, tools) with empty ones."""
        missing = [f for f in SERVING_FIELDS if f not in self.serving_fields]
        if missing:
            rows = [{k: v for k, v in r.items() if k not in missing} for r in rows]
        empty: dict[str, Any] = {"display": {}, "brand_key": "", "category_key": ""}
        if any(f not in r for r in rows for f in self.serving_fields):
            rows = [{**{f: empty[f] for f in self.serving_fields}, **r} for r in rows]
        return rows

    # --- lists ----------------------------------------------------------------------------
    def read_lists(self, ids: Sequence[str]) -> dict[str, StoredList]:
        """Recorded lists with their payloads."""
        rows = self._query(self.lists, ids, ["neighbor_ids", "kth_score", "payload"])
        return {r["product_id"]: StoredList(r["product_id"], list(r["neighbor_ids"]), float(r["kth_score"]),
                                            r["payload"].encode()) for r in rows}

    def read_listers_of(self, ids: Sequence[str]) -> set[str]:
        """Products whose recorded list contains any of ``ids`` (the reverse neighbour index)."""
        out: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            rows = self._filter(self.lists, f"array_contains_any(neighbor_ids, {quote_ids(chunk)})", ["product_id"])
            out.update(r["product_id"] for r in rows)
        return out

    def read_boundaries_at_most(self, score: float) -> dict[str, float]:
        """Recorded lists (tombstone markers left out) whose boundary is at most ``score``."""
        return _real_boundaries(self._filter(self.lists, f"kth_score <= {float(score)!r}", ["kth_score"]))

    def read_list_heads(self, ids: Sequence[str]) -> dict[str, ListHead]:
        fields = _HEAD_FIELDS if self.lists_stamped else ["neighbor_ids", "kth_score"]
        return {r["product_id"]: _head(r) for r in self._query(self.lists, ids, fields)}

    def read_head_facts(self, ids: Sequence[str]) -> dict[str, tuple[int, int, HeadFacts]]:
        """(updated_at, as_of, facts) of the recorded lists among ``ids`` that carry facts."""
        if not self.lists_facts:
            return {}
        rows = self._query(self.lists, ids, ["updated_at", "as_of", "facts"])
        return {r["product_id"]: (int(r["updated_at"]), int(r["as_of"]), f) for r in rows
                if (f := HeadFacts.from_field(r["facts"])) is not None}

    def read_boundaries(self, ids: Sequence[str]) -> dict[str, float]:
        """Boundary of each recorded list among ``ids`` (tombstone markers left out)."""
        return _real_boundaries(self._query(self.lists, ids, ["kth_score"]))

    def upsert_lists(self, lists: Sequence[StoredList], written_at: int,
                     facts: Mapping[str, HeadFacts] | None = None) -> list[ListHead]:
        """A list with an empty payload is a tombstone marker: "a tombstone was published".
        ``facts``: what the writer knows beside each list (recorded where the collection has the
        field; empty for the others). Returns the heads as recorded."""
        rows: list[dict[str, Any]] = [
            {"product_id": x.product_id, "dummy": [0.0, 0.0], "neighbor_ids": x.neighbour_ids,
             "kth_score": stored_boundary(x.boundary, tombstone=not x.payload), "payload": x.payload.decode()}
            for x in lists]
        if self.lists_stamped:
            for row, x in zip(rows, lists):
                row["updated_at"] = written_at
                row["as_of"] = x.as_of
        if self.lists_facts:
            facts = facts or {}
            for row, x in zip(rows, lists):
                row["facts"] = f.to_field() if x.payload and (f := facts.get(x.product_id)) is not None else ""
        for start in range(0, len(rows), MILVUS_WRITE_ROWS):
            self._call(self.client.upsert, self.lists, rows[start:start + MILVUS_WRITE_ROWS])
        self._wrote(len(rows))
        return [ListHead(r["product_id"], tuple(r["neighbor_ids"]), r["kth_score"], written_at, x.as_of)
                for r, x in zip(rows, lists)]

    def iter_list_heads(self, batch_size: int = MILVUS_PAGE_ROWS) -> Iterator[list[ListHead]]:
        """Every recorded list without its payload, in pages."""
        for page in self._pages(self.lists, _HEAD_FIELDS, batch_size):
            yield [_head(r) for r in page]

    def list_heads_since(self, since_ms: int) -> list[ListHead]:
        """Lists recorded at or after ``since_ms``, without payloads."""
        return [_head(r) for r in self._filter(self.lists, f"updated_at >= {int(since_ms)}", _HEAD_FIELDS)]

    def all_list_ids(self) -> set[str]:
        return {r["product_id"] for page in self._pages(self.lists, ["product_id"], MILVUS_KEY_PAGE_ROWS) for r in page}

    def all_product_ids(self) -> set[str]:
        return {r["product_id"] for page in self._pages(self.products, ["product_id"], MILVUS_KEY_PAGE_ROWS) for r in page}

    def all_write_stamps(self, *, lists: bool = False) -> dict[str, int]:
        """product_id -> updated_at of every product (``lists``: every recorded list), in pages;
        no vectors, no payloads: what a restored copy is checked against (index/snapshot.py)."""
        return {r["product_id"]: int(r.get("updated_at") or 0)
                for page in self._pages(self.lists if lists else self.products, ["updated_at"], MILVUS_KEY_PAGE_ROWS)
                for r in page}

    def collection_ids(self) -> dict[str, int]:
        """Each collection's id as the server numbers it (a collection dropped and made again gets
        another; milvus-lite says 0 for all)."""
        return {name: int(self._call(self.client.describe_collection, name).get("collection_id") or 0)
                for name in (self.products, self.lists, self.tombstones)}

    # --- serving reads (simstream serve; never write) ------------------------------------------
    def display_fields(self, *, with_vectors: bool = False) -> list[str]:
        """The product fields a reader shows: the columns, ``display`` when the collection has it."""
        return (["version", "brand", "category", "price", "model", "event_time", "updated_at"]
                + (["display"] if "display" in self.serving_fields else []) + (["vector"] if with_vectors else []))

    def read_served(self, ids: Sequence[str], *, with_vectors: bool = False) -> dict[str, ServedProduct]:
        """product_id -> what a reader shows of it (the vector on request), for the ``ids`` present."""
        rows = self._query(self.products, ids, self.display_fields(with_vectors=with_vectors))
        return {r["product_id"]: served_product(r["product_id"], r) for r in rows}

    def iter_served(self, batch_size: int = 1000, *, with_vectors: bool = True) -> Iterator[list[ServedProduct]]:
        """Every stored product as a reader shows it (the vector too by default), in pages."""
        fields = self.display_fields(with_vectors=with_vectors)
        for page in (self._pages_with_vectors if with_vectors else self._pages)(self.products, fields, batch_size):
            yield [served_product(r["product_id"], r) for r in page]

    def iter_list_payloads(self, batch_size: int = MILVUS_PAGE_ROWS) -> Generator[dict[str, bytes], None, None]:
        """Every recorded list's payload (b"" a tombstone marker), in pages."""
        for page in self._pages(self.lists, ["payload"], batch_size):
            yield {r["product_id"]: r["payload"].encode() for r in page}

    def read_list_payload(self, product_id: str) -> bytes | None:
        """The list last published for ``product_id`` (b"" for a tombstone marker), None when none is recorded."""
        rows = self._query(self.lists, [product_id], ["payload"])
        return rows[0]["payload"].encode() if rows else None

    def search_served(self, vector: np.ndarray, limit: int, expr: str = "", *,
                      with_vectors: bool = True) -> list[ServedProduct]:
        """Exact top-``limit`` products by the collection's metric among those matching the Milvus filter
        ``expr`` (built by the caller from structured, quoted parts), in Milvus' order; callers
        that rank rescore the vectors themselves (float32, ``index.exact.rank_key``)."""
        hits = self._call(self.client.search, self.products, data=[vector.tolist()], limit=limit, filter=expr,
                          output_fields=self.display_fields(with_vectors=with_vectors),
                          search_params={"metric_type": self.metric.milvus_type}, **_CONSISTENCY)
        return [served_product(_hit_id(h), h["entity"]) for h in hits[0]]

    # --- tombstones -----------------------------------------------------------------------
    def read_tombstones(self, ids: Sequence[str]) -> dict[str, int]:
        return {r["product_id"]: int(r["version"]) for r in self._query(self.tombstones, ids, ["version"])}

    def deleted_since(self, since_ms: int) -> set[str]:
        return {r["product_id"] for r in self._filter(self.tombstones, f"deleted_at >= {int(since_ms)}", ["product_id"])}

    def tombstones_since(self, since_ms: int) -> list[tuple[str, int, int]]:
        """The delete markers written at or after ``since_ms`` as (product_id, version, deleted_at)."""
        rows = self._filter(self.tombstones, f"deleted_at >= {int(since_ms)}", ["version", "deleted_at"])
        return [(r["product_id"], int(r["version"]), int(r["deleted_at"])) for r in rows]

    def iter_tombstones(self, batch_size: int = MILVUS_PAGE_ROWS) -> Iterator[list[tuple[str, int, int]]]:
        """Every delete marker as (product_id, version, deleted_at), in pages."""
        for page in self._pages(self.tombstones, ["version", "deleted_at"], batch_size):
            yield [(r["product_id"], int(r["version"]), int(r["deleted_at"])) for r in page]

    def upsert_tombstones(self, versions: dict[str, int], deleted_at: int) -> None:
        rows = [{"product_id": pid, "dummy": [0.0, 0.0], "version": v, "deleted_at": deleted_at}
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

    def purge_list_markers(self, older_than_ms: int) -> None:
        """Forget list tombstone markers (recorded with boundary TOMBSTONE_BOUNDARY, empty payload)
        recorded before ``older_than_ms``; the same rule as ``ListMirror.remove_markers_older_than``.
        One delete by expression, evaluated by Milvus at delete time: a list recorded again since
        (a re-created product) has a real boundary and a new updated_at, so it never matches; there
        is no read-then-delete window. Lists collections without updated_at (an older simstream)
        keep their markers."""
        if not self.lists_stamped:
            return
        expr = f"kth_score >= {float(TOMBSTONE_BOUNDARY)!r} and updated_at < {int(older_than_ms)}"
        self._call(self.client.delete, self.lists, filter=expr)

    def drop(self) -> None:
        """Drop the three collections (tests and benchmarks on a shared server)."""
        for name in (self.products, self.lists, self.tombstones):
            self._call(self.client.drop_collection, name)

    def close(self) -> None:
        """Close the client; for a milvus-lite file also stop this process's in-process server for
        it, so that another process (a worker) can open the file."""
        _release(self.client, self.uri, exclusive=self.exclusive)


def _describe(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """"upsert s_products": the client method and the collection, for error messages."""
    if fn is _within and len(args) > 1:
        fn, args = args[1], args[2:]
    collection = next((a for a in args if isinstance(a, str)), "")
    return f"{getattr(fn, '__name__', 'call')} {collection}".strip()


def _within(seconds: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a daemon thread; TimeoutError when it has not returned within
    ``seconds`` (the thread is left to end on its own: a daemon thread does not hold up exit)."""
    done: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            done.append((True, fn(*args, **kwargs)))
        except BaseException as exc:  # handed to the caller's thread
            done.append((False, exc))

    thread = threading.Thread(target=run, name=f"milvus-{getattr(fn, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(seconds)
    if not done:
        raise TimeoutError(f"{getattr(fn, '__name__', 'call')} did not return within {seconds} s")
    ok, value = done[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def open_client(uri: str, *, token: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> MilvusClient:
    """A bare client of ``uri`` (for the control record: index/control.py); IndexUnavailable when
    it cannot be opened. Close it with ``close_client``."""
    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        return MilvusClient(uri=uri, token=token or "", timeout=timeout_s, grpc_options=GRPC_OPTIONS)
    except Exception as exc:
        if not is_milvus_failure(exc):
            raise
        raise IndexUnavailable(f"cannot open Milvus at {uri}: {exc}") from exc


def close_client(client: MilvusClient, uri: str) -> None:
    """Close a client of ``open_client`` (a milvus-lite file is released for the next opener)."""
    _release(client, uri, exclusive="://" not in uri)


def _release(client: MilvusClient, uri: str, *, exclusive: bool) -> None:
    """Close ``client``; for a milvus-lite file (``exclusive``) release its lock in this process."""
    client.close()
    if exclusive:
        from milvus_lite.server_manager import server_manager_instance

        try:
            server_manager_instance.release_server(uri)
        except Exception as exc:  # the file stays locked until this process exits; say so
            log.warning("could not release the milvus-lite file", uri=uri, error=str(exc))
