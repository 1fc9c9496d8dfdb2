"""The Faust app: topics, the two agents, and the web pages (health, metrics).

Two agents, so that one worker owns each list (several workers must never race on one list):

    products topic --ingest--> Milvus products + refresh requests, routed by the *list owner's* key
    refresh topic  --refresh-> neighbour lists published on the neighbours topic (compacted)

Each agent reads as its data path, one named step per line; the steps are plain sync functions
(streams/ingest.py, streams/refresh.py) run on the worker's one thread. The ingest agent acks its
input only after the Milvus writes and the refresh requests are durable; the refresh agent only
after the lists are published and recorded. A crash anywhere reprocesses, never loses
(at-least-once; idempotent writes and version checks make replays harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterable, Mapping, TypeVar, cast

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from simstream.errors import IndexUnavailable
from simstream.logs import get_logger
from simstream.settings import Settings
from simstream.streams import metrics
from simstream.streams.dead_letter import RawRecord, Rejected
from simstream.streams.ingest import Ingest, coalesce, encode_rejects, outcome_counts, refresh_causes, validate
from simstream.streams.kafka_config import bound_faust_fetch_wait
from simstream.streams.refresh import Refresher, RefreshPlan
from simstream.streams.refresh_requests import RefreshRequest, encode_refresh_request, route

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
        consumer_auto_offset_reset="earliest",
        web_enabled=s.web_enabled,
        web_bind=s.web_host,
        web_port=s.web_port,
        web_host=s.web_host,
        datadir=str(s.data_dir / "faust"),
    )


class Worker:
    """The app, its topics and agents, and the state they share (one thread for all index and
    encoder work, the lists lock)."""

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

        @app.agent(self.events, name="ingest")
        async def ingest(stream: faust.StreamT) -> None:
            """Validate, coalesce, encode and index product events; route refresh work by list owner."""
            async for batch in cast(faust.Stream, stream).noack_take(s.batch_size, within=s.batch_within_s):
                async with worker.exit_unless_done("ingest"):
                    records = [RawRecord.of(e) for e in batch]
                    events, rejects = validate(records)
                    latest, dropped = coalesce(events)
                    async with worker.lists_lock:
                        check = await worker.index_step("read_versions", steps.check_versions, latest)
                        encoded = await worker.run(steps.encode, check)
                        rejects += encode_rejects(encoded, records)
                        changes = await worker.index_step("write", steps.write, check, encoded)
                        affected = await worker.index_step("affected", steps.affected_set, changes)
                    await worker.dead_letter(rejects)
                    await worker.request_refresh(affected, refresh_causes(check, affected))
                    metrics.observe_encoding(encoded)
                    metrics.observe_ingest(len(records), outcome_counts(check, dropped), len(rejects), events)
                    log.info("ingested", events=len(records), **outcome_counts(check, dropped),
                             dead_lettered=len(rejects), affected=len(affected))
                for event in batch:
                    await stream.ack(event)

        @app.agent(self.refresh, name="refresh")
        async def refresh_lists(stream: faust.StreamT) -> None:
            """Recompute the neighbour lists this worker owns and publish the ones that changed."""
            async for batch in cast(faust.Stream, stream).noack_take(max(s.batch_size, 256), within=s.refresh_within_s):
                async with worker.exit_unless_done("refresh"):
                    request = RefreshRequest.merged(e.message.value for e in batch)
                    async with worker.lists_lock:
                        plan = await worker.index_step("plan", refresher.plan, sorted(request.ids), request.event_times)
                        await worker.publish(plan)
                        await worker.index_step("record", refresher.record, plan)
                    stale = await worker.index_step("recheck", refresher.recheck, plan)
                    await worker.request_refresh(stale, request.event_times)
                    metrics.observe_refresh(plan.publish, plan.unchanged, plan.merged, plan.searched)
                    log.info("refreshed", requested=len(request.ids), published=len(plan.publish),
                             unchanged=plan.unchanged, merged=plan.merged, searched=plan.searched, requeued=len(stale))
                for event in batch:
                    await stream.ack(event)

        @app.timer(interval=600.0)
        async def purge_tombstones() -> None:
            """Forget delete markers past their retention."""
            await worker.index_step("purge", steps.purge_tombstones, s.tombstone_retention_s)

        @app.timer(interval=30.0)
        async def check_index() -> None:
            worker.index_ready = await worker.run(worker.store.ping)

        self._pages()

    # --- what the steps need from Kafka and the thread ---------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a sync step on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def index_step(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        """Run an index step on the worker thread; retry transient Milvus failures with backoff,
        then give up so that no offset moves past them."""
        delay = 0.5
        for attempt in range(self.settings.max_retries + 1):
            started = time.perf_counter()
            try:
                result = await self.run(fn, *args)
            except IndexUnavailable as exc:
                self.index_ready = False
                metrics.RETRIES.labels(op).inc()
                if attempt == self.settings.max_retries:
                    log.error("giving up after retries", step=op, error=str(exc))
                    raise
                log.warning("transient index failure, retrying", step=op, attempt=attempt + 1, error=str(exc),
                            delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            metrics.observe_index_step(op, started)
            self.index_ready = True
            return result
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def exit_unless_done(self, agent: str) -> AsyncIterator[None]:
        """On an error the steps could not handle, exit the process *without* acking, so the batch
        is redelivered after restart (Faust would otherwise ack and move on)."""
        try:
            yield
        except Exception:
            log.exception("batch failed; exiting without committing its offsets", agent=agent)
            logging.shutdown()
            os._exit(70)

    async def dead_letter(self, rejects: Iterable[Rejected]) -> None:
        """Send rejected records to the DLQ, durably (before the input offsets may commit)."""
        futures = []
        for rej in rejects:
            log.warning("dead-lettered", kind=rej.kind, reason=str(rej.error), stage=rej.stage,
                        partition=rej.record.partition, offset=rej.record.offset,
                        key=(rej.record.key or b"").decode("utf-8", "replace"))
            futures.append(await self.dlq.send(key=rej.record.key, value=rej.record.value,
                                               headers=rej.headers(self.settings.events_topic), force=True))
        await asyncio.gather(*futures)

    async def request_refresh(self, ids: Iterable[str], event_times: Mapping[str, int | None]) -> None:
        """One refresh request per owning partition, durably."""
        futures = [await self.refresh.send(value=encode_refresh_request(owned, event_times), partition=partition,
                                           force=True)
                   for partition, owned in route(ids, self.settings.topic_partitions).items()]
        await asyncio.gather(*futures)

    async def publish(self, plan: RefreshPlan) -> None:
        """Publish the lists that changed (None: a tombstone), durably, before they are recorded."""
        futures = [await self.neighbours.send(key=pid.encode(), value=nl.to_json() if nl is not None else None,
                                              force=True) for pid, nl in plan.publish.items()]
        await asyncio.gather(*futures)

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
            ready = not rebalancing and assigned > 0 and worker.index_ready
            body = {"ready": ready, "rebalancing": rebalancing, "assigned_partitions": assigned,
                    "milvus": worker.index_ready}
            return web.json(body, status=200 if ready else 503)

        @app.page("/metrics")
        async def prometheus(web: Any, request: Any) -> Any:
            return web.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])
