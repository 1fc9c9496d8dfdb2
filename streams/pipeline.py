"""The data path, read top to bottom: what the two agents do with a batch, without Faust.

    ingest:  validate -> coalesce -> check versions -> encode -> write -> affected set
             -> dead letters, the catalog changelog, refresh requests for lists
                owned elsewhere (durable)
             -> the refresh steps for the lists this worker owns, in a task
                that runs while the next batch is taken and encoded            [ack the input]
    refresh: decode requests -> plan (merge or search) -> publish -> record -> recheck
             (plan -> publish -> record: ``publish_refreshed``, also reconcile's and backfill's)
             -> refresh requests for lists that raced                          [ack the input]
             (an every-list request: all pairs multiplied once, then plan page by page)

The agents (streams/app.py) only take batches and ack them after ``DataPath.ingest`` (and the
task it may return) or ``DataPath.refresh`` returned; everything here runs on plain records
(``RawRecord``) and sends through an ``Outbox``, so tests drive it with a fake transport, and
``simstream backfill`` runs the same ingest steps (``check_batch``, ``encode_batch``, ``write_batch``).

Every step that touches the index or the models runs through ``StepRunner``: index steps on one
thread (milvus-lite is not thread-safe); the encoders on that thread too, or, when they run on a
GPU, on their own, so that a batch encodes while the lists of the one before are planned and
recorded; a retry of Milvus blips, a latency metric per step name. No record can stop a partition:
``DataPath.isolate`` waits out outages and narrows a failing batch down to the record that fails
alone, which is dead-lettered with its exception (streams/isolation.py).
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from simstream import retry
from simstream.errors import IndexUnavailable
from simstream.index.all_pairs import AllPairs
from simstream.encoders.fusion import EncodedBatch
from simstream.logs import get_logger
from simstream.records import ProductEvent
from simstream.settings import Settings
from simstream.streams import messages, metrics
from simstream.streams.dead_letter import RawRecord, Rejected
from simstream.streams.ingest import (
    Ingest, VersionCheck, coalesce, encode_rejects, outcome_counts, refresh_causes, validate,
)
from simstream.streams.isolation import apply_or_dead_letter, until_applied
from simstream.streams.bulk import BulkRound
from simstream.streams.outbox import Outbox
from simstream.streams.refresh import Refresher, RefreshPlan
from simstream.streams.refresh_requests import RefreshItem, decode_requests, merge

__all__ = ["ALL_PAIRS_SHARE", "REUSE_TOUCHED_SHARE", "EVERY_LIST_PAGE", "REPUBLISH_PAGE", "INDEX", "MODELS", "StepRunner", "IngestOutcome", "check_batch", "encode_batch", "write_batch", "ingest_steps", "every_list_scan", "publish_refreshed", "all_durable", "finished", "DataPath"]

log = get_logger(__name__)
T = TypeVar("T")

EVERY_LIST_PAGE = 512  # lists per batched search when refreshing every list (one pass over the catalog)
REPUBLISH_PAGE = 1000  # recorded lists read and published per step of a republish (one Milvus query)
# An every-list refresh multiplies each pair of products once (index/all_pairs.py: N^2 / 2 products)
# when it computes at least this share of the catalog's lists; fewer are searched page by page
# (N x lists), as a worker owning a few of many refresh partitions does.
ALL_PAIRS_SHARE = 0.5
# A kept all-pairs pass serves a later every-list request while at most this share of its rows
# were written since it began (their lists, and lists with them among the candidates, are searched).
REUSE_TOUCHED_SHARE = 0.05

INDEX = "index"    # the thread of every Milvus and index step
MODELS = "models"  # the encoders' thread
R = TypeVar("R")


class StepRunner:
    """The one way a step runs: ``await run("write", fn, *args)`` runs ``fn`` on the index thread
    (``thread=MODELS``: on the encoders' thread), retries a Milvus blip (``IndexUnavailable``) under
    ``retry.INDEX_BLIP``, and observes the step's latency under its name."""

    def __init__(self, *, max_retries: int, overlap_encoding: bool = False) -> None:
        """``overlap_encoding``: run the encoders on their own thread (``MODELS``), beside the index
        work; for encoders on a GPU. On the CPU they would share its cores with the index thread,
        and their intra-op threads wait for the slowest: on 2 cores a batch encoded 2.3x slower
        beside a busy thread, and the 10k pipeline was no faster (docs/scaling.md), so there the
        encoders take the index thread's turn."""
        # One thread for all Milvus and index work (milvus-lite is not thread-safe; ingest and
        # refresh index steps then never interleave), one for encoders on a GPU. Both keep
        # inference and scans off the event loop (heartbeats).
        self.threads = {INDEX: ThreadPoolExecutor(1, thread_name_prefix="simstream-index"),
                        MODELS: ThreadPoolExecutor(1, thread_name_prefix="simstream-models")}
        self.encoding_thread = MODELS if overlap_encoding else INDEX
        self.policy = retry.INDEX_BLIP.with_attempts(max_retries + 1)
        self.index_ready = True
        self._started: dict[str, float] = {}  # per thread, when the step on it started
        self.busy_s = 0.0  # seconds steps have run, all threads together (the watchdog's "free time")
        # Held by a refresh from its plan until its lists are recorded, and by an ingest for its
        # index steps, so that within one worker no ingest judges a change against lists being
        # replaced (across workers, Refresher.recheck closes that race).
        self.lists_lock = asyncio.Lock()

    @property
    def busy_since(self) -> float | None:
        """When the oldest step now running started (readiness sees a stuck one)."""
        return min(self._started.values(), default=None)

    async def on_thread(self, fn: Callable[..., T], *args: Any, thread: str = INDEX) -> T:
        """``fn(*args)`` on ``thread``, once."""
        self._started[thread] = t0 = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.threads[thread], fn, *args)
        finally:
            self._started.pop(thread, None)
            self.busy_s += time.monotonic() - t0

    async def __call__(self, name: str, fn: Callable[..., T], *args: Any, thread: str = INDEX) -> T:
        started = time.perf_counter()

        def blip(exc: BaseException) -> None:
            self.index_ready = False

        async def once(*a: Any) -> T:
            return await self.on_thread(fn, *a, thread=thread)

        result = await retry.call_async(self.policy, name, once, *args,
                                        retry_on=(IndexUnavailable,), on_retry=blip)
        metrics.observe_step(name, started)
        self.index_ready = True
        return result

    def close(self) -> None:
        for executor in self.threads.values():
            executor.shutdown(wait=False)


