"""Recompute lists with every one searched, publish the ones that differ, then record them.

Shared by ``simstream reconcile`` (every list, from the index) and ``simstream backfill`` (every
list after a bulk load). Same steps as the refresh agent (``Refresher.plan`` -> publish -> flush ->
``record``), so the lists equal the streaming path's; a page of lists is one batched search, i.e.
one blocked pass of its queries over the whole catalog matrix (index/side.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from simstream.index.store import VectorStore
from simstream.settings import Settings
from simstream.streams.producer import EventProducer
from simstream.streams.refresh import Refresher


@dataclass
class Published:
    lists: int = 0
    differed: int = 0
    tombstones: int = 0


def every_list_owner(store: VectorStore) -> list[str]:
    """Every product in the index and every product with a recorded list (a list whose owner is
    gone gets its tombstone), sorted."""
    return sorted({p.product_id for chunk in store.iter_products(2000) for p in chunk} | store.all_list_ids())


def publish_searched(refresher: Refresher, producer: EventProducer, settings: Settings, ids: Sequence[str], *,
                     page: int = 512) -> Published:
    """Search, publish and record the lists of ``ids`` (sorted), ``page`` at a time. Each page is
    durable on the topic before it is recorded, as in the refresh agent."""
    out = Published(lists=len(ids))
    ordered = sorted(ids)
    for start in range(0, len(ordered), page):
        plan = refresher.plan(ordered[start:start + page], {}, search_all=True)
        for pid, nl in plan.publish.items():
            if nl is None:
                producer.tombstone(pid, topic=settings.neighbors_topic)
                out.tombstones += 1
            else:
                producer.send(nl.to_json(), key=pid, topic=settings.neighbors_topic)
        out.differed += len(plan.publish)
        producer.flush()  # durable before it is recorded as published
        refresher.record(plan)
    return out
