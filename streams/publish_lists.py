"""Recompute lists with every one searched, publish the ones that differ, then record them.

Shared by ``simstream reconcile`` (every list, from the index) and ``simstream backfill`` (every
list after a bulk load). Same steps as the refresh agent (``Refresher.plan`` -> publish ->
``record``) through the same ``Outbox``, so the lists and their messages equal the streaming
path's. Every pair of products is multiplied once for all lists (index/all_pairs.py), and a page
of lists is rescored from those candidates (a list they no longer hold is searched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from simstream.streams.outbox import Outbox
from simstream.streams.pipeline import StepRunner, every_list_scan
from simstream.streams.refresh import Refresher

__all__ = ["Published", "publish_searched"]


@dataclass
class Published:
    lists: int = 0
    differed: int = 0
    tombstones: int = 0


async def publish_searched(refresher: Refresher, outbox: Outbox, run: StepRunner, ids: Sequence[str], *,
                           page: int = 512) -> Published:
    """Search, publish and record the lists of ``ids`` (sorted), ``page`` at a time. Each page is
    durable on the topic before it is recorded, as in the refresh agent."""
    out = Published(lists=len(ids))
    ordered = sorted(ids)
    scan = await every_list_scan(refresher, run, len(ordered))
    for start in range(0, len(ordered), page):
        plan = await run("plan", lambda chunk: refresher.plan(chunk, {}, search_all=True, scan=scan),
                         ordered[start:start + page])
        await outbox.lists(plan.publish, plan.payloads)
        await run("record", refresher.record, plan)
        out.differed += len(plan.publish)
        out.tombstones += sum(1 for nl in plan.publish.values() if nl is None)
    return out
