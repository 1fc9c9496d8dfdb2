"""The Faust app: its topics, the two agents, the timers and the web pages (health, metrics).

Two agents, so that one worker owns each list (several workers must never race on one list):

    products topic --ingest--> Milvus products + the catalog changelog (compacted: the latest
                               accepted source fields per product) + refresh requests, routed by the *list owner's* key
                               (lists this worker owns: refreshed by the ingest itself, no hop)
    refresh topic  --refresh-> neighbour lists published on the neighbours topic (compacted)

An agent only takes batches (``take(n, within=s)``) and acks them after the data path
(streams/pipeline.py ``DataPath``) returned, i.e. after the side effects that batch caused are
durable: Milvus writes, refresh requests and the lists it refreshed itself for the ingest agent
(in a task that runs while the next batch is taken); published and recorded lists for the
refresh agent. A crash anywhere reprocesses, never loses
(at-least-once; idempotent writes and version checks make replays harmless). ``consume`` is that
loop, testable with any stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Protocol, Sequence, cast

import faust
from aiohttp.web import FileResponse
from faust.tables import TableManager
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from simstream.index.snapshot import SUFFIX
from simstream.logs import get_logger
from simstream.settings import Settings
from simstream.streams import metrics
from simstream.streams.dead_letter import RawRecord
from simstream.streams.fence import Fence
from simstream.streams.ingest import Ingest
from simstream.streams.kafka_config import bound_faust_fetch_wait, heartbeat_interval_s
from simstream.streams.outbox import Outbox
from simstream.streams.peers import SNAPSHOT_ROUTE, snapshot_file
from simstream.streams.pipeline import INDEX, DataPath, StepRunner
from simstream.streams.refresh import Refresher
from simstream.streams.transports import FaustTransport
from simstream.streams.watchdog import WATCHDOG_INTERVAL_S, BrokerView, Partition, StallClock

__all__ = ["SELF_STOP_DEADLINE_S", "EXIT_STUCK", "Worker", "BatchStream", "Handled", "build_app", "consume",
           "broker_credentials", "refresh_batch_size", "TablelessManager", "REFRESH_BATCH_MIN", "PURGE_INTERVAL_S", "INDEX_CHECK_INTERVAL_S", "CONTROL_FOLLOW_S"]

log = get_logger(__name__)

# A refresh request is a few bytes and a plan costs about the same for 1 list as for hundreds (one
# pass over the catalog), so the refresh agent takes batches of at least this many requests.
REFRESH_BATCH_MIN = 256
PURGE_INTERVAL_S = 600.0  # delete markers past their retention are forgotten this often
INDEX_CHECK_INTERVAL_S = 10.0  # readiness asks Milvus this often while no batch runs
CONTROL_FOLLOW_S = 2.0  # an idle worker reads the control record this often (streams/fence.py)


def refresh_batch_size(settings: Settings) -> int:
    """Requests per refresh batch: the ingest's batch size, at least ``REFRESH_BATCH_MIN``."""
    return max(settings.batch_size, REFRESH_BATCH_MIN)


def broker_credentials(settings: Settings) -> Any:
    """SASL/TLS credentials for faust, from settings; None for PLAINTEXT."""
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if proto == "SSL":
        return faust.SSLCredentials(context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username or "", password=password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=context if proto == "SASL_SSL" else None,
    )


def build_app(settings: Settings) -> faust.App:
    """The Faust app from settings (its own settings never come from the environment)."""
    s = settings
    bound_faust_fetch_wait(s.fetch_max_wait_ms)
    # Faust creates DATA_DIR/faust but not DATA_DIR; with a Milvus server URI nothing else creates it.
    s.data_dir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        s.app_id,
        broker=s.kafka,
        broker_credentials=broker_credentials(s),
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=s.topic_partitions,
        topic_replication_factor=s.topic_replication,
        topic_allow_declare=s.create_topics,
        topic_disable_leader=True,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=heartbeat_interval_s(s.session_timeout_s),
        broker_rebalance_timeout=max(s.session_timeout_s * 2, 10.0),
        broker_commit_interval=1.0,
        producer_max_request_size=s.max_message_bytes,
        # a send that did not end within the deadline is dropped, not delivered minutes later (the
        # switch's fence counts on it: streams/fence.py); Faust's default is 20 minutes
        producer_request_timeout=s.kafka_timeout_s,
        consumer_auto_offset_reset="earliest",
        web_enabled=s.web_enabled,
        web_bind=s.web_host,
        web_port=s.web_port,
        web_host=s.web_host,
        datadir=str(s.data_dir / "faust"),
        TableManager=TablelessManager,
    )


