"""Consumer groups from outside: offsets read and set (a migration's cut, its shadow's lag), and a
dropped generation's group and topics deleted.

A migration records the live group's committed offsets on the events topic as its *cut*, and
starts the shadow's group there; its lag is how far the shadow's committed offsets are behind the
live group's. Committed offsets are what the groups' workers made durable, so they are the right
measure on any broker (the embedded broker misreports end offsets: streams/neighbour_reader.py).
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from simstream.errors import KafkaUnavailable
from simstream.settings import Settings
from simstream.streams.kafka_config import client_config

__all__ = ["committed_offsets", "commit_offsets", "lag_behind", "delete_group_and_topics"]


def _consumer(settings: Settings, group: str) -> Consumer:
    return Consumer(client_config(settings, **{"group.id": group, "enable.auto.commit": False,
                                               "auto.offset.reset": "earliest"}))


def committed_offsets(settings: Settings, group: str, topic: str, *, timeout_s: float | None = None) -> dict[int, int]:
    """partition -> the next offset ``group`` will read on ``topic``; partitions it never committed
    are left out (it starts those at the earliest offset)."""
    timeout = timeout_s if timeout_s is not None else settings.kafka_timeout_s
    consumer = _consumer(settings, group)
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return {}
        tps = consumer.committed([TopicPartition(topic, p) for p in sorted(meta.partitions)], timeout=timeout)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    except KafkaException as exc:
        raise KafkaUnavailable(f"committed offsets of {group} on {topic}: {exc}") from exc
    finally:
        consumer.close()


def commit_offsets(settings: Settings, group: str, topic: str, offsets: dict[int, int], *,
                   timeout_s: float | None = None) -> None:
    """Make ``offsets`` the committed offsets of ``group`` on ``topic`` (a group nobody consumes in yet)."""
    if not offsets:
        return
    consumer = _consumer(settings, group)
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in sorted(offsets.items())], asynchronous=False)
    except KafkaException as exc:
        raise KafkaUnavailable(f"committing offsets of {group} on {topic}: {exc}") from exc
    finally:
        consumer.close()


def lag_behind(ahead: dict[int, int], behind: dict[int, int]) -> int:
    """Events ``behind`` has still to read to reach ``ahead`` (both: partition -> committed offset)."""
    return sum(max(0, offset - behind.get(p, 0)) for p, offset in ahead.items())


def delete_group_and_topics(settings: Settings, group: str, topics: list[str], *,
                            timeout_s: float | None = None) -> list[str]:
    """Delete a consumer group nobody consumes in any more and its topics (a dropped generation's
    group, refresh topic and DLQ); returns what could not be deleted, with the broker's reason
    (a broker without the admin calls, or managed topics: delete those by hand)."""
    timeout = timeout_s if timeout_s is not None else settings.kafka_timeout_s
    admin = AdminClient(client_config(settings))
    left: list[str] = []
    futures = {f"topic {t}": f for t, f in admin.delete_topics(topics, operation_timeout=timeout).items()}
    futures |= {f"group {g}": f for g, f in admin.delete_consumer_groups([group], request_timeout=timeout).items()}
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except Exception as exc:  # each is independent: say which, keep going
            left.append(f"{name}: {str(exc)[:200]}")
    return left
