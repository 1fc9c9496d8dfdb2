"""The backfill's pipelined load (streams/backfill.py ``load``) on a real milvus-lite file and the
real encoders: a batch is encoded while the one before is written, yet versions decide exactly as
in a sequential load, also when a product comes back in the next batch."""

from __future__ import annotations

import asyncio
from typing import Sequence

import orjson
import pytest

from simstream.streams import messages
from simstream.streams.backfill import BackfillReport, load
from simstream.streams.dead_letter import RawRecord
from simstream.streams.ingest import Ingest
from simstream.streams.outbox import Outbox
from simstream.streams.pipeline import StepRunner


class Sent:
    """A transport that keeps what was sent (dead letters here)."""

    def __init__(self) -> None:
        self.sent: list[messages.Message] = []

    async def partitions(self, topic: str) -> int:
        return 1

    async def send(self, batch: Sequence[messages.Message]) -> None:
        self.sent += batch


def line(pid: str, version: int, title: str, n: int) -> RawRecord:
    doc = {"product_id": pid, "op": "upsert", "version": version, "title": title, "event_time": 1_000}
    return RawRecord(pid.encode(), orjson.dumps(doc), 0, n, 1_000)


@pytest.mark.parametrize("overlap", [False, True], ids=["cpu", "encoders-own-thread"])
def test_versions_decide_as_in_a_sequential_load_across_overlapping_batches(settings, store, encoder, overlap) -> None:  # noqa: ANN001
    # batches of 2: [a v1, b] [a v3, c] [a v2, d] [e]. The third batch's versions must be read after
    # the second is written (a v3), or a v2 would pass the version check and overwrite v3.
    lines = [line("a", 1, "red mug", 0), line("b", 1, "blue mug", 1),
             line("a", 3, "red mug v3", 2), line("c", 1, "steel bottle", 3),
             line("a", 2, "red mug v2", 4), line("d", 1, "green mug", 5),
             line("e", 1, "lamp", 6)]
    report = BackfillReport()
    run = StepRunner(max_retries=0, overlap_encoding=overlap)
    try:
        asyncio.run(load(Ingest(store, encoder, candidate_pool=8), run, Outbox(Sent(), settings), iter(lines),
                         report, batch_size=2, source="backfill:test"))
    finally:
        run.close()
    stored = store.get_products(["a", "b", "c", "d", "e"])
    assert stored["a"].version == 3 and set(stored) == {"a", "b", "c", "d", "e"}
    assert (report.records, report.applied, report.stale_or_duplicate) == (7, 6, 1)
