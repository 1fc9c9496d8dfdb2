"""Prometheus metrics of the query API, in a registry of its own so several apps in one process
(tests) do not collide:

- request latency by endpoint (route template), method and status class;
- how well concurrent requests are batched (serve/batcher.py), by work (``rank``: passes over
  the catalog, ``encode``: query encoder calls): batches, the items in them, the seconds they ran
  and the seconds their leaders waited to gather callers. Items / batches is the mean batch; a
  pass that runs much longer over HTTP than alone means the process is short of CPU or GIL
  (docs/serving.md "Measured")."""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from simstream.serve.batcher import MicroBatcher

__all__ = ["BUCKETS", "BatchingCollector", "ServeMetrics"]

# from 1 ms to 2.5 s: the by-id target is 20 ms, searches 150 ms (docs/serving.md)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("simstream_serve_request_seconds", "Query API request latency",
                                 ["endpoint", "method", "status"], buckets=BUCKETS, registry=self.registry)

    def watch(self, batchers: Callable[[], Mapping[str, MicroBatcher[object, object] | None]]) -> None:
        """Report the batchers ``batchers()`` names (read at each scrape: a new generation brings new ones)."""
        self.registry.register(BatchingCollector(batchers))

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.latency.labels(endpoint, method, f"{status // 100}xx").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BatchingCollector(Collector):
    """The counters of serve's batchers at scrape time, by work."""

    def __init__(self, batchers: Callable[[], Mapping[str, MicroBatcher[object, object] | None]]) -> None:
        self._batchers = batchers

    def collect(self) -> Iterator[CounterMetricFamily]:
        families = [
            (CounterMetricFamily("simstream_serve_batches", "Batches of concurrent requests' work run, by work.",
                                 labels=["work"]), lambda b: b.batches),
            (CounterMetricFamily("simstream_serve_batch_items", "Items (queries) in those batches, by work.",
                                 labels=["work"]), lambda b: b.items),
            (CounterMetricFamily("simstream_serve_batch_seconds", "Seconds those batches ran, by work.",
                                 labels=["work"]), lambda b: b.run_s),
            (CounterMetricFamily("simstream_serve_batch_gather_seconds", "Seconds batches' leaders waited to "
                                 "gather callers first, by work.", labels=["work"]), lambda b: b.gathered_s),
        ]
        held = {work: b for work, b in self._batchers().items() if b is not None}
        for family, value in families:
            for work, batcher in sorted(held.items()):
                family.add_metric([work], float(value(batcher)))
            yield family