@dataclass
class IngestOutcome:
    """What one ingest batch did, and what must be sent for it."""

    rejects: list[Rejected] = field(default_factory=list)
    affected: set[str] = field(default_factory=set)
    causes: dict[str, int] = field(default_factory=dict)  # per affected list, the event time behind it
    check: VersionCheck = field(default_factory=VersionCheck)
    encoded: EncodedBatch | None = None
    dropped: int = 0  # superseded by a later event of the same batch
    events: list[ProductEvent] = field(default_factory=list)
    latest: list[ProductEvent] = field(default_factory=list)  # the newest event per product

    @property
    def product_ids(self) -> set[str]:
        return {e.product_id for e in self.latest}

    @property
    def accepted(self) -> list[ProductEvent]:
        """The events the index now holds (written, or already written: a replay), for the catalog
        changelog; not the stale ones, nor those the encoders refused (dead-lettered)."""
        written = self.encoded.products if self.encoded is not None else []
        return [*written, *self.check.deletes, *self.check.duplicates]


async def check_batch(records: Sequence[RawRecord], steps: Ingest, run: StepRunner) -> IngestOutcome:
    """validate -> coalesce -> check versions. Needs no lock: a refresh writes no product."""
    out = IngestOutcome()
    out.events, out.rejects = validate(records)
    out.latest, out.dropped = coalesce(out.events)
    out.check = await run("read_versions", steps.check_versions, out.latest)
    return out


