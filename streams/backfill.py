"""``simstream backfill FILE``: load a catalog at the encoders' speed, then every list at once.

Streaming refreshes the lists an event affects, ~15 per event, each a search or a merge: right
for a trickle, wasteful for a new catalog, a re-embedding or a replay, where nearly every list
changes many times over. A backfill runs the worker's own ingest steps (streams/pipeline.py: validate -> coalesce -> check
versions -> encode -> write) over the file in large batches without computing affected sets (on a
GPU, one batch encoding while the one before is written),
then recomputes *every* list with the same builder (``publish_searched``): each pair of products
multiplied once, in blocks (index/all_pairs.py), on the GPU when there is one, then the lists
rescored exactly page by page.
The lists therefore equal the streaming path's, and only lists whose content differs from what was
last published go to the topic.

Every product it writes goes to the catalog changelog too (docs/events.md), as the stream's would.
A record that does not parse or cannot be encoded goes to the dead-letter topic with its reason
(``x-simstream-source-topic: backfill:FILE``, the line number as the offset) through the worker's
own dead-letter sender (streams/outbox.py).
Run it with the worker stopped or pointed at a Milvus server (a milvus-lite file opens in one
process only); the stream may continue afterwards from where its offsets are.
"""

from __future__ import annotations

import asyncio
import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import orjson

from simstream.logs import get_logger
from simstream.settings import Settings
from simstream.streams.dead_letter import RawRecord
from simstream.streams.ingest import Ingest, validate
from simstream.streams.outbox import Outbox
from simstream.streams.pipeline import IngestOutcome, StepRunner, check_batch, encode_batch, write_batch
from simstream.streams.producer import from_csv_row, with_event_defaults
from simstream.streams.publish_lists import publish_searched
from simstream.streams.refresh import Refresher
from simstream.streams.fence import Fence
from simstream.streams.runtime import live_steps, single_threaded_numpy
from simstream.streams.transports import ConfluentTransport

__all__ = ["BackfillReport", "backfill_file", "read_records", "load"]

log = get_logger(__name__)


def read_records(path: Path) -> Iterator[RawRecord]:
    """Every line (JSON Lines) or row (CSV, header = field names) as a record to validate; the
    line number is its offset. ``op`` defaults to upsert, ``version``/``event_time`` to now (ms).
    A line that is not JSON stays as it is, so validation dead-letters it with the reason."""
    now = int(time.time() * 1000)

    def record(n: int, doc: object, raw: bytes) -> RawRecord:
        if isinstance(doc, dict):
            raw = orjson.dumps(with_event_defaults(doc, now))
            key = str(doc.get("product_id", "")).encode()
        else:
            key = None
        return RawRecord(key, raw, partition=0, offset=n, timestamp_ms=now)

    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8", errors="replace") as fh:
            for n, row in enumerate(csv.DictReader(fh)):
                try:
                    doc: object = from_csv_row(row)
                except ValueError:  # a non-numeric price or version: validation names it
                    doc = {k: v for k, v in row.items() if k is not None}
                yield record(n, doc, orjson.dumps(doc))
        return
    with path.open("rb") as raw_lines:
        for n, line in enumerate(raw_lines):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                doc = None
            yield record(n, doc, line.rstrip(b"\r\n"))


@dataclass
class BackfillReport:
    """What one backfill did: records read and how each ended, lists computed and published."""

    records: int = 0
    applied: int = 0
    stale_or_duplicate: int = 0
    dead_lettered: int = 0
    lists: int = 0
    published: int = 0
    tombstones: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def _batches(records: Iterator[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    batch: list[RawRecord] = []
    for r in records:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def load(ingest: Ingest, run: StepRunner, outbox: Outbox, records: Iterator[RawRecord], report: BackfillReport,
               *, batch_size: int, source: str) -> None:
    """The worker's ingest steps over big batches, without affected sets (every list follows),
    pipelined where the encoders have their own thread (a GPU: ``StepRunner``): batch N+1 is encoded
    while batch N is written. N+1's versions are read before N is written, which is exact because N's write touches only
    N's products; a batch sharing a product with N waits for N's write before reading them."""
    ahead: tuple[list[RawRecord], IngestOutcome] | None = None  # encoded, not yet written
    for batch in _batches(records, batch_size):
        if ahead is not None and _shares_products(batch, ahead[1]):
            await _written(ingest, run, outbox, *ahead, report, source)  # the versions must see it
            ahead = None
        out = await check_batch(batch, ingest, run)  # index thread, before ``ahead`` is written
        writing = asyncio.create_task(_written(ingest, run, outbox, *ahead, report, source)) if ahead else None
        try:
            await encode_batch(out, batch, ingest, run)  # on a GPU: meanwhile
        finally:
            if writing is not None:
                await writing
        ahead = (batch, out)
    if ahead is not None:
        await _written(ingest, run, outbox, *ahead, report, source)


def _shares_products(batch: Sequence[RawRecord], written: IngestOutcome) -> bool:
    ids = written.product_ids
    return any(e.product_id in ids for e in validate(batch)[0])


async def _written(ingest: Ingest, run: StepRunner, outbox: Outbox, batch: list[RawRecord], out: IngestOutcome,
                   report: BackfillReport, source: str) -> None:
    """Write one encoded batch, send its dead letters and its catalog changelog records, count it."""
    await write_batch(out, ingest, run, affected=False)
    await outbox.dead_letters(out.rejects, source)
    await outbox.catalog(out.accepted)
    report.records += len(batch)
    report.applied += out.check.outcomes["applied"]
    report.stale_or_duplicate += out.dropped + out.check.outcomes["stale"] + out.check.outcomes["duplicate"]
    report.dead_lettered += len(out.rejects)
    log.info("backfill batch written", records=report.records, applied=report.applied,
             dead_lettered=report.dead_lettered)


async def _backfill(settings: Settings, path: Path, ingest: Ingest, refresher: Refresher, run: StepRunner,
                    report: BackfillReport, *, batch_size: int, page: int, fence: Fence | None = None) -> None:
    store = ingest.store
    with ConfluentTransport(settings) as transport:
        outbox = Outbox(transport, settings, fence=fence)
        t0 = time.perf_counter()
        await load(ingest, run, outbox, read_records(path), report, batch_size=batch_size,
                   source=f"backfill:{path.name}")
        await run("flush", store.flush)
        t1 = time.perf_counter()
        done = await publish_searched(refresher, outbox, run, page=page)
        t2 = time.perf_counter()
    report.lists, report.published, report.tombstones = done.lists, done.differed, done.tombstones
    report.seconds = {"load": round(t1 - t0, 2), "lists": round(t2 - t1, 2)}


def backfill_file(settings: Settings, path: Path, *, batch_size: int = 1024, page: int = 512) -> BackfillReport:
    """Load ``path`` into the live generation's index (simstream.generations) and publish every
    list that differs from the topic's, while that generation may publish."""
    single_threaded_numpy()
    ingest, refresher, fence, live = live_steps(settings)
    run = StepRunner(max_retries=live.max_retries, overlap_encoding=ingest.encoder.on_accelerator)
    report = BackfillReport()
    try:
        asyncio.run(_backfill(live, path, ingest, refresher, run, report, batch_size=batch_size, page=page,
                              fence=fence))
    finally:
        run.close()
        ingest.store.close()
    log.info("backfilled", **{k: v for k, v in report.__dict__.items()})
    return report
