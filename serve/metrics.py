"""Prometheus metrics of the query API: request latency by endpoint (route template), method and
status class, in a registry of its own so several apps in one process (tests) do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

__all__ = ["BUCKETS", "ServeMetrics"]

# from 1 ms to 2.5 s: the by-id target is 20 ms, searches 150 ms (docs/serving.md)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("simstream_serve_request_seconds", "Query API request latency",
                                 ["endpoint", "method", "status"], buckets=BUCKETS, registry=self.registry)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.latency.labels(endpoint, method, f"{status // 100}xx").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
