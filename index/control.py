"""The control record in Milvus, and the aliases that follow the live generation.

``{collection}_control`` holds one row: the JSON of ``simstream.generations.ControlRecord`` (which
generation is live, on standby, publishing). It lives beside the collections it describes, so every
process that can reach the index can read it: workers poll it (``streams/fence.py``), ``serve``
follows it, ``simstream migrate`` is its only writer.

The aliases ``{collection}_live_products`` / ``_live_lists`` / ``_live_tombstones`` point at the
live generation's collections, so anything that queries Milvus directly follows a switch without a
restart (Milvus moves an alias atomically).

Like ``MilvusStore``, every call carries the deadline and its failures become ``IndexUnavailable``
(retry) or ``IndexRejected``.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from pymilvus import DataType, MilvusClient

from simstream.errors import IndexRejected, IndexUnavailable
from simstream.generations import ControlRecord
from simstream.index.failures import is_milvus_failure, translate
from simstream.limits import CONTROL_RECORD_BYTES
from simstream.logs import get_logger

__all__ = ["KINDS", "ControlConflict", "ControlStore", "control_collection", "live_alias"]

log = get_logger(__name__)
T = TypeVar("T")

KINDS = ("products", "lists", "tombstones")  # a generation's collections, ``{prefix}_{kind}``
_KEY = "control"
_STRONG = {"consistency_level": "Strong"}


def control_collection(base: str) -> str:
    return f"{base}_control"


def live_alias(base: str, kind: str) -> str:
    """The alias that names the live generation's ``kind`` collection."""
    return f"{base}_live_{kind}"


class ControlConflict(RuntimeError):
    """The control record changed since it was read (another ``simstream migrate`` ran)."""


class ControlStore:
    """The control record of the collections prefixed ``base`` (``SIMSTREAM_COLLECTION``)."""

    def __init__(self, client: MilvusClient, base: str, *, timeout_s: float) -> None:
        self.client = client
        self.base = base
        self.name = control_collection(base)
        self.timeout_s = timeout_s
        self._ready = False

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_milvus_failure(exc):
                raise
            raise translate(exc, f"{getattr(fn, '__name__', 'call')} {self.name}") from exc

    def _ensure(self, *, create: bool) -> bool:
        """Whether the control collection exists (made when ``create``); loaded once."""
        if self._ready:
            return True
        if not self._call(self.client.has_collection, self.name):
            if not create:
                return False
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
            s.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one vector field
            s.add_field("record", DataType.VARCHAR, max_length=CONTROL_RECORD_BYTES)
            idx = self.client.prepare_index_params()
            idx.add_index("dummy", index_type="FLAT", metric_type="L2")
            try:
                self._call(self.client.create_collection, self.name, schema=s, index_params=idx, **_STRONG)
            except (IndexUnavailable, IndexRejected):
                if not self._call(self.client.has_collection, self.name):
                    raise
        self._call(self.client.load_collection, self.name)
        self._ready = True
        return True

    def read(self) -> ControlRecord | None:
        """The record, or None when there is none (the first generation, never migrated)."""
        if not self._ensure(create=False):
            return None
        rows = self._call(self.client.query, self.name, filter=f'key == "{_KEY}"', output_fields=["record"], **_STRONG)
        return ControlRecord.from_json(rows[0]["record"]) if rows else None

    def write(self, record: ControlRecord, *, expect_epoch: int | None) -> None:
        """Store ``record`` if the stored one still has ``expect_epoch`` (None: there is none yet).

        Raises:
            ControlConflict: someone else changed it since it was read.
            ValueError: the record is over ``CONTROL_RECORD_BYTES`` (drop old generations).
        """
        body = record.to_json().decode()
        if len(body.encode()) > CONTROL_RECORD_BYTES:
            raise ValueError(f"the control record would take {len(body.encode())} bytes, over {CONTROL_RECORD_BYTES}: "
                             "drop old generations first (simstream migrate --drop-old)")
        self._ensure(create=True)
        current = self.read()
        have = current.epoch if current is not None else None
        if have != expect_epoch:
            raise ControlConflict(f"control record is at epoch {have}, expected {expect_epoch}: "
                                  "another simstream migrate changed it; look with simstream migrate --status")
        self._call(self.client.upsert, self.name, [{"key": _KEY, "dummy": [0.0, 0.0], "record": body}])
        log.info("control record written", epoch=record.epoch, live=record.live, standby=record.standby,
                 publishing=record.publishing,
                 phase=record.migration.phase if record.migration is not None else None)

    def point_aliases(self, prefix: str) -> None:
        """Point the live aliases at the collections of ``prefix`` (a generation's collection name)."""
        existing = set(self._call(self.client.list_aliases).get("aliases") or ())
        for kind in KINDS:
            alias, target = live_alias(self.base, kind), f"{prefix}_{kind}"
            current = self._call(self.client.describe_alias, alias).get("collection_name") if alias in existing else None
            if current == target:
                continue
            if current is None:
                self._call(self.client.create_alias, target, alias)
            else:
                self._call(self.client.alter_alias, target, alias)

    def drop_collections(self, prefix: str) -> list[str]:
        """Drop a generation's collections (``migrate --drop-old``); returns the names dropped."""
        dropped = []
        for kind in KINDS:
            name = f"{prefix}_{kind}"
            if self._call(self.client.has_collection, name):
                self._call(self.client.drop_collection, name)
                dropped.append(name)
        return dropped
