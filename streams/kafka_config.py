"""confluent-kafka client configuration from the one settings object."""

from __future__ import annotations

from typing import Any

from streams.settings import Settings


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
