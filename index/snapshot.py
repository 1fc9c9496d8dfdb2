"""Snapshots of the in-memory copies, so a worker that restarts restores them in seconds.

Building the side index and the list mirror reads every vector and every list head back from
Milvus: at 100k products 60-130 s, most of it pymilvus turning float vectors into Python floats
(docs/scaling.md). A snapshot holds the copies as they are in memory (the packed rows, not
float32; the heads with their facts) and when they were last in step with Milvus; the store
restores it and then applies what any writer did since, exactly as its regular sync does
(index/store.py), and checks the counts against Milvus before it trusts the result.

One uncompressed ``.npz`` file: plain numpy arrays and JSON tables, never pickles, so a damaged
or foreign file is data that fails a check, not code. It is written to a temporary name, synced
and renamed, so a reader finds a whole snapshot or none. Any snapshot that does not fit the
store asking (another collection, dimension or storage grid; another format; a damaged file)
is ignored with a log line, and the copies are built from Milvus as before.
"""

from __future__ import annotations

import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import orjson

from simstream.index.list_mirror import ListMirror
from simstream.index.side import SideIndex
from simstream.metric import IP, Metric
from simstream.index.tombstone_mirror import TombstoneMirror
from simstream.logs import get_logger
from simstream.vector_codec import Segment

__all__ = ["FORMAT", "SUFFIX", "Snapshot", "snapshot_path", "identity", "write_snapshot", "read_snapshot"]

log = get_logger(__name__)

FORMAT = 1  # raised whenever the arrays' meaning changes: an older file is then rebuilt, not misread
SUFFIX = ".snapshot.npz"
_PARTS = ("side", "mirror", "tombstones")


@dataclass
class Snapshot:
    """The copies a snapshot held, and the times up to which they were in step with Milvus."""

    side: SideIndex
    mirror: ListMirror | None
    tombstones: TombstoneMirror
    side_synced_at: int
    mirror_synced_at: int
    taken_at: int
    bytes: int


def snapshot_path(directory: Path, prefix: str) -> Path:
    """Where the snapshot of collection ``prefix``'s copies lives (one per generation)."""
    return Path(directory) / f"{prefix}{SUFFIX}"


def identity(prefix: str, dim: int, segments: Sequence[Segment] | None, collection_ids: dict[str, int]) -> dict[str, Any]:
    """What a snapshot must match to be restored: the collections (and, where the server numbers
    them, their ids: a collection dropped and made again is another one), the dimension, the grid."""
    return {"format": FORMAT, "prefix": prefix, "dim": dim,
            "segments": [[s.name, s.start, s.stop, s.codec] for s in segments or ()],
            "collections": collection_ids}


def write_snapshot(path: Path, ident: dict[str, Any], *, side: SideIndex, mirror: ListMirror | None,
                   tombstones: TombstoneMirror, side_synced_at: int, mirror_synced_at: int) -> int:
    """Write the copies to ``path`` atomically (temporary file, fsync, rename); returns its bytes.
    An OSError (a full disk) leaves no partial file behind and is raised."""
    arrays: dict[str, np.ndarray] = {}
    tables: dict[str, Any] = {}
    for name, part in zip(_PARTS, (side, mirror, tombstones)):
        if part is None:
            continue
        got, table = part.export()
        arrays.update({f"{name}.{k}": v for k, v in got.items()})
        tables[name] = table
    manifest = {**ident, "side_synced_at": side_synced_at, "mirror_synced_at": mirror_synced_at,
                "taken_at": int(time.time() * 1000), "products": len(side), "lists": len(mirror) if mirror is not None else None}
    arrays["manifest"] = np.frombuffer(orjson.dumps(manifest), np.uint8)
    arrays["tables"] = np.frombuffer(orjson.dumps(tables), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a crash once the directory is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path.stat().st_size


def read_snapshot(path: Path, ident: dict[str, Any], *, capacity: int, max_bytes: int | None = None,
                  segments: Sequence[Segment] | None = None, metric: Metric = IP) -> Snapshot | None:
    """The copies held in ``path`` if it is a whole snapshot matching ``ident`` (see ``identity``)
    and no larger than ``max_bytes`` unpacked; else None, with the reason logged. ``capacity``:
    the side index's rows at least (room to grow, as a build would size it)."""
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as z:
            unpacked = sum(i.file_size for i in z.infolist())
            if any(i.compress_type != zipfile.ZIP_STORED for i in z.infolist()):
                raise ValueError("compressed members (a snapshot is written uncompressed)")
        if max_bytes is not None and unpacked > max_bytes:
            raise ValueError(f"{unpacked} bytes unpacked, over the {max_bytes} the copies may take")
        with np.load(path, allow_pickle=False) as z:
            manifest = orjson.loads(z["manifest"].tobytes())
            differs = {k: (manifest.get(k), v) for k, v in ident.items() if manifest.get(k) != v}
            if differs:
                log.info("snapshot is of other collections or another grid; building from Milvus",
                         path=str(path), differs=str(differs)[:300])
                return None
            tables = orjson.loads(z["tables"].tobytes())
            parts: dict[str, dict[str, np.ndarray]] = {name: {} for name in _PARTS}
            for key in z.files:
                name, _, field = key.partition(".")
                if name in parts and field:
                    parts[name][field] = z[key]
        side = SideIndex.restored(int(ident["dim"]), parts["side"], tables["side"], capacity=capacity, segments=segments,
                                  metric=metric)
        mirror = ListMirror.restored(parts["mirror"], tables["mirror"]) if "mirror" in tables else None
        tombstones = TombstoneMirror.restored(parts["tombstones"], tables["tombstones"])
        if len(side) != manifest["products"] or (mirror is not None and len(mirror) != manifest["lists"]):
            raise ValueError("counts differ from the manifest")
        return Snapshot(side, mirror, tombstones, int(manifest["side_synced_at"]), int(manifest["mirror_synced_at"]),
                        int(manifest["taken_at"]), unpacked)
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, orjson.JSONDecodeError) as exc:
        log.warning("snapshot unreadable; building from Milvus", path=str(path), error=repr(exc)[:300])
        return None
