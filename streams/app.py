"""The Faust app: topics, the two agents, and the web pages (health, metrics).

Two agents, so that one worker owns each list (several workers must never race on one list):

    products topic --ingest--> Milvus products + refresh requests, routed by the *list owner's* key
    refresh topic  --refresh-> neighbour lists published on the neighbours topic (compacted)

Each agent's data path reads one named step per line; the steps are plain sync functions
(streams/ingest.py, streams/refresh.py) run on the worker's one thread. The ingest agent acks its
input only after the Milvus writes and the refresh requests are durable; the refresh agent only
after the lists are published and recorded. A crash anywhere reprocesses, never loses
(at-least-once; idempotent writes and version checks make replays harmless).

No record can stop a partition (``Worker.isolate``): per-record failures are dead-lettered by the
steps themselves; an outage (Milvus or Kafka not answering) is waited out with jittered backoff;
and a batch that keeps failing while both answer is bisected until the record that fails alone is
dead-lettered with its exception.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence, TypeVar, cast

import faust
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from simstream.errors import IndexUnavailable, KafkaUnavailable
from simstream.logs import get_logger
from simstream.settings import Settings
from simstream.streams import metrics
from simstream.streams.dead_letter import RawRecord, Rejected
from simstream.streams.isolation import apply_or_dead_letter, until_applied
from simstream.streams.ingest import Ingest, coalesce, encode_rejects, outcome_counts, refresh_causes, validate
from simstream.streams.kafka_config import bound_faust_fetch_wait
from simstream.streams.refresh import Refresher, RefreshPlan
from simstream.streams.refresh_requests import RefreshRequest, encode_refresh_requests, route

KAFKA_TRANSIENT = (asyncio.TimeoutError, KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError,
                   RequestTimedOutError)

log = get_logger(__name__)
T = TypeVar("T")


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
    s = settings
    bound_faust_fetch_wait(s.fetch_max_wait_ms)
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
        broker_heartbeat_interval=max(0.5, s.session_timeout_s / 10),
        broker_rebalance_timeout=max(s.session_timeout_s * 2, 10.0),
        broker_commit_interval=1.0,
        producer_max_request_size=s.max_message_bytes,
        consumer_auto_offset_reset="earliest",
        web_enabled=s.web_enabled,
        web_bind=s.web_host,
        web_port=s.web_port,
        web_host=s.web_host,
        datadir=str(s.data_dir / "faust"),
    )


class Worker:
    """The app, its topics and agents, and the state they share (one thread for all index and
    encoder work, the lists lock, readiness)."""

    def __init__(self, settings: Settings, ingest: Ingest, refresher: Refresher) -> None:
        self.settings = settings
        self.store = ingest.store
        # One thread for all Milvus and torch work: milvus-lite is not thread-safe, inference must
        # stay off the event loop (heartbeats), and ingest/refresh batches then never interleave.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="simstream-work")
        # Held by a refresh from its search until its lists are recorded, and by an ingest for its
        # index steps, so that within one worker no ingest judges a change against lists that are
        # being replaced (across workers, Refresher.recheck closes that race).
        self.lists_lock = asyncio.Lock()
        self.index_ready = True
        self.kafka_ready = True
        self.busy_since: float | None = None  # when the step on the worker thread started
        self.app = build_app(settings)
        self._declare(ingest, refresher)

    # --- the data path ---------------------------------------------------------------------
    def _declare(self, steps: Ingest, refresher: Refresher) -> None:
        s, app, worker = self.settings, self.app, self
        raw: dict[str, Any] = dict(value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw",
                                   partitions=s.topic_partitions)
        self.events = app.topic(s.events_topic, **raw)
        self.refresh = app.topic(s.refresh_topic, internal=True, **raw)
        self.neighbours = app.topic(s.neighbors_topic, config={"cleanup.policy": "compact"}, **raw)
        self.dlq = app.topic(s.dlq_topic, **raw)

        async def ingest_records(records: Sequence[RawRecord]) -> None:
            """Validate, coalesce, check versions, encode, write, affected set; then dead letters and
            refresh requests, durably."""
            events, rejects = validate(records)
            latest, dropped = coalesce(events)
            async with worker.lists_lock:
                check = await worker.index_step("read_versions", steps.check_versions, latest)
                encoded = await worker.run(steps.encode, check)
                rejects += encode_rejects(encoded, records)
                changes = await worker.index_step("write", steps.write, check, encoded)
                affected = await worker.index_step("affected", steps.affected_set, changes)
            await worker.dead_letter(rejects, s.events_topic)
            await worker.request_refresh(affected, refresh_causes(check, affected))
            metrics.observe_encoding(encoded)
            metrics.observe_ingest(len(records), outcome_counts(check, dropped), len(rejects), events)
            log.info("ingested", events=len(records), **outcome_counts(check, dropped),
                     dead_lettered=len(rejects), affected=len(affected))

        async def refresh_records(records: Sequence[RawRecord]) -> None:
            """Plan (merge or search), publish, record, recheck the lists the requests name."""
            request, rejects = RefreshRequest.decode(records)
            await worker.dead_letter(rejects, s.refresh_topic)
            async with worker.lists_lock:
                plan = await worker.index_step("plan", refresher.plan, sorted(request.ids), request.event_times)
                await worker.publish(plan)
                await worker.index_step("record", refresher.record, plan)
            stale = await worker.index_step("recheck", refresher.recheck, plan)
            await worker.request_refresh(stale, request.event_times)
            metrics.observe_refresh(plan.publish, plan.unchanged, plan.merged, plan.searched)
            log.info("refreshed", requested=len(request.ids), published=len(plan.publish),
                     unchanged=plan.unchanged, merged=plan.merged, searched=plan.searched, requeued=len(stale))

        @app.agent(self.events, name="ingest")
        async def ingest(stream: faust.StreamT) -> None:
            """Validate, coalesce, encode and index product events; route refresh work by list owner."""
            async for batch in cast(faust.Stream, stream).noack_take(s.batch_size, within=s.batch_within_s):
                await worker.isolate("ingest", s.events_topic, [RawRecord.of(e) for e in batch], ingest_records)
                for event in batch:
                    await stream.ack(event)

        @app.agent(self.refresh, name="refresh")
        async def refresh_lists(stream: faust.StreamT) -> None:
            """Recompute the neighbour lists this worker owns and publish the ones that changed."""
            async for batch in cast(faust.Stream, stream).noack_take(max(s.batch_size, 256), within=s.refresh_within_s):
                records = RefreshRequest.split([RawRecord.of(e) for e in batch])
                await worker.isolate("refresh", s.refresh_topic, records, refresh_records)
                for event in batch:
                    await stream.ack(event)

        @app.timer(interval=600.0)
        async def purge_tombstones() -> None:
            """Forget delete markers past their retention."""
            try:
                await worker.index_step("purge", steps.purge_tombstones, s.tombstone_retention_s)
            except Exception:
                log.exception("purging tombstones failed; trying again at the next interval")

        @app.timer(interval=10.0)
        async def check_index() -> None:
            """Readiness follows Milvus even while no batch runs."""
            await worker.ping_index()

        self._pages()

    # --- no record stops a partition (streams/isolation.py) ----------------------------------
    async def isolate(self, stage: str, topic: str, records: Sequence[RawRecord],
                      process: Callable[[Sequence[RawRecord]], Awaitable[None]]) -> None:
        """Apply ``process`` to ``records`` so that each record ends applied or dead-lettered."""
        async def apply(part: Sequence[RawRecord]) -> None:
            await until_applied(process, part, answering=self.answering, poison_after_s=self.settings.poison_after_s,
                                on_retry=lambda exc: metrics.RETRIES.labels(type(exc).__name__).inc())

        async def reject(record: RawRecord, exc: Exception, attempts: int) -> None:
            log.warning("record fails alone; dead-lettering it", stage=stage, kind=type(exc).__name__,
                        attempts=attempts, partition=record.partition, offset=record.offset)
            metrics.POISON.labels(stage).inc()
            await self.dead_letter([Rejected(record, exc, stage, attempts=attempts)], topic)

        await apply_or_dead_letter(records, apply, reject)

    async def answering(self) -> bool:
        """Whether Milvus answers now and Kafka answered the last sends."""
        return await self.ping_index() and self.kafka_ready

    # --- what the steps need from Kafka and the thread ---------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a sync step on the worker thread (``busy_since`` lets readiness see a stuck step)."""
        self.busy_since = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.busy_since = None

    async def index_step(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        """Run an index step on the worker thread; retry transient Milvus failures a few times with
        jittered backoff (a blip), then hand the failure to ``until_applied``."""
        delay = 0.2
        for attempt in range(self.settings.max_retries + 1):
            started = time.perf_counter()
            try:
                result = await self.run(fn, *args)
            except IndexUnavailable as exc:
                self.index_ready = False
                metrics.RETRIES.labels(op).inc()
                if attempt == self.settings.max_retries:
                    raise
                log.warning("transient index failure, retrying", step=op, attempt=attempt + 1, error=str(exc)[:300])
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)
                continue
            metrics.observe_index_step(op, started)
            self.index_ready = True
            return result
        raise AssertionError("unreachable")

    async def ping_index(self) -> bool:
        """Whether Milvus answers now (on the worker thread, so never concurrently with a step)."""
        self.index_ready = await self.run(self.store.ping)
        return self.index_ready

    async def durably(self, what: str, sends: list[Awaitable[Any]]) -> None:
        """Wait until Kafka acknowledged ``sends``, within the Kafka deadline."""
        try:
            await asyncio.wait_for(asyncio.gather(*sends), timeout=self.settings.kafka_timeout_s)
        except KAFKA_TRANSIENT as exc:
            self.kafka_ready = False
            raise KafkaUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        self.kafka_ready = True

    async def dead_letter(self, rejects: Iterable[Rejected], source_topic: str) -> None:
        """Send rejected records to the DLQ, durably (before the input offsets may commit). When
        Kafka refuses a dead letter itself (an oversized key or headers), it goes again as a bare
        pointer: no value, no original headers, the key cut to 1 kB; the source offset keeps it."""
        rejects = list(rejects)
        limit = self.settings.max_message_bytes - 64_000  # room for the headers and the request
        for rej in rejects:
            log.warning("dead-lettered", kind=rej.kind, reason=rej.reason[:300], stage=rej.stage,
                        partition=rej.record.partition, offset=rej.record.offset,
                        key=(rej.record.key or b"").decode("utf-8", "replace")[:300])
        try:
            await self.durably("dead letters", [await self._send_dead_letter(rej, source_topic, limit)
                                                for rej in rejects])
        except KafkaUnavailable:
            raise
        except Exception as exc:
            log.error("Kafka refused a dead letter; sending bare pointers", error=repr(exc)[:300])
            await self.durably("dead letters", [await self._send_dead_letter(rej, source_topic, 0, bare=True)
                                                for rej in rejects])

    async def _send_dead_letter(self, rej: Rejected, source_topic: str, limit: int, *, bare: bool = False) -> Any:
        value, extra = rej.value_for_dlq(limit)
        headers = rej.headers(source_topic) + extra
        if bare:
            headers = [h for h in headers if h[0].startswith("x-simstream-")]
        ts = rej.record.timestamp_ms / 1000 if rej.record.timestamp_ms else None
        key = (rej.record.key or b"")[:1024] if bare else rej.record.key
        return await self.dlq.send(key=key, value=value, timestamp=ts, headers=headers, force=True)

    async def request_refresh(self, ids: Iterable[str], event_times: Mapping[str, int | None]) -> None:
        """Refresh requests to the partitions that own the lists, each under the size cap, durably."""
        sends = [await self.refresh.send(value=value, partition=partition, force=True)
                 for partition, owned in route(ids, self.settings.topic_partitions).items()
                 for value in encode_refresh_requests(owned, event_times, self.settings.refresh_request_max_bytes)]
        await self.durably("refresh requests", sends)

    async def publish(self, plan: RefreshPlan) -> None:
        """Publish the lists that changed (None: a tombstone), durably, before they are recorded."""
        sends = [await self.neighbours.send(key=pid.encode(), value=nl.to_json() if nl is not None else None,
                                            force=True) for pid, nl in plan.publish.items()]
        await self.durably("neighbour lists", sends)

    # --- web pages ----------------------------------------------------------------------------
    def _pages(self) -> None:
        app, worker = self.app, self

        @app.page("/healthz")
        async def healthz(web: Any, request: Any) -> Any:
            return web.json({"status": "ok"})

        @app.page("/readyz")
        async def readyz(web: Any, request: Any) -> Any:
            rebalancing = bool(getattr(app, "rebalancing", False))
            try:
                assigned = len(app.consumer.assignment())
            except Exception:  # consumer not started yet
                assigned = 0
            busy = worker.busy_since
            stuck = busy is not None and time.monotonic() - busy > 2 * worker.settings.milvus_timeout_s + 60
            ready = not rebalancing and assigned > 0 and worker.index_ready and worker.kafka_ready and not stuck
            body = {"ready": ready, "rebalancing": rebalancing, "assigned_partitions": assigned,
                    "milvus": worker.index_ready, "kafka": worker.kafka_ready, "step_stuck": stuck}
            return web.json(body, status=200 if ready else 503)

        @app.page("/metrics")
        async def prometheus(web: Any, request: Any) -> Any:
            return web.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])
