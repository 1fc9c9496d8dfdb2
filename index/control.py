"""The control record in Milvus, and the aliases that follow the live generation.

``{collection}_control`` holds one row: the JSON of ``simstream.generations.ControlRecord`` (which
generation is live, on standby, publishing). It lives beside the collections it describes, so every
process that can reach the index can read it: workers poll it (``streams/fence.py``), ``serve``
follows it, ``simstream migrate`` is its only writer.

Beside the record, the same collection keeps the files a generation's model needs and no worker
pod would otherwise have: its fitted lexicon (``encoders/lexicon.py``), in rows of base64 chunks
keyed ``lexicon-<digest>:<n>`` under a head row ``lexicon-<digest>`` (``put_file`` / ``fetch_file``;
``fetch_lexicons`` puts every generation's copy where ``generation_settings`` points).

The aliases ``{collection}_live_products`` / ``_live_lists`` / ``_live_tombstones`` point at the
live generation's collections, so anything that queries Milvus directly follows a switch without a
restart (Milvus moves an alias atomically).

Like ``MilvusStore``, every call carries the deadline and its failures become ``IndexUnavailable``
(retry) or ``IndexRejected``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import orjson
from pymilvus import DataType, MilvusClient

from simstream.errors import IndexRejected, IndexUnavailable
from simstream.generations import ControlRecord, lexicon_path
from simstream.index.failures import is_milvus_failure, translate
from simstream.limits import CONTROL_RECORD_BYTES
from simstream.logs import get_logger

__all__ = ["KINDS", "FILE_CHUNK_BYTES", "ControlConflict", "ControlStore", "control_collection", "lexicon_file",
           "live_alias"]

log = get_logger(__name__)
T = TypeVar("T")

KINDS = ("products", "lists", "tombstones")  # a generation's collections, ``{prefix}_{kind}``
_KEY = "control"
_STRONG = {"consistency_level": "Strong"}
FILE_CHUNK_BYTES = 48_000  # raw bytes per row of a stored file: base64 of it fits CONTROL_RECORD_BYTES
_FILE_ROWS_PER_CALL = 16  # chunk rows per upsert / query (~1 MB a call)


def control_collection(base: str) -> str:
    return f"{base}_control"


def lexicon_file(digest: str) -> str:
    """The name a lexicon is stored under beside the control record."""
    return f"lexicon-{digest}"


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

    # --- files beside the record ------------------------------------------------------------------------
    def put_file(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` (chunks first, the head row naming them last: a reader sees
        all of it or nothing). Storing the same name again rewrites the same rows."""
        self._ensure(create=True)
        chunks = [data[i:i + FILE_CHUNK_BYTES] for i in range(0, len(data), FILE_CHUNK_BYTES)] or [b""]
        rows = [{"key": f"{name}:{n}", "dummy": [0.0, 0.0], "record": base64.b64encode(c).decode()}
                for n, c in enumerate(chunks)]
        for i in range(0, len(rows), _FILE_ROWS_PER_CALL):
            self._call(self.client.upsert, self.name, rows[i:i + _FILE_ROWS_PER_CALL])
        head = {"chunks": len(chunks), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self._call(self.client.upsert, self.name, [{"key": name, "dummy": [0.0, 0.0],
                                                    "record": orjson.dumps(head).decode()}])

    def get_file(self, name: str) -> bytes | None:
        """The file stored under ``name`` (None: none), checked against the length and sha256 its
        head row recorded.

        Raises:
            IndexRejected: a chunk is missing or the content does not match its head row.
        """
        if not self._ensure(create=False):
            return None
        rows = self._call(self.client.query, self.name, filter=f'key == "{name}"', output_fields=["record"], **_STRONG)
        if not rows:
            return None
        head = orjson.loads(rows[0]["record"])
        keys = [f"{name}:{n}" for n in range(int(head["chunks"]))]
        parts: dict[str, bytes] = {}
        for i in range(0, len(keys), _FILE_ROWS_PER_CALL):
            wanted = keys[i:i + _FILE_ROWS_PER_CALL]
            found = self._call(self.client.query, self.name, filter=f"key in {wanted!r}".replace("'", '"'),
                               output_fields=["key", "record"], **_STRONG)
            parts.update({r["key"]: base64.b64decode(r["record"]) for r in found})
        data = b"".join(parts.get(k, b"") for k in keys)
        if len(parts) != len(keys) or len(data) != head["bytes"] or hashlib.sha256(data).hexdigest() != head["sha256"]:
            raise IndexRejected(f"file {name} in {self.name} is incomplete or changed ({len(parts)}/{len(keys)} chunks)")
        return data

    def delete_file(self, name: str) -> None:
        """Forget ``name`` (head row first: readers then see nothing, never a part)."""
        if not self._ensure(create=False):
            return
        rows = self._call(self.client.query, self.name, filter=f'key == "{name}"', output_fields=["record"], **_STRONG)
        if not rows:
            return
        chunks = int(orjson.loads(rows[0]["record"])["chunks"])
        self._call(self.client.delete, self.name, filter=f'key == "{name}"')
        keys = [f"{name}:{n}" for n in range(chunks)]
        for i in range(0, len(keys), _FILE_ROWS_PER_CALL):
            self._call(self.client.delete, self.name,
                       filter=f"key in {keys[i:i + _FILE_ROWS_PER_CALL]!r}".replace("'", '"'))

    def fetch_file(self, name: str, path: Path) -> Path:
        """``path`` holding the file ``name`` (fetched when it is not there yet; written atomically).

        Raises:
            IndexRejected: nothing is stored under ``name``.
        """
        if path.is_file():
            return path
        data = self.get_file(name)
        if data is None:
            raise IndexRejected(f"{self.name} holds no file {name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path

    def fetch_lexicons(self, record: ControlRecord | None, data_dir: Path) -> None:
        """Every generation's lexicon copied to ``lexicon_path(data_dir, digest)``, where
        ``generation_settings`` points its encoders (a no-op for files already there)."""
        for generation in (record.generations.values() if record is not None else ()):
            if generation.lexicon:
                self.fetch_file(lexicon_file(generation.lexicon), lexicon_path(data_dir, generation.lexicon))

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
