"""Recompute lists with every one searched, publish the ones that differ, then record them.

Shared by ``simstream reconcile`` (every list, from the index) and ``simstream backfill`` (every
list after a bulk load). Same steps as the refresh agent (``publish_refreshed``: ``Refresher.plan``
-> publish -> ``record``) through the same ``Outbox``, so the lists and their messages equal the streaming
path's. Every pair of products is multiplied once for all lists (index/all_pairs.py), and a page
of lists is rescored from those candidates (a list they no longer hold is searched).
"""

from __future__ import annotations

from dataclasses import dataclass
from simstream.streams.outbox import Outbox
from simstream.streams.pipeline import StepRunner, every_list_scan, publish_refreshed
from simstream.streams.refresh import Refresher

__all__ = ["Published", "publish_searched"]


@dataclass
class Published:
    lists: int = 0
    differed: int = 0
    tombstones: int = 0


async def publish_searched(refresher: Refresher, outbox: Outbox, run: StepRunner, *, page: int = 512) -> Published:
    """Search, publish and record every list the index holds (sorted by owner), ``page`` at a
    time (``publish_refreshed``: each page durable on the topic before it is recorded), then flush."""
    ordered = sorted(await run("list_owners", refresher.store.list_owners))
    out = Published(lists=len(ordered))
    scan = await every_list_scan(refresher, run, len(ordered))
    for start in range(0, len(ordered), page):
        plan = await publish_refreshed(refresher, outbox, run, ordered[start:start + page], {}, search_all=True,
                                       scan=scan)
        out.differed += len(plan.publish)
        out.tombstones += sum(1 for nl in plan.publish.values() if nl is None)
    await run("flush", refresher.store.flush)
    return out