class TablelessManager(TableManager):
    """Faust's table manager without its start-up second. ``on_start`` sleeps 1 s before the
    consumer may subscribe, so that tables declared late still register; simstream declares no
    table (its state lives in Milvus), and that second was a tenth of a worker's start."""

    async def on_start(self) -> None:
        if len(self):  # tables after all: Faust's own start, wait included
            await super().on_start()
        elif not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


SELF_STOP_DEADLINE_S = 60.0  # as terminationGracePeriodSeconds (deploy/k8s/base/deployment.yaml)
EXIT_STUCK = 75  # the exit status of a worker whose own stop hung


def _stop_this_worker(stuck: list[Partition]) -> None:
    """SIGTERM to this process: Faust commits what is durable and leaves the group; the supervisor
    starts the worker again. ``stuck``: the stuck partitions (none: a rebalance that never ended).
    No kubelet times a stop the worker asked for itself, so a stop that hangs too (a consumer
    stuck in the group protocol) ends in a hard exit after ``SELF_STOP_DEADLINE_S``."""
    timer = threading.Timer(SELF_STOP_DEADLINE_S, os._exit, args=(EXIT_STUCK,))
    timer.daemon = True
    timer.start()
    os.kill(os.getpid(), signal.SIGTERM)


class BatchStream(Protocol):
    """What ``consume`` needs of a Faust stream."""

    def noack_take(self, max_: int, within: float) -> Any: ...

    async def ack(self, event: Any) -> bool: ...


Handled = bool | None | asyncio.Task[None]


