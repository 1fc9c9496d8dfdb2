"""An in-memory mirror of the tombstones collection: each deleted product's version and deletion time.

Every ingest batch asks for the markers of its products, and a refresh whose side index cannot
tell asks "what was deleted since t"; on milvus-lite each is a filter query through the in-process
gRPC adapter, and beside a Milvus server a Strong read that waits for the server's time tick. So
they are answered from here: this process's own markers as it writes them, other workers' with
each sync of the side index (``index.store.VectorStore``), which reads the markers written since
its last sync anyway.

A plain in-memory structure that knows nothing of Milvus: ``VectorStore`` fills it at start-up and
applies every marker it writes, deletes and purges, with the same rules as the collection.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
from sortedcontainers import SortedList

__all__ = ["TombstoneMirror"]


class TombstoneMirror:
    """product_id -> (version, deleted_at), and the same ordered by deletion time."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[int, int]] = {}
        self._by_time = SortedList()  # (deleted_at, product_id)

    def __len__(self) -> int:
        return len(self._held)

    def put(self, versions: Mapping[str, int], deleted_at: int) -> None:
        """Markers written (an upsert: a product's newer marker replaces its older one)."""
        for pid, version in versions.items():
            self.remove([pid])
            self._held[pid] = (int(version), int(deleted_at))
            self._by_time.add((int(deleted_at), pid))

    def remove(self, ids: Iterable[str]) -> None:
        for pid in ids:
            held = self._held.pop(pid, None)
            if held is not None:
                self._by_time.remove((held[1], pid))

    def purge(self, older_than_ms: int) -> int:
        """Forget the markers deleted before ``older_than_ms`` (the collection's purge rule)."""
        old = list(self._by_time.irange(maximum=(int(older_than_ms), ""), inclusive=(True, False)))
        for _, pid in old:
            del self._held[pid]
        del self._by_time[: len(old)]
        return len(old)

    def export(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """The markers as arrays (version, deleted_at) and their ids; ``restored`` takes them back."""
        ids = list(self._held)
        held = [self._held[pid] for pid in ids]
        return ({"version": np.array([v for v, _ in held], np.int64).reshape(-1),
                 "deleted_at": np.array([t for _, t in held], np.int64).reshape(-1)}, {"ids": ids})

    @classmethod
    def restored(cls, arrays: dict[str, np.ndarray], tables: dict[str, object]) -> "TombstoneMirror":
        ids = tables["ids"]
        if not isinstance(ids, list) or len(arrays["version"]) != len(ids) or len(arrays["deleted_at"]) != len(ids):
            raise ValueError("markers do not fit")
        mirror = cls()
        for pid, version, deleted_at in zip(ids, arrays["version"].tolist(), arrays["deleted_at"].tolist()):
            mirror._held[str(pid)] = (version, deleted_at)
        mirror._by_time = SortedList((t, pid) for pid, (_, t) in mirror._held.items())
        return mirror

    def versions(self, ids: Iterable[str]) -> dict[str, int]:
        """The marker's version of each id among ``ids`` that has one."""
        return {pid: held[0] for pid in ids if (held := self._held.get(pid)) is not None}

    def deleted_since(self, since_ms: int) -> set[str]:
        """Products whose marker was written at or after ``since_ms``."""
        return {pid for _, pid in self._by_time.irange(minimum=(int(since_ms), ""))}
