"""Prometheus metrics, served on the worker's web port at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter("simstream_events", "Input events by outcome: applied, stale, duplicate, dead_lettered.",
                 ["outcome"], registry=REGISTRY)
BATCH_SIZE = Histogram("simstream_batch_size", "Events per ingest batch.",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
ENCODE_SECONDS = Histogram("simstream_encode_seconds", "Encoder time per batch, per field.", ["field"],
                           registry=REGISTRY)
MILVUS_SECONDS = Histogram("simstream_milvus_seconds", "Milvus step latency per batch.", ["op"], registry=REGISTRY)
LISTS = Counter("simstream_lists", "Neighbour lists computed, by result: published, unchanged, tombstoned.",
                ["result"], registry=REGISTRY)
REFRESH_METHOD = Counter("simstream_refresh_lists", "Lists refreshed, by method: merged (recorded deep list + "
                         "changed products, no search) or searched.", ["method"], registry=REGISTRY)
FRESHNESS = Histogram("simstream_freshness_seconds", "event_time -> neighbour list published.",
                      buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300), registry=REGISTRY)
WATERMARK = Gauge("simstream_freshness_watermark_seconds",
                  "Age of the newest event_time fully processed, per input partition.", ["partition"],
                  registry=REGISTRY)
RETRIES = Counter("simstream_retries", "Batch retries after transient Milvus/Kafka failures.", ["step"],
                  registry=REGISTRY)