async def encode_batch(out: IngestOutcome, records: Sequence[RawRecord], steps: Ingest, run: StepRunner) -> IngestOutcome:
    """encode, without the lists lock; on a GPU from the encoders' own thread, while the refresh
    agent plans and records the lists of the batch before on the index thread (the backfill:
    writes it)."""
    out.encoded = await run("encode", steps.encode, out.check, thread=run.encoding_thread)
    out.rejects += encode_rejects(out.encoded, records)
    return out


async def write_batch(out: IngestOutcome, steps: Ingest, run: StepRunner, *, affected: bool = True) -> IngestOutcome:
    """write -> affected set, under the lists lock (no list is being replaced meanwhile)."""
    assert out.encoded is not None, "write_batch before encode_batch"
    async with run.lists_lock:
        changes = await run("write", steps.write, out.check, out.encoded)
        if affected:
            out.affected = await run("affected", steps.affected_set, changes)
    out.causes = refresh_causes(out.check, out.affected)
    return out


async def ingest_steps(records: Sequence[RawRecord], steps: Ingest, run: StepRunner, *,
                       affected: bool = True) -> IngestOutcome:
    """The ingest steps in order, the one sequence both the agent and ``simstream backfill`` run
    (the backfill without affected sets, since it computes every list afterwards; it runs the
    three parts itself, to overlap one batch's write with the next one's encoding)."""
    out = await encode_batch(await check_batch(records, steps, run), records, steps, run)
    return await write_batch(out, steps, run, affected=affected)


async def every_list_scan(refresher: Refresher, run: StepRunner, lists: int) -> AllPairs | None:
    """The all-pairs pass for an every-list refresh of ``lists`` lists, run to the end a step at a
    time on the index thread (writes go on between steps; index/all_pairs.py says how they are
    accounted for); None where searching page by page costs less (``ALL_PAIRS_SHARE``) or there
    is no side index."""
    if lists < ALL_PAIRS_SHARE * await run("count", refresher.store.product_count):
        return None
    started = time.perf_counter()
    scan = await run("all_pairs", refresher.every_list_pass)
    while scan is not None and not scan.done:
        await run("all_pairs", scan.advance)
    if scan is not None:
        log.info("all pairs multiplied", rows=scan.used, seconds=round(time.perf_counter() - started, 1))
    return scan


async def publish_refreshed(refresher: Refresher, outbox: Outbox, run: StepRunner, ids: Sequence[str],
                            event_times: Mapping[str, int | None], *, search_all: bool = False,
                            scan: AllPairs | None = None) -> RefreshPlan:
    """plan -> publish -> record, under the lists lock: the one sequence by which a list goes out
    (the refresh agent, the ingest's own refresh, ``reconcile`` and ``backfill``). A list is durable
    on the topic before it is recorded, so a crash in between publishes it again, never loses it.
    A generation the fence keeps from publishing (a shadow, or the old one after a switch) only
    records its lists: a switch republishes them all (streams/fence.py)."""
    async with run.lists_lock:
        plan = await run("plan", functools.partial(refresher.plan, search_all=search_all, scan=scan), ids, event_times)
        if outbox.fence is None or await outbox.fence.allows(run):
            await outbox.lists(plan.publish, plan.payloads)
        await run("record", refresher.record, plan)
    return plan