async def consume(stream: BatchStream, *, size: int, within_s: float,
                  handle: Callable[[Sequence[RawRecord]], Awaitable[Handled]], idle_s: float = 2.0) -> None:
    """Take batches of at most ``size`` within ``within_s``, hand each to ``handle``, and ack its
    events only after ``handle`` returned: an offset never commits ahead of its side effects.

    When ``handle`` returns a task, the batch's events are acked when the task ends (the ingest
    refreshing the lists this worker owns), and the next batch is taken and handled meanwhile;
    at most one such task is outstanding, and one that fails stops the loop as ``handle`` would.
    When ``handle`` returns False the events are held, unacked, until a later call returns
    otherwise (a bulk round: streams/bulk.py). While events are held and nothing arrives for
    ``idle_s``, ``handle([])`` is called: the input has stopped, or a rebalance waits for every
    taken event to be acked (Faust's ``stream_wait_empty``), so the round must end now."""
    held: list[Any] = []
    pending: tuple[list[Any], asyncio.Task[None]] | None = None
    batches = stream.noack_take(size, within=within_s).__aiter__()
    taking: asyncio.Future[Any] | None = None

    async def settle() -> None:
        nonlocal pending
        if pending is not None:
            events, task = pending
            pending = None
            await task
            await _ack(stream, events)

    try:
        while True:
            taking = asyncio.ensure_future(batches.__anext__())
            while True:
                waits: set[asyncio.Future[Any]] = {taking} | ({pending[1]} if pending else set())
                done, _ = await asyncio.wait(waits, timeout=idle_s if held else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                if pending is not None and pending[1].done():
                    await settle()
                if taking.done():
                    break
                if not done and held and await handle([]) is not False:
                    await _ack(stream, held)
            try:
                batch = await taking
            except StopAsyncIteration:
                await settle()
                return
            durable = await handle([RawRecord.of(e) for e in batch])
            if isinstance(durable, asyncio.Task):
                await settle()  # the batch before: at most one task outstanding
                pending = (list(batch), durable)
                continue
            held += batch
            if durable is not False:
                await _ack(stream, held)
    finally:
        if pending is not None:
            pending[1].cancel()
        if taking is not None:  # at shutdown: the take ends with the stream; nobody waits for it now
            if taking.done():
                if not taking.cancelled():
                    taking.exception()  # retrieved (StopAsyncIteration), not logged as lost
            else:
                taking.cancel()


async def _ack(stream: BatchStream, events: list[Any]) -> None:
    for event in events:
        await stream.ack(event)
    events.clear()


class Worker:
    """The app and its topics, agents, timers and pages around one ``DataPath``."""

    def __init__(self, settings: Settings, ingest: Ingest, refresher: Refresher, *, fence: Fence | None = None,
                 snapshot: Path | None = None) -> None:
        """``fence``: whether this worker's generation may publish now (streams/fence.py); None: always.
        ``snapshot``: where to keep a snapshot of the store's in-memory copies (index/snapshot.py)."""
        s = self.settings = settings
        self.app = app = build_app(settings)
        raw: dict[str, Any] = dict(value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw",
                                   partitions=s.topic_partitions)
        self.events = app.topic(s.events_topic, **raw)
        self.refresh = app.topic(s.refresh_topic, internal=True, **raw)
        self.neighbours = app.topic(s.neighbors_topic, config={"cleanup.policy": "compact"}, **raw)
        self.dlq = app.topic(s.dlq_topic, **raw)
        outputs = {s.refresh_topic: self.refresh, s.neighbors_topic: self.neighbours, s.dlq_topic: self.dlq}
        self.changelog = app.topic(s.changelog_topic, config={"cleanup.policy": "compact"}, **raw) \
            if s.changelog_topic else None
        if self.changelog is not None:
            outputs[s.changelog_topic] = self.changelog
        self.outbox = Outbox(FaustTransport(app, outputs, timeout_s=s.kafka_timeout_s), settings, fence=fence)
        self.run = StepRunner(max_retries=s.max_retries, overlap_encoding=ingest.encoder.on_accelerator)
        self.path = DataPath(settings, ingest, refresher, self.outbox, self.run,
                             refresh_partitions_held=self.refresh_partitions_held)
        self._next_offset: dict[int, int] = {}  # per input partition, the offset after the last one taken
        self.store = ingest.store
        # the stuck-partition watchdog (streams/watchdog.py): where this worker stands per partition
        self.stall = StallClock(s.stuck_partition_after_s) if s.stuck_partition_after_s > 0 else None
        self.broker_view = BrokerView(s)
        self.on_stuck: Callable[[list[Partition]], None] = _stop_this_worker
        self._taken: dict[Partition, int] = {}
        self._handlers, self._handled_s = 0, 0.0  # batches being handled now; seconds spent handling
        self._watched_at = (time.monotonic(), 0.0, 0)  # (when, busy_s, rebalances) at the last check
        self._rebalance_free_s = 0.0  # free time in the rebalance running now
        self._rebalance_watched_at = (time.monotonic(), 0.0)  # (when, busy_s) at the last rebalance check
        self.snapshot = snapshot
        # restored: nothing new to write yet; built from Milvus: the first tick writes one
        self._snapshot_at = (self.store.changes if self.store.restored else -1) if snapshot is not None else 0
        self._agents()
        self._pages()

    def backlog(self, records: Sequence[RawRecord]) -> int:
        """Events still waiting on this worker's input partitions after ``records``, from the
        consumer's high-water marks (partitions not read yet count nothing; 0 when unknown)."""
        for r in records:
            self._next_offset[r.partition] = max(self._next_offset.get(r.partition, 0), r.offset + 1)
        topic = self.settings.events_topic
        try:
            assigned = {tp.partition: tp for tp in self.app.consumer.assignment() if tp.topic == topic}
            # a partition given away and back resumes at its committed offset: forget where we were
            self._next_offset = {p: o for p, o in self._next_offset.items() if p in assigned}
            return sum(max(0, (self.app.consumer.highwater(assigned[p]) or 0) - o) for p, o in self._next_offset.items())
        except Exception:  # consumer not started, or no fetch answered yet
            return 0

    def refresh_partitions_held(self) -> set[int]:
        """The refresh topic's partitions assigned to this worker (the lists it owns); none while
        a rebalance runs or before the consumer started. A partition cannot move while an ingest
        batch refreshes its lists: Faust's rebalance first waits for every taken event's ack."""
        if getattr(self.app, "rebalancing", False):
            return set()
        names = set(self.refresh.topics)
        try:
            return {tp.partition for tp in self.app.consumer.assignment() if tp.topic in names}
        except Exception:  # consumer not started yet
            return set()

    # --- the agents and timers: methods, so a test drives them with any ``BatchStream`` -------------
    async def ingest_agent(self, stream: faust.StreamT[Any] | BatchStream) -> None:
        """Validate, coalesce, encode and index product events; route refresh work by list owner."""
        async def handle(records: Sequence[RawRecord]) -> Handled:
            self._took(self.settings.events_topic, records)
            with self._handling():
                return await self.path.ingest(records, backlog=self.backlog(records))

        await consume(cast(BatchStream, stream), size=self.settings.batch_size,
                      within_s=self.settings.batch_within_s, handle=handle)

    async def refresh_agent(self, stream: faust.StreamT[Any] | BatchStream) -> None:
        """Recompute the neighbour lists this worker owns and publish the ones that changed."""
        async def handle(records: Sequence[RawRecord]) -> Handled:
            self._took(self.settings.refresh_topic, records)
            with self._handling():
                await self.path.refresh(records)
            return None

        await consume(cast(BatchStream, stream), size=refresh_batch_size(self.settings),
                      within_s=self.settings.refresh_within_s, handle=handle)

    @contextlib.contextmanager
    def _handling(self) -> Iterator[None]:
        """Time spent handling a batch (outage waits included): not free time for the watchdog."""
        self._handlers += 1
        t0 = time.monotonic()
        try:
            yield
        finally:
            self._handlers -= 1
            self._handled_s += time.monotonic() - t0

    def _took(self, topic: str, records: Sequence[RawRecord]) -> None:
        for r in records:
            if r.offset + 1 > self._taken.get((topic, r.partition), 0):
                self._taken[(topic, r.partition)] = r.offset + 1

    async def watchdog_timer(self) -> None:
        """Look for a stuck partition (streams/watchdog.py); a failed look waits for the next."""
        if self.stall is None:
            return
        app = self.app
        now, rebalances = time.monotonic(), int(getattr(app, "rebalancing_count", 0))
        busy = max(self.run.busy_s, self._handled_s)
        last_at, last_busy, last_rebalances = self._watched_at
        self._watched_at = (now, busy, rebalances)
        if rebalances != last_rebalances or getattr(app, "rebalancing", False):
            self._taken.clear()  # partitions moved: a returning one resumes at its committed offset
            self.stall = StallClock(self.stall.stuck_after_s)
            return
        free_s = self._free_s(now - last_at, busy - last_busy)
        names = {self.settings.events_topic, self.settings.refresh_topic}
        try:
            assigned = sorted((tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in names)
        except Exception:  # consumer not started
            return
        try:
            ends, committed = await asyncio.to_thread(self.broker_view.ends_and_committed, assigned)
            positions = {tp: max(self._taken.get(tp, 0), committed.get(tp, 0)) for tp in assigned}
            suspects = self.stall.observe(positions, ends, free_s=free_s)
            stuck = [tp for tp in suspects if await asyncio.to_thread(self.broker_view.record_waits, tp, positions[tp])]
        except Exception as exc:  # the broker is down: readiness says so; look again next time
            log.warning("the stuck-partition check could not read offsets", error=repr(exc)[:300])
            return
        metrics.STALLED_SECONDS.clear()
        for tp in assigned:
            metrics.STALLED_SECONDS.labels(tp[0], str(tp[1])).set(self.stall.still_s(tp))
        metrics.STUCK_PARTITIONS.set(len(stuck))
        if stuck:
            log.error("partitions stuck: events wait and this worker, free, has not taken one; restarting it",
                      partitions=[f"{t}[{p}]@{positions[(t, p)]}" for t, p in stuck],
                      ends={f"{t}[{p}]": ends[(t, p)] for t, p in stuck}, after_s=self.stall.stuck_after_s)
            self.on_stuck(stuck)

    def _free_s(self, elapsed_s: float, busy_s: float) -> float:
        """Of ``elapsed_s`` since the last check, in which steps and batches took ``busy_s``, the
        worker's free time: waiting for input, nothing handled (an outage's wait is handling), no
        step running; none while one runs now."""
        if self.run.busy_since is not None or self._handlers > 0:
            return 0.0
        return max(0.0, elapsed_s - busy_s)

    def check_rebalance(self) -> None:
        """A rebalance that never ends (a join or sync its coordinator never answers): the group
        goes on without this worker's partitions, so the worker restarts once it has been in
        one rebalance for ``SIMSTREAM_STUCK_PARTITION_AFTER_S`` of its free time. Called from a
        thread of its own (``watch_rebalances``): Faust starts its timers only after the first
        assignment, which is what may never come."""
        if self.stall is None:
            return
        now, busy = time.monotonic(), max(self.run.busy_s, self._handled_s)
        last_at, last_busy = self._rebalance_watched_at
        self._rebalance_watched_at = (now, busy)
        if not getattr(self.app, "rebalancing", False):
            self._rebalance_free_s = 0.0
            metrics.REBALANCE_SECONDS.set(0.0)
            return
        self._rebalance_free_s += self._free_s(now - last_at, busy - last_busy)  # revoking waits for a batch
        metrics.REBALANCE_SECONDS.set(self._rebalance_free_s)
        if self._rebalance_free_s >= self.stall.stuck_after_s:
            log.error("a rebalance has not ended; restarting this worker", free_s=round(self._rebalance_free_s, 1),
                      after_s=self.stall.stuck_after_s, generation=getattr(self.app, "consumer_generation_id", None))
            self._rebalance_free_s = 0.0
            self.on_stuck([])

    def watch_rebalances(self, stop: threading.Event) -> None:
        """``check_rebalance`` every ``WATCHDOG_INTERVAL_S`` until ``stop`` is set (a daemon thread
        run_worker starts)."""
        while not stop.wait(WATCHDOG_INTERVAL_S):
            try:
                self.check_rebalance()
            except Exception:  # never let the watch die of a bad read
                log.exception("the rebalance watch failed; it goes on")

    async def purge_timer(self) -> None:
        """Forget delete markers past their retention; a failure waits for the next interval."""
        try:
            await self.path.purge_tombstones()
        except Exception:
            log.exception("purging tombstones failed; trying again at the next interval")

    async def index_timer(self) -> None:
        """Readiness follows Milvus even while no batch runs."""
        await self.path.ping_index()

    async def control_timer(self) -> None:
        """An idle worker follows the control record too: a switch moves its role to another
        generation within ``CONTROL_FOLLOW_S`` (a busy one reads it before each publish anyway)."""
        fence = self.outbox.fence
        if fence is None or fence.fresh:
            return
        try:
            await self.path.run.on_thread(fence.refresh)
        except Exception as exc:  # Milvus down: readiness says so; the next tick tries again
            log.warning("reading the control record failed; trying again", error=repr(exc)[:300])

    async def snapshot_timer(self) -> None:
        """Snapshot the in-memory copies when they changed since the last one (on the index
        thread, between steps: a consistent state); a failure (a full disk) waits for the next."""
        store = self.store
        if self.snapshot is None or store.changes == self._snapshot_at:
            return
        changes = store.changes
        try:
            await self.run.on_thread(store.save_snapshot, self.snapshot)
            self._snapshot_at = changes
        except Exception as exc:
            log.warning("writing the snapshot failed; trying again at the next interval", error=repr(exc)[:300])

    def snapshot_on_stop(self, timeout_s: float) -> None:
        """After the app stopped: a last snapshot, so the next start catches up only what others
        write meanwhile. Runs on the index thread after any step still there; bounded."""
        store = self.store
        if self.snapshot is None or store.changes == self._snapshot_at:
            return
        if self.run.busy_since is not None:  # a step abandoned at stop still runs: not a consistent moment
            log.warning("no snapshot at stop: a step is still running; the next start catches up from the last one")
            return
        future = self.run.threads[INDEX].submit(store.save_snapshot, self.snapshot)
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:
            future.cancel()
            log.warning("no snapshot at stop; the next start catches up from the last one", error=repr(exc)[:300])

    def _agents(self) -> None:
        app = self.app
        app.agent(self.events, name="ingest")(self.ingest_agent)
        app.agent(self.refresh, name="refresh")(self.refresh_agent)
        app.timer(interval=PURGE_INTERVAL_S)(self.purge_timer)
        app.timer(interval=INDEX_CHECK_INTERVAL_S)(self.index_timer)
        app.timer(interval=CONTROL_FOLLOW_S)(self.control_timer)
        app.timer(interval=WATCHDOG_INTERVAL_S)(self.watchdog_timer)
        if self.snapshot is not None:
            app.timer(interval=self.settings.snapshot_interval_s)(self.snapshot_timer)

    # --- web pages ----------------------------------------------------------------------------
    def readiness(self) -> dict[str, Any]:
        """What /readyz answers: ready when the consumer has joined the group and no rebalance
        runs, Milvus and Kafka answer, and no step is stuck on the worker thread. A member the
        group gave no partition is ready too (``assigned_partitions`` 0): Faust's assignor gives
        each at most ceil(partitions / members), keeping earlier owners, so with 4 partitions and
        3 workers a restarted one may hold none; waiting for one would stall a rolling update.
        ``generation``: the group generation of its last assignment (members agreeing on it, and
        staying there, is a settled group)."""
        app, run = self.app, self.run
        rebalancing = bool(getattr(app, "rebalancing", False))
        joined = int(getattr(app, "rebalancing_count", 0) or 0) > 0 or int(getattr(app, "consumer_generation_id", 0) or 0) > 0
        try:
            assigned = len(app.consumer.assignment())
        except Exception:  # consumer not started yet
            assigned, joined = 0, False
        busy = run.busy_since
        stuck = busy is not None and time.monotonic() - busy > 2 * self.settings.milvus_timeout_s + 60
        ready = not rebalancing and joined and run.index_ready and self.outbox.answering and not stuck
        return {"ready": ready, "rebalancing": rebalancing, "joined": joined, "assigned_partitions": assigned,
                "generation": int(getattr(app, "consumer_generation_id", 0) or 0),
                "milvus": run.index_ready, "kafka": self.outbox.answering, "step_stuck": stuck}

    def _pages(self) -> None:
        app, worker = self.app, self

        @app.page("/healthz")
        async def healthz(web: Any, request: Any) -> Any:
            return web.json({"status": "ok"})

        @app.page("/readyz")
        async def readyz(web: Any, request: Any) -> Any:
            body = worker.readiness()
            return web.json(body, status=200 if body["ready"] else 503)

        @app.page(SNAPSHOT_ROUTE)
        async def snapshot(web: Any, request: Any, collection: str) -> Any:
            """This worker's latest snapshot, for a peer that joins (streams/peers.py)."""
            path = snapshot_file(worker.settings.resolved_snapshot_dir, collection, SUFFIX)
            if path is None:
                return web.json({"error": "no snapshot of that collection here"}, status=404)
            return FileResponse(path)  # opened once: a newer snapshot renamed over it meanwhile is not mixed in

        @app.page("/metrics")
        async def prometheus(web: Any, request: Any) -> Any:
            return web.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])
