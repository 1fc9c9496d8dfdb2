"""Kafka client configuration from the one settings object (confluent-kafka and Faust's aiokafka)."""

from __future__ import annotations

from typing import Any

from simstream.settings import Settings

__all__ = ["bootstrap_servers", "client_config", "bound_faust_fetch_wait", "heartbeat_interval_s", "HEARTBEAT_MAX_S"]

HEARTBEAT_MAX_S = 1.0  # Kafka's default is 3 s


def bootstrap_servers(kafka_url: str) -> str:
    """'kafka://h1:9092;kafka://h2:9092' (faust style) -> 'h1:9092,h2:9092'."""
    parts = [p.strip() for p in kafka_url.replace(";", ",").split(",") if p.strip()]
    return ",".join(p.split("://", 1)[-1] for p in parts)


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers(settings.kafka),
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username or ""
        conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    if settings.kafka_ssl_cafile:
        conf["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    conf.update(extra)
    return conf


def bound_faust_fetch_wait(max_wait_ms: int) -> None:
    """Make Faust's consumer use ``fetch_max_wait_ms`` = ``max_wait_ms``.

    Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to change it
    (faust/transport/drivers/aiokafka.py, ``_create_worker_consumer``). aiokafka reads the value
    when the consumer starts, so it is set on the consumer right after Faust creates it.
    """
    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer
    original = getattr(create, "__wrapped__", create)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    create_worker_consumer.__wrapped__ = original  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def heartbeat_interval_s(session_timeout_s: float) -> float:
    """How often a group member heartbeats: a tenth of the session, at most ``HEARTBEAT_MAX_S``.
    A member learns that a rebalance started only at its next heartbeat, and the broker ends the
    join once every member has rejoined, so a worker that joins waits up to one interval on the
    others (with Kafka's 3 s default, most of a join); one small request a second costs nothing."""
    return min(HEARTBEAT_MAX_S, max(0.5, session_timeout_s / 10))