async def all_durable(*sends: Awaitable[None]) -> None:
    """Independent sends in flight together (one round trip to Kafka instead of one each); returns
    once every one is acknowledged, else raises the first failure when all have ended (each send
    is safe to repeat: the caller's retry sends them all again)."""
    for result in await asyncio.gather(*sends, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


async def finished(durable: bool | asyncio.Task[None]) -> bool:
    """What ``DataPath.ingest`` returned, once the task it may return has ended."""
    if isinstance(durable, asyncio.Task):
        await durable
        return True
    return durable


class DataPath:
    """Both agents' work on a batch, over the steps, one ``StepRunner`` and one ``Outbox``."""

    def __init__(self, settings: Settings, steps: Ingest, refresher: Refresher, outbox: Outbox, run: StepRunner, *,
                 refresh_partitions_held: Callable[[], set[int]] = set) -> None:
        """``refresh_partitions_held``: the refresh topic's partitions this worker's refresh agent
        holds now (the lists it owns); the ingest refreshes those lists itself."""
        self.settings, self.steps, self.refresher, self.outbox, self.run = settings, steps, refresher, outbox, run
        self.bulk = BulkRound(settings.bulk_min_backlog, settings.bulk_backlog_share)
        self.refresh_partitions_held = refresh_partitions_held
        # the last all-pairs pass and the partitions it may still serve (refresh_every_list)
        self._kept_scan: tuple[AllPairs, set[int]] | None = None

    # --- ingest -----------------------------------------------------------------------------------
    async def ingest(self, records: Sequence[RawRecord], backlog: int = 0) -> bool | asyncio.Task[None]:
        """Apply a batch of product events so that each ends applied or dead-lettered. ``backlog``:
        events still waiting on this worker's input partitions. Returns when the batch's offsets
        may commit: True now; False not yet, a bulk round holds them (streams/bulk.py); or a task,
        when it ends: it refreshes the lists this worker owns, while the agent takes and encodes
        the next batch (``finished`` waits for it)."""
        topic = self.settings.events_topic
        if not records:  # nothing arrived while a round held its events (streams/app.py consume)
            if not self.bulk.active:
                return True
            backlog = 0
        if self.bulk.worth_counting(backlog):
            self.bulk.start_if(backlog, await self.run("count", self.steps.store.product_count))
            if self.bulk.active:
                log.info("bulk load: writing without affected sets, then every list", backlog=backlog)
        if not self.bulk.active:
            here: dict[str, int | None] = {}
            await self.isolate("ingest", topic, records, functools.partial(self._ingest, here=here), lambda r: r)
            return asyncio.create_task(self._refresh_here(here)) if here else True
        step, ends = self.bulk.take(records, backlog, self.settings.batch_size)
        if step:
            await self.isolate("ingest", topic, step, functools.partial(self._ingest, bulk=True), lambda r: r)
        if not ends:
            return False
        await until_applied(lambda _: self.outbox.every_list_request(), [None], answering=self.answering,
                            poison_after_s=self.settings.poison_after_s, stage="bulk")
        metrics.BULK_ROUNDS.inc()
        log.info("bulk load round done: every list requested", events=self.bulk.held, backlog=backlog)
        return True

    async def _ingest(self, records: Sequence[RawRecord], *, bulk: bool = False,
                      here: dict[str, int | None] | None = None) -> None:
        """The ingest steps for a part of a batch. The affected lists this worker owns are added
        to ``here`` (with the latest event time that caused each), for ``_refresh_here``; the
        others are sent as refresh requests."""
        out = await ingest_steps(records, self.steps, self.run, affected=not bulk)
        owned = await self._owned_here(out.affected) if here is not None else set()
        await all_durable(self.outbox.dead_letters(out.rejects, self.settings.events_topic),
                          self.outbox.catalog(out.accepted),
                          self.outbox.refresh_requests([pid for pid in out.affected if pid not in owned], out.causes))
        if here is not None:
            for pid in owned:
                here[pid] = max(out.causes.get(pid) or 0, here.get(pid) or 0) or None
        if out.encoded is not None:
            metrics.observe_encoding(out.encoded)
        counts = outcome_counts(out.check, out.dropped)
        metrics.observe_ingest(len(records), counts, len(out.rejects), out.events)
        log.info("ingested", events=len(records), **counts, dead_lettered=len(out.rejects), affected=len(out.affected),
                 owned_here=len(owned), bulk=bulk)

    async def _owned_here(self, ids: Sequence[str] | set[str]) -> set[str]:
        """The lists among ``ids`` whose refresh partition this worker holds now."""
        if not ids or not self.settings.refresh_locally or not (held := self.refresh_partitions_held()):
            return set()
        count = await self.outbox.refresh_partitions()
        return {pid for pid in ids if messages.partition_for(pid.encode(), count) in held}

    async def _refresh_here(self, lists: Mapping[str, int | None]) -> None:
        """Refresh lists this worker owns after the ingest wrote their batch, before its offsets
        commit (no refresh-topic hop). Crash-safe as a request is: a replayed event is a
        duplicate, whose affected set is computed again (docs/exactness.md section 3). An outage
        is waited out; any other failure, or an outage past ``poison_after_s`` while both
        answer, sends the lists as requests instead, so the refresh agent narrows a list that
        fails alone down and dead-letters it as a request, never the events."""
        ids = sorted(lists)
        try:
            await until_applied(lambda _: self._refresh_lists(ids, lists), [None], answering=self.answering,
                                poison_after_s=self.settings.poison_after_s, stage="refresh-here")
            metrics.REFRESHED_HERE.inc(len(ids))
        except Exception as exc:
            log.warning("refreshing lists in the ingest failed; sending them as requests", lists=len(ids),
                        error=repr(exc)[:300])
            await until_applied(lambda _: self.outbox.refresh_requests(ids, lists), [None], answering=self.answering,
                                poison_after_s=self.settings.poison_after_s, stage="refresh-here")

    # --- refresh ----------------------------------------------------------------------------------
    async def refresh(self, records: Sequence[RawRecord]) -> None:
        """Recompute the lists a batch of refresh requests names and publish the ones that changed;
        for an every-list request (the end of a bulk load), every list its partition owns."""
        topic = self.settings.refresh_topic
        requests = decode_requests(records)
        await self.outbox.dead_letters(requests.rejects, topic)
        if requests.every_list:
            await self.refresh_every_list(requests.every_list, next(r for r in records if r.partition in requests.every_list))
        if requests.republish:
            await self.republish_recorded(requests.republish)
        await self.isolate("refresh", topic, requests.items, self._refresh, RefreshItem.as_record)

    async def refresh_every_list(self, partitions: set[int], request: RawRecord) -> None:
        """Publish and record every list the refresh ``partitions`` own, a page at a time; a list
        that fails alone is dead-lettered as a request for it. Their candidates come from one
        all-pairs pass, kept for the every-list requests of this worker's other partitions that
        follow in later batches (a bulk round sends one to every partition), or from searches."""
        started = time.perf_counter()
        count = await self.outbox.refresh_partitions()
        every = await self.run("list_owners", self.steps.store.list_owners)
        owned_by = [messages.partition_for(pid.encode(), count) for pid in every]  # each list's partition
        owners = [pid for pid, part in zip(every, owned_by) if part in partitions]
        scan = await self._every_list_candidates(partitions, owned_by)
        search = functools.partial(self._refresh, search_all=True, scan=scan)
        for start in range(0, len(owners), EVERY_LIST_PAGE):
            page = [RefreshItem(pid, None, request) for pid in owners[start:start + EVERY_LIST_PAGE]]
            await self.isolate("refresh", self.settings.refresh_topic, page, search, RefreshItem.as_record)
        log.info("every list refreshed", partitions=sorted(partitions), lists=len(owners),
                 seconds=round(time.perf_counter() - started, 1))

    async def republish_recorded(self, partitions: set[int]) -> None:
        """Publish every list the refresh ``partitions`` recorded, as recorded (a generation that
        starts to publish: streams/migrate.py); a product without a recorded list is refreshed.
        Ignored, with a warning, when the fence says this generation may not publish (a later
        switch took the right away again)."""
        started = time.perf_counter()
        count = await self.outbox.refresh_partitions()
        every = await self.run("list_owners", self.steps.store.list_owners)
        owners = [pid for pid in every if messages.partition_for(pid.encode(), count) in partitions]
        allowed = True

        async def publish_page(page: Sequence[str]) -> None:
            nonlocal allowed
            allowed = await self._republish(page)

        for start in range(0, len(owners), REPUBLISH_PAGE):
            page = owners[start:start + REPUBLISH_PAGE]
            await until_applied(publish_page, page, answering=self.answering,
                                poison_after_s=self.settings.poison_after_s, stage="republish")
            if not allowed:
                log.warning("republish request while this generation may not publish; ignored",
                            partitions=sorted(partitions))
                return
        log.info("every recorded list republished", partitions=sorted(partitions), lists=len(owners),
                 seconds=round(time.perf_counter() - started, 1))
        metrics.REPUBLISHED.inc(len(owners))

    async def _republish(self, page: Sequence[str]) -> bool:
        """One page of a republish; False when the fence refused it."""
        async with self.run.lists_lock:
            fence = self.outbox.fence
            if fence is not None and not await fence.allows(self.run):
                return False
            recorded = await self.run("read_lists", self.steps.store.get_lists, page)
            await self.outbox.recorded_lists({pid: recorded[pid].payload for pid in page if pid in recorded})
        if missing := [pid for pid in page if pid not in recorded]:
            await self._refresh_lists(missing, {}, search_all=True)
        return True

    async def _every_list_candidates(self, partitions: set[int], owned_by: Sequence[int]) -> AllPairs | None:
        """The all-pairs pass for an every-list request: the one kept from a request before it
        while it serves this worker's partitions and few rows were written since (a written row's
        list is searched), else a new one when this worker owns enough of the lists
        (``every_list_scan``; ``owned_by``: every list's refresh partition), else None."""
        kept, self._kept_scan = self._kept_scan, None
        scan: AllPairs | None
        if kept is not None and partitions <= kept[1] and len(kept[0].touched) <= REUSE_TOUCHED_SHARE * kept[0].used:
            scan, serves = kept
        else:
            serves = self.refresh_partitions_held() | partitions
            mine = sum(part in serves for part in owned_by)
            scan = await every_list_scan(self.refresher, self.run, mine)
        if scan is not None and (serves := serves - partitions):
            self._kept_scan = (scan, serves)
        return scan

    async def _refresh(self, items: Sequence[RefreshItem], *, search_all: bool = False,
                       scan: AllPairs | None = None) -> None:
        ids, event_times = merge(items)
        await self._refresh_lists(ids, event_times, search_all=search_all, scan=scan)

    async def _refresh_lists(self, ids: Sequence[str], event_times: Mapping[str, int | None], *,
                             search_all: bool = False, scan: AllPairs | None = None) -> None:
        """plan -> publish -> record (under the lists lock) -> re-check; what the re-check finds
        stale goes to the refresh topic."""
        plan = await publish_refreshed(self.refresher, self.outbox, self.run, ids, event_times,
                                       search_all=search_all, scan=scan)
        stale = await self.run("recheck", self.refresher.recheck, plan)
        await self.outbox.refresh_requests(stale, event_times)
        metrics.observe_refresh(plan.publish, plan.unchanged, plan.merged, plan.searched)
        log.info("refreshed", requested=len(ids), published=len(plan.publish), unchanged=plan.unchanged,
                 merged=plan.merged, searched=plan.searched, requeued=len(stale))

    # --- no record stops a partition --------------------------------------------------------------
    async def isolate(self, stage: str, topic: str, items: Sequence[R], process: Callable[[Sequence[R]], Awaitable[None]],
                      record_of: Callable[[R], RawRecord]) -> None:
        """Apply ``process`` to ``items`` so that each ends applied or dead-lettered (as ``record_of(item)``)."""
        async def apply(part: Sequence[R]) -> None:
            await until_applied(process, part, answering=self.answering, poison_after_s=self.settings.poison_after_s,
                                stage=stage)

        async def reject(item: R, exc: Exception, attempts: int) -> None:
            record = record_of(item)
            log.warning("record fails alone; dead-lettering it", stage=stage, kind=type(exc).__name__,
                        attempts=attempts, partition=record.partition, offset=record.offset)
            metrics.POISON.labels(stage).inc()
            await self.outbox.dead_letters([Rejected(record, exc, stage, attempts=attempts)], topic)

        await apply_or_dead_letter(items, apply, reject)

    async def ping_index(self) -> bool:
        """Whether Milvus answers now (on the worker thread, so never concurrently with a step)."""
        self.run.index_ready = await self.run.on_thread(self.steps.store.ping)
        return self.run.index_ready

    async def answering(self) -> bool:
        """Whether Milvus answers now and Kafka answered the last sends."""
        return await self.ping_index() and self.outbox.answering

    async def purge_tombstones(self) -> None:
        """Forget delete markers past their retention."""
        await self.run("purge", self.steps.purge_tombstones, self.settings.tombstone_retention_s)
