"""Prometheus metrics, served on the worker's web port at /metrics, and the helpers that update
them, so the agents show the data path and not the bookkeeping."""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from simstream import retry
from simstream.generations import PHASES, ControlRecord
from simstream.encoders.fusion import EncodedBatch
from simstream.records import NeighbourList, ProductEvent

__all__ = [
    "REGISTRY", "EVENTS", "BATCH_SIZE", "ENCODE_SECONDS", "MILVUS_SECONDS", "LISTS", "REFRESH_METHOD", "FRESHNESS",
    "WATERMARK", "BULK_ROUNDS", "REPUBLISHED", "GENERATION", "MIGRATION_PHASE", "MIGRATION_PRODUCTS",
    "MIGRATION_RATE", "MIGRATION_LAG", "MIGRATION_GATE", "STUCK_PARTITIONS", "REBALANCE_SECONDS", "STALLED_SECONDS", "observe_control", "REFRESHED_HERE", "RETRIES", "POISON", "observe_step", "observe_encoding", "observe_ingest", "observe_refresh",
]

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter("simstream_events", "Input events by outcome: applied, stale, duplicate, dead_lettered.",
                 ["outcome"], registry=REGISTRY)
BATCH_SIZE = Histogram("simstream_batch_size", "Events per ingest batch.",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
ENCODE_SECONDS = Histogram("simstream_encode_seconds", "Encoder time per batch, per field.", ["field"],
                           registry=REGISTRY)
MILVUS_SECONDS = Histogram("simstream_milvus_seconds", "Step latency per batch, by step: the index steps (Milvus "
                           "and the in-memory copies) and encode.", ["op"], registry=REGISTRY)
LISTS = Counter("simstream_lists", "Neighbour lists computed, by result: published, unchanged, tombstoned.",
                ["result"], registry=REGISTRY)
REFRESH_METHOD = Counter("simstream_refresh_lists", "Lists refreshed, by method: merged (recorded deep list + "
                         "changed products, no search) or searched.", ["method"], registry=REGISTRY)
FRESHNESS = Histogram("simstream_freshness_seconds", "event_time -> neighbour list published.",
                      buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300), registry=REGISTRY)
WATERMARK = Gauge("simstream_freshness_watermark_seconds",
                  "Age of the newest event_time fully processed, per input partition.", ["partition"],
                  registry=REGISTRY)
REFRESHED_HERE = Counter("simstream_lists_refreshed_in_ingest",
                         "Lists the ingest refreshed itself (this worker owns them), without a refresh request.",
                         registry=REGISTRY)
REPUBLISHED = Counter("simstream_lists_republished", "Recorded lists published as they were when a generation "
                      "started to publish (a switch: streams/migrate.py).", registry=REGISTRY)
BULK_ROUNDS = Counter("simstream_bulk_rounds", "Bulk-load rounds ended with every list requested (streams/bulk.py).",
                      registry=REGISTRY)
STUCK_PARTITIONS = Gauge("simstream_stuck_partitions", "Assigned partitions whose events wait while the worker, "
                         "free, has not moved on them for SIMSTREAM_STUCK_PARTITION_AFTER_S (streams/watchdog.py); "
                         "the worker then restarts.", registry=REGISTRY)
REBALANCE_SECONDS = Gauge("simstream_rebalance_seconds", "The worker's free time in the rebalance it is in now "
                          "(0: none); at SIMSTREAM_STUCK_PARTITION_AFTER_S the worker restarts (streams/watchdog.py).",
                          registry=REGISTRY)
STALLED_SECONDS = Gauge("simstream_partition_stalled_seconds", "Per assigned partition: the worker's free time its "
                        "position has stood still while events waited (0: moving or caught up).",
                        ["topic", "partition"], registry=REGISTRY)
# simstream_retries{operation, error}: counted by the one retry policy (simstream.retry) wherever it retries.
RETRIES = retry.RETRIES
REGISTRY.register(RETRIES)
# The control record as this worker last read it (streams/fence.py): what `simstream migrate --status` shows.
GENERATION = Gauge("simstream_generation", "1 for the generation this worker runs, by role, tag ('first' for the "
                   "first) and whether it may publish now.", ["role", "generation", "publishing"], registry=REGISTRY)
