"""An in-memory mirror of the lists collection's heads: who each list holds, and its boundary.

The ingest step asks three questions of the recorded lists for every batch: whose list holds any
of these products (the reverse index), what are these lists' boundaries, and which lists have a
boundary at most x. On milvus-lite each is a filter scan in Python over the whole collection
(``array_contains_any`` alone took ~460 ms per batch at 20,000 lists, docs/benchmarks.md). This
mirror answers them from dicts; the payloads stay in Milvus.

A plain in-memory structure that knows nothing of Milvus: ``index.store.VectorStore`` fills it,
applies the lists it records and keeps it in step with other workers' records.
"""

from __future__ import annotations

import math
import sys
from typing import Iterable, Mapping, Sequence

import numpy as np
from sortedcontainers import SortedKeyList

from simstream.index.rows import HeadFacts, ListHead

__all__ = ["ListMirror"]


def _indexed(head: ListHead) -> bool:
    """Whether a head belongs in the boundary index: a real list with a comparable boundary (a NaN
    boundary, which older workers recorded for products with an extreme price, never satisfies
    ``<= x`` and would break the index's order)."""
    return not head.is_tombstone and not math.isnan(head.boundary)


class ListMirror:
    """Forward (owner -> head) and reverse (neighbour -> owners) maps of the recorded lists.

    Memory, at one list per product: ids are interned (one string object per product however many
    lists name it; the side index interns too) and the reverse map holds lists, not sets (a
    15-element set is ~700 bytes, a list ~180; an owner appears once per neighbour's entry).

    "Which lists have a boundary at most x" is asked once per ingest batch: the owners of real
    lists are also kept sorted by boundary, so it costs O(log N + answer), not a pass over N heads
    (13.5 ms per batch at 100k lists, 1.35 s at 10M, as a Python loop)."""

    def __init__(self) -> None:
        self._heads: dict[str, ListHead] = {}
        self._listers: dict[str, list[str]] = {}
        self._by_boundary = SortedKeyList(key=lambda owner: self._heads[owner].boundary)
        # Content digests of the recorded lists (NeighbourList.content_digest), where known (see
        # HeadFacts), valid while their head is the held one: any other head put for the owner
        # drops it (and so its members' scores, which live in the head).
        self._digests: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._heads)

    def owners(self) -> set[str]:
        """Every product with a held head (markers of deleted products included)."""
        return set(self._heads)

    def put(self, heads: Iterable[ListHead], facts: Mapping[str, HeadFacts] | None = None) -> None:
        """Hold ``heads`` (the last one per owner), with what their writer knew (``facts``: the
        content digest, the owner's row, the members' exact scores) where given."""
        latest = {sys.intern(str(h.product_id)): h for h in heads}  # one head per owner: the last
        real: list[str] = []
        for owner, head in latest.items():
            self._forget(owner)
            members = tuple(sys.intern(str(nid)) for nid in head.neighbour_ids)
            known = facts.get(owner) if facts is not None else None
            self._heads[owner] = self._held(ListHead(owner, members, head.boundary, head.updated_at, head.as_of),
                                            owner, known)
            if _indexed(head):
                real.append(owner)
            for nid in dict.fromkeys(members):
                self._listers.setdefault(nid, []).append(owner)
        self._by_boundary.update(real)  # sorted in bulk: a start-up load is one sort, not N inserts

    def _held(self, head: ListHead, owner: str, facts: HeadFacts | None) -> ListHead:
        """``head`` as held with ``facts`` beside it: its digest, and the members' scores with the
        owner's row (``ListHead.scores``, ``ListHead.owner``). Facts without one score per member
        belong to some other list: none of them is taken. (Built directly: ``dataclasses.replace``
        costs several times a constructor, twice per list a refresh records.)"""
        if facts is None or len(facts.scores) != 4 * len(head.neighbour_ids):
            return head
        self._digests[owner] = facts.digest
        return ListHead(owner, head.neighbour_ids, head.boundary, head.updated_at, head.as_of, facts.scores, facts.owner)

    def _forget(self, owner: str) -> None:
        """Drop ``owner``'s head, its digest and its entries in the reverse map."""
        self._digests.pop(owner, None)
        old = self._heads.get(owner)
        if old is None:
            return
        if _indexed(old):
            self._by_boundary.remove(owner)  # while its head, and so its key, is still there
        del self._heads[owner]
        for nid in old.neighbour_ids:
            owners = self._listers.get(nid)
            if owners is not None and owner in owners:
                owners.remove(owner)
                if not owners:
                    del self._listers[nid]

    def drop(self, owners: Iterable[str]) -> None:
        """Forget the heads of ``owners`` (lists no longer recorded)."""
        for owner in owners:
            self._forget(owner)

    def keep_known(self, known: Mapping[str, tuple[ListHead, HeadFacts]]) -> None:
        """Attach ``facts`` to held heads: for each owner, only if the held head is still ``head``
        (same members, boundary, write and state times)."""
        for owner, (head, facts) in known.items():
            now = self._heads.get(owner)
            if now is not None and (now.updated_at, now.as_of, now.boundary, now.neighbour_ids) \
                    == (head.updated_at, head.as_of, head.boundary, head.neighbour_ids):
                self._heads[owner] = self._held(now, owner, facts)

    def remove_markers_older_than(self, older_than_ms: int) -> int:
        """Drop the tombstone markers recorded before ``older_than_ms`` (the ones
        ``MilvusStore.purge_list_markers`` deletes: same rule, so the copy stays equal); a list
        recorded again since is a real list or a newer marker and stays. Returns how many went."""
        old = [pid for pid, h in self._heads.items() if h.is_tombstone and h.updated_at < older_than_ms]
        for pid in old:
            self._forget(pid)
        return len(old)

    def not_held(self, heads: Iterable[ListHead]) -> list[ListHead]:
        """The heads among ``heads`` that differ from what the mirror holds."""
        return [h for h in heads if (old := self._heads.get(h.product_id)) is None
                or old.updated_at != h.updated_at or old.neighbour_ids != h.neighbour_ids]

    # --- snapshots (index/snapshot.py) ----------------------------------------------------------
    def export(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """Every held head, and the facts held beside it, as arrays and JSON-able tables;
        ``restored`` gives back an equal mirror (the reverse map and boundary order are rebuilt)."""
        owners = list(self._heads)
        heads = [self._heads[o] for o in owners]
        known = [i for i, (o, h) in enumerate(zip(owners, heads)) if h.scores and o in self._digests]
        arrays: dict[str, np.ndarray] = {
            "boundary": np.array([h.boundary for h in heads], np.float64),
            "updated_at": np.array([h.updated_at for h in heads], np.int64),
            "as_of": np.array([h.as_of for h in heads], np.int64),
            "members_end": np.cumsum([len(h.neighbour_ids) for h in heads], dtype=np.int64),
            "known": np.array(known, np.int64),
            "known_owner": np.array([heads[i].owner or (0, 0) for i in known], np.int64).reshape(-1, 2),
            "known_scores_end": np.cumsum([len(heads[i].scores) for i in known], dtype=np.int64),
            "known_scores": np.frombuffer(b"".join(heads[i].scores for i in known), np.uint8),
            "known_digest_end": np.cumsum([len(self._digests[owners[i]]) for i in known], dtype=np.int64),
            "known_digests": np.frombuffer(b"".join(self._digests[owners[i]] for i in known), np.uint8),
        }
        return arrays, {"owners": owners, "members": [m for h in heads for m in h.neighbour_ids]}

    @classmethod
    def restored(cls, arrays: dict[str, np.ndarray], tables: dict[str, object]) -> "ListMirror":
        """The mirror ``export`` described; ValueError (or KeyError) when the parts disagree."""
        owners, members = tables["owners"], tables["members"]
        if not isinstance(owners, list) or not isinstance(members, list):
            raise ValueError("owners and members are not lists")
        n = len(owners)
        ends = arrays["members_end"]
        if any(len(arrays[k]) != n for k in ("boundary", "updated_at", "as_of", "members_end")) \
                or (n and (ends[-1] != len(members) or (np.diff(ends, prepend=0) < 0).any())):
            raise ValueError("heads and members do not fit")
        starts = np.concatenate([[0], ends[:-1]]).tolist() if n else []
        boundary, updated, as_of = arrays["boundary"].tolist(), arrays["updated_at"].tolist(), arrays["as_of"].tolist()
        heads = [ListHead(str(owners[i]), tuple(members[starts[i]:ends[i]]), boundary[i], updated[i], as_of[i])
                 for i in range(n)]
        facts: dict[str, HeadFacts] = {}
        known = arrays["known"].tolist()
        if known and (max(known) >= n or min(known) < 0):
            raise ValueError("facts for a head that is not there")
        scores, digests = arrays["known_scores"].tobytes(), arrays["known_digests"].tobytes()
        s_end, d_end, owner = arrays["known_scores_end"].tolist(), arrays["known_digest_end"].tolist(), arrays["known_owner"].tolist()
        for j, i in enumerate(known):
            s0, d0 = s_end[j - 1] if j else 0, d_end[j - 1] if j else 0
            facts[str(owners[i])] = HeadFacts(digests[d0:d_end[j]], (int(owner[j][0]), int(owner[j][1])), scores[s0:s_end[j]])
        mirror = cls()
        mirror.put(heads, facts)
        return mirror

    # --- reads --------------------------------------------------------------------------------
    def listers_of(self, ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for pid in ids:
            out.update(self._listers.get(pid, ()))
        return out

    def heads(self, ids: Iterable[str]) -> dict[str, ListHead]:
        return {pid: h for pid in ids if (h := self._heads.get(pid)) is not None}

    def digests(self, ids: Iterable[str]) -> dict[str, bytes]:
        """Content digests of the held lists among ``ids``, where known."""
        return {pid: d for pid in ids if (d := self._digests.get(pid)) is not None}

    def boundaries(self, ids: Iterable[str]) -> dict[str, float]:
        """Boundary of each recorded list (tombstone markers and unrecorded ids left out)."""
        return {pid: h.boundary for pid in ids if (h := self._heads.get(pid)) is not None and not h.is_tombstone}

    def boundaries_at_most(self, score: float) -> dict[str, float]:
        """Boundary of every real list whose boundary is <= ``score``."""
        return {pid: self._heads[pid].boundary for pid in self._by_boundary.irange_key(max_key=score)}
