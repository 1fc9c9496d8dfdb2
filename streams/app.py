"""The Faust app: topics, the two agents, and the web pages (health, metrics).

Two agents, so that one worker owns each list (issue: several workers must never race on one
product's list):

    products topic --ingest--> Milvus products + refresh requests, routed by the *list owner's* key
    refresh topic  --refresh-> neighbour lists published on the neighbours topic (compacted)

The ingest agent batches with ``take``-like buffering (``noack_take``) and acks the input events only
after Milvus writes and the refresh requests are durable; the refresh agent acks only after the
lists are published and recorded. A crash anywhere reprocesses, never loses (at-least-once, with
idempotent writes and version checks making replays harmless).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence, TypeVar, cast

import faust
from aiokafka.partitioner import murmur2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from simstream.index.store import VectorStore
from simstream.streams import metrics
from simstream.errors import IndexUnavailable
from simstream.streams.kafka_config import bound_faust_fetch_wait
from simstream.logs import get_logger
from simstream.streams.pipeline import (
    Ingestor, RawRecord, Refresher, decode_refresh_request, encode_refresh_request, validate,
)
from simstream.settings import Settings

log = get_logger(__name__)
T = TypeVar("T")


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), so refresh work lands where the list's key lives."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


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


class Worker:
    """Holds the app and the state its agents share (store, steps, one Milvus/encoder thread)."""

    def __init__(self, settings: Settings, store: VectorStore, ingestor: Ingestor, refresher: Refresher) -> None:
        self.settings = settings
        self.store = store
        self.ingestor = ingestor
        self.refresher = refresher
        # One thread for all Milvus and torch work: milvus-lite is not thread-safe, inference must
        # stay off the event loop (heartbeats), and ingest/refresh batches then never interleave.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="simstream-work")
        # Held by a refresh from its search until its lists are recorded, and by an ingest for its
        # Milvus step, so that within one worker no ingest judges a change against lists that are
        # being replaced (across workers, Refresher.recheck closes that race).
        self.lists_lock = asyncio.Lock()
        self.app = self._build_app()
        self.ready_milvus = True

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def with_retries(self, step: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Retry transient Milvus failures with backoff; then crash so no offset moves past them."""
        delay = 0.5
        for attempt in range(self.settings.max_retries + 1):
            try:
                result = await fn()
                self.ready_milvus = True
                return result
            except IndexUnavailable as exc:
                self.ready_milvus = False
                metrics.RETRIES.labels(step).inc()
                if attempt == self.settings.max_retries:
                    log.error("giving up after retries; crashing so the batch is redelivered", step=step, error=str(exc))
                    raise
                log.warning("transient failure, retrying", step=step, attempt=attempt + 1, error=str(exc), delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    async def guard(self, step: Awaitable[None]) -> None:
        """Run one batch; on an error that retries could not fix, exit the process *without*
        acking, so the batch is redelivered after restart (Faust would otherwise ack and move on)."""
        try:
            await step
        except Exception:
            log.exception("batch failed; exiting without committing its offsets")
            logging.shutdown()
            os._exit(70)

    def _build_app(self) -> faust.App:
        s = self.settings
        bound_faust_fetch_wait(s.fetch_max_wait_ms)
        app = faust.App(
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
        events = app.topic(s.events_topic, value_type=bytes, key_type=bytes, value_serializer="raw",
                           key_serializer="raw", partitions=s.topic_partitions)
        refresh = app.topic(s.refresh_topic, value_type=bytes, key_type=bytes, value_serializer="raw",
                            key_serializer="raw", partitions=s.topic_partitions, internal=True)
        neighbors = app.topic(s.neighbors_topic, value_type=bytes, key_type=bytes, value_serializer="raw",
                              key_serializer="raw", partitions=s.topic_partitions,
                              config={"cleanup.policy": "compact"})
        dlq = app.topic(s.dlq_topic, value_type=bytes, key_type=bytes, value_serializer="raw",
                        key_serializer="raw", partitions=s.topic_partitions)
        worker = self

        @app.agent(events, name="ingest")
        async def ingest(stream: faust.StreamT) -> None:
            """Validate, coalesce, encode and index product events; route refresh work by list owner."""
            async for batch in cast(faust.Stream, stream).noack_take(s.batch_size, within=s.batch_within_s):
                await worker.guard(worker.handle_ingest(batch, refresh, dlq))
                for event in batch:
                    await stream.ack(event)

        @app.agent(refresh, name="refresh")
        async def refresh_lists(stream: faust.StreamT) -> None:
            """Recompute the neighbour lists this worker owns and publish the ones that changed."""
            async for batch in cast(faust.Stream, stream).noack_take(max(s.batch_size, 256), within=s.refresh_within_s):
                await worker.guard(worker.handle_refresh(batch, neighbors, refresh))
                for event in batch:
                    await stream.ack(event)

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
            ready = not rebalancing and assigned > 0 and worker.ready_milvus
            body = {"ready": ready, "rebalancing": rebalancing, "assigned_partitions": assigned,
                    "milvus": worker.ready_milvus}
            return web.json(body, status=200 if ready else 503)

        @app.page("/metrics")
        async def prometheus(web: Any, request: Any) -> Any:
            return web.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])

        @app.timer(interval=30.0)
        async def check_milvus() -> None:
            worker.ready_milvus = await worker.run(worker.store.ping)

        return app

    async def handle_ingest(self, batch: Sequence[faust.EventT], refresh: faust.TopicT, dlq: faust.TopicT) -> None:
        s = self.settings
        records = [RawRecord(e.message.key, e.message.value, e.message.partition, e.message.offset,
                             int(e.message.timestamp * 1000) if e.message.timestamp else None) for e in batch]
        metrics.BATCH_SIZE.observe(len(records))
        events, rejects = validate(records)
        by_position = {(r.partition, r.offset): r for r in records}
        async with self.lists_lock:
            result = await self.with_retries("ingest", lambda: self.run(self.ingestor.apply, events, by_position))
        rejects += result.rejects
        futures = []
        for rej in rejects:
            log.warning("dead-lettered", kind=rej.kind, reason=rej.message, partition=rej.record.partition,
                        offset=rej.record.offset, key=(rej.record.key or b"").decode("utf-8", "replace"))
            futures.append(await dlq.send(key=rej.record.key, value=rej.record.value,
                                          headers=rej.headers(s.events_topic), force=True))
        futures += await self.request_refresh(refresh, result.affected, result.event_times)
        await asyncio.gather(*futures)  # durable before the input offsets may commit
        for outcome, n in result.outcomes.items():
            metrics.EVENTS.labels(outcome).inc(n)
        metrics.EVENTS.labels("dead_lettered").inc(len(rejects))
        log.info("ingested", events=len(records), **dict(result.outcomes), dead_lettered=len(rejects),
                 affected=len(result.affected))
        now = time.time()
        for e in events:
            if e.event_time:
                metrics.WATERMARK.labels(str(e.partition)).set(max(0.0, now - e.event_time / 1000))

    async def request_refresh(self, refresh: faust.TopicT, ids: Iterable[str],
                              event_times: Mapping[str, int | None]) -> list[Awaitable[Any]]:
        """One refresh request per partition, sent to the partition that owns those lists."""
        routed: dict[int, list[str]] = {}
        for pid in sorted(ids):
            routed.setdefault(partition_for(pid, self.settings.topic_partitions), []).append(pid)
        return [await refresh.send(value=encode_refresh_request(owned, event_times), partition=partition, force=True)
                for partition, owned in routed.items()]

    async def handle_refresh(self, batch: Sequence[faust.EventT], neighbors: faust.TopicT,
                             refresh: faust.TopicT) -> None:
        ids: set[str] = set()
        event_times: dict[str, int | None] = {}
        for e in batch:
            got_ids, got_times = decode_refresh_request(e.message.value or b'{"ids": [], "event_times": {}}')
            ids.update(got_ids)
            for pid, t in got_times.items():
                event_times[pid] = max(t or 0, event_times.get(pid) or 0) or None
        async with self.lists_lock:
            plan = await self.with_retries("refresh", lambda: self.run(self.refresher.plan, sorted(ids), event_times))
            futures = [await neighbors.send(key=pid.encode(), value=nl.to_json() if nl is not None else None,
                                            force=True) for pid, nl in plan.publish.items()]
            await asyncio.gather(*futures)
            await self.with_retries("record", lambda: self.run(self.refresher.commit, plan))
        # Lists an ingest may have judged against the previous record while this batch ran: send
        # them back to their owner (durably, before this batch is acked).
        stale = await self.with_retries("recheck", lambda: self.run(self.refresher.recheck, plan))
        if stale:
            await asyncio.gather(*await self.request_refresh(refresh, stale, event_times))
            log.info("lists raced with concurrent writes after recording; requeued", count=len(stale))
        now = time.time()
        for nl in plan.publish.values():
            if nl is not None and nl.source_event_time:
                metrics.FRESHNESS.observe(max(0.0, now - nl.source_event_time / 1000))
        tombstones = sum(1 for nl in plan.publish.values() if nl is None)
        metrics.LISTS.labels("published").inc(len(plan.publish) - tombstones)
        metrics.LISTS.labels("tombstoned").inc(tombstones)
        metrics.LISTS.labels("unchanged").inc(plan.unchanged)
        metrics.REFRESH_METHOD.labels("merged").inc(plan.merged)
        metrics.REFRESH_METHOD.labels("searched").inc(plan.searched)
        log.info("refreshed", requested=len(ids), published=len(plan.publish) - tombstones,
                 tombstones=tombstones, unchanged=plan.unchanged, merged=plan.merged, searched=plan.searched)