MIGRATION_PHASE = Gauge("simstream_migration_phase", "The migration's phase as its index in simstream.generations.PHASES "
                        "(0 filling .. 5 done); -1: none.", registry=REGISTRY)
MIGRATION_PRODUCTS = Gauge("simstream_migration_products", "Products re-embedded by the migration's fill (state=filled) "
                           "and in the changelog (state=total).", ["state"], registry=REGISTRY)
MIGRATION_RATE = Gauge("simstream_migration_fill_rate", "Products re-embedded per second by the fill.", registry=REGISTRY)
MIGRATION_LAG = Gauge("simstream_migration_lag_events", "Events the shadow's group is behind the live group's, as "
                      "simstream migrate last measured.", registry=REGISTRY)
MIGRATION_GATE = Gauge("simstream_migration_gate_passed", "1: the gate passed, 0: failed, -1: not run yet.",
                       registry=REGISTRY)
POISON = Counter("simstream_poison_records", "Records that failed alone after a batch was narrowed down, and were "
                 "dead-lettered, by agent.", ["agent"], registry=REGISTRY)


def observe_step(op: str, started: float) -> None:
    """Latency of one step (``started`` from ``time.perf_counter()``)."""
    MILVUS_SECONDS.labels(op).observe(time.perf_counter() - started)


def observe_encoding(encoded: EncodedBatch) -> None:
    for f, seconds in encoded.seconds.items():
        ENCODE_SECONDS.labels(f).observe(seconds)


def observe_ingest(batch_size: int, outcomes: Mapping[str, int], dead_lettered: int,
                   events: Iterable[ProductEvent]) -> None:
    """Counters and the per-partition watermark after an ingest batch's offsets may commit."""
    BATCH_SIZE.observe(batch_size)
    for outcome, n in outcomes.items():
        EVENTS.labels(outcome).inc(n)
    EVENTS.labels("dead_lettered").inc(dead_lettered)
    now = time.time()
    for e in events:
        if e.event_time:
            WATERMARK.labels(str(e.partition)).set(max(0.0, now - e.event_time / 1000))


def observe_refresh(published: Mapping[str, NeighbourList | None], unchanged: int, merged: int, searched: int) -> None:
    """Counters and freshness after a refresh batch's lists are published and recorded."""
    now = time.time()
    for nl in published.values():
        if nl is not None and nl.source_event_time:
            FRESHNESS.observe(max(0.0, now - nl.source_event_time / 1000))
    tombstones = sum(1 for nl in published.values() if nl is None)
    LISTS.labels("published").inc(len(published) - tombstones)
    LISTS.labels("tombstoned").inc(tombstones)
    LISTS.labels("unchanged").inc(unchanged)
    REFRESH_METHOD.labels("merged").inc(merged)
    REFRESH_METHOD.labels("searched").inc(searched)


def observe_control(record: ControlRecord | None, tag: str, role: str) -> None:
    """The gauges of the control record as this worker (generation ``tag``, ``role``) read it."""
    publishing = record.may_publish(tag) if record is not None else tag == ""
    GENERATION.clear()
    GENERATION.labels(role, tag or "first", "true" if publishing else "false").set(1)
    m = record.migration if record is not None else None
    MIGRATION_PHASE.set(PHASES.index(m.phase) if m is not None else -1)
    progress = m.progress if m is not None else {}
    MIGRATION_PRODUCTS.labels("filled").set(float(progress.get("filled", 0)))
    MIGRATION_PRODUCTS.labels("total").set(float(progress.get("total", 0)))
    MIGRATION_RATE.set(float(progress.get("rate_per_s", 0)))
    MIGRATION_LAG.set(float(progress.get("lag", 0)))
    MIGRATION_GATE.set(-1 if m is None or m.gate is None else 1 if m.gate.get("passed") else 0)
