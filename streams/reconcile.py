"""``simstream reconcile``: recompute every list from the index, publish only the differences.

Same code path as streaming (``Refresher.plan`` / ``record``), with every list searched (no
merges from recorded lists, so a damaged record cannot carry over); run it while the stream is quiet or
after an upgrade. A milvus-lite file is opened by one process only: stop the worker first, or run
``milvus-lite server`` and point both at its URI.
"""

from __future__ import annotations

import asyncio
from typing import Any

from simstream.encoders.fusion import ProductEncoder
from simstream.logs import get_logger
from simstream.settings import Settings
from simstream.streams.outbox import Outbox
from simstream.streams.pipeline import StepRunner
from simstream.streams.publish_lists import publish_searched
from simstream.streams.runtime import live_steps
from simstream.streams.transports import ConfluentTransport

__all__ = ["reconcile_all"]

log = get_logger(__name__)


def reconcile_all(settings: Settings, *, encoder: ProductEncoder | None = None, page: int = 512) -> dict[str, Any]:
    """Every list of the live generation searched and compared with what was published; returns the counts."""
    ingest, refresher, fence, live = live_steps(settings, encoder)
    run = StepRunner(max_retries=live.max_retries)
    try:
        with ConfluentTransport(live) as transport:
            done = asyncio.run(publish_searched(refresher, Outbox(transport, live, fence=fence), run, page=page))
    finally:
        run.close()
    report = {"lists": done.lists, "differed": done.differed, "tombstones": done.tombstones}
    log.info("reconciled", **report)
    return report
