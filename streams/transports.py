"""Two thin transports under one interface: ``await transport.send(messages)`` returns when Kafka
acknowledged every message, or raises.

- ``FaustTransport``: the worker's own producer (Faust over aiokafka), so its sends share the
  connection, the credentials and the topic declarations of the app.
- ``ConfluentTransport``: confluent-kafka, for the command-line tools (``produce``, ``backfill``,
  ``reconcile``), which run without a Faust app.

Both resolve a keyed message's partition with ``messages.partition_for`` and the topic's real
partition count, and pass it explicitly, so the clients' own partitioners never decide.

Errors (simstream.errors): ``KafkaUnavailable`` when the broker did not acknowledge within the
deadline (an outage: the caller waits it out), ``KafkaRefused`` when it refused a message itself
(too large, invalid: resending it as is cannot help).
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping, Protocol, Sequence

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError
from confluent_kafka import KafkaError, KafkaException, Producer

from simstream import retry
from simstream.errors import KafkaRefused, KafkaUnavailable
from simstream.settings import Settings
from simstream.streams.kafka_config import client_config
from simstream.streams.messages import Message, partition_for

__all__ = ["Transport", "FaustTransport", "ConfluentTransport"]

_FAUST_TRANSIENT = (asyncio.TimeoutError, KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError,
                   RequestTimedOutError)
# librdkafka's codes for "not acknowledged in time / broker not reachable", beside ``retriable()``.
_CONFLUENT_TRANSIENT = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
                       KafkaError._ALL_BROKERS_DOWN, KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS,
                       KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION}


class Transport(Protocol):
    """What the rest of simstream needs from a Kafka client."""

    async def send(self, messages: Sequence[Message]) -> None:
        """Produce ``messages`` and wait until every one is acknowledged, within the deadline."""

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has."""


class FaustTransport:
    """Sends through the Faust app's producer; ``topics`` are the app's declared topics by name."""

    def __init__(self, app: Any, topics: Mapping[str, Any], *, timeout_s: float) -> None:
        self.app, self.topics, self.timeout_s = app, dict(topics), timeout_s
        self._partitions: dict[str, int] = {}

    async def partitions(self, topic: str) -> int:
        if topic not in self._partitions:
            # aiokafka waits for the topic's metadata (Faust has no public call for this).
            producer = self.app.producer._ensure_producer()
            try:
                found = await asyncio.wait_for(producer.partitions_for(topic), timeout=self.timeout_s)
            except _FAUST_TRANSIENT as exc:
                raise KafkaUnavailable(f"metadata of {topic}: {type(exc).__name__}: {exc}") from exc
            self._partitions[topic] = len(found)
        return self._partitions[topic]

    async def send(self, messages: Sequence[Message]) -> None:
        try:
            await asyncio.wait_for(self._send(messages), timeout=self.timeout_s)
        except _FAUST_TRANSIENT as exc:
            raise KafkaUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except (KafkaUnavailable, KafkaRefused):  # from partitions(): already sorted
            raise
        except Exception as exc:  # the broker or the client refused a message (size, ...)
            raise KafkaRefused(f"{type(exc).__name__}: {exc}") from exc

    async def _send(self, messages: Sequence[Message]) -> None:
        pending = []
        for m in messages:
            partition = m.partition
            if partition is None and m.key is not None:
                partition = partition_for(m.key, await self.partitions(m.topic))
            pending.append(await self.topics[m.topic].send(
                key=m.key, value=m.value, partition=partition, headers=list(m.headers),
                timestamp=m.timestamp_ms / 1000 if m.timestamp_ms else None, force=True))
        await asyncio.gather(*pending)


class ConfluentTransport:
    """A confluent-kafka producer. ``produce`` + ``flush`` for scripts that send as they read,
    ``send`` for the shared async callers; ``close`` (or ``with``) stops its connections."""

    def __init__(self, settings: Settings, *, timeout_s: float | None = None, **extra: Any) -> None:
        self.timeout_s = timeout_s if timeout_s is not None else settings.kafka_timeout_s
        self.producer = Producer(client_config(settings, **{
            "linger.ms": 5, "enable.idempotence": False, "log_level": 4,
            "message.timeout.ms": max(1000, int(self.timeout_s * 1000)), **extra}))
        self._partitions: dict[str, int] = {}
        self._failed: list[KafkaError] = []

    def partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            try:
                meta = self.producer.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
            except KafkaException as exc:
                raise KafkaUnavailable(f"metadata of {topic}: {exc}") from exc
            if meta is None or meta.error is not None or not meta.partitions:
                raise KafkaUnavailable(f"metadata of {topic}: {meta.error if meta is not None else 'no such topic'}")
            self._partitions[topic] = len(meta.partitions)
        return self._partitions[topic]

    async def partitions(self, topic: str) -> int:
        return await asyncio.to_thread(self.partition_count, topic)

    def _report(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._failed.append(err)

    def produce(self, m: Message) -> None:
        """Queue one message (waits while the local queue is full)."""
        extra: dict[str, Any] = {}
        if m.partition is not None:
            extra["partition"] = m.partition
        elif m.key is not None:
            extra["partition"] = partition_for(m.key, self.partition_count(m.topic))
        if m.timestamp_ms:
            extra["timestamp"] = m.timestamp_ms

        def queue() -> None:
            try:
                self.producer.produce(m.topic, key=m.key, value=m.value, headers=list(m.headers) or None,
                                      on_delivery=self._report, **extra)
            except KafkaException as exc:  # refused locally: too large, unknown partition
                raise KafkaRefused(f"{m.topic}: {exc}") from exc

        def serve_reports(seconds: float) -> None:  # frees the queue as messages are acknowledged
            self.producer.poll(seconds)

        try:
            queue()
        except BufferError:  # local queue full: serve delivery reports while waiting, then try again
            try:
                retry.call(retry.QUEUE_FULL.with_deadline(self.timeout_s), "produce_queue_full", queue,
                           retry_on=(BufferError,), sleep=serve_reports)
            except BufferError:
                raise KafkaUnavailable(f"the producer queue stayed full for {self.timeout_s} s") from None
        self.producer.poll(0)

    def flush(self) -> None:
        """Wait until everything queued is acknowledged; raise for what was not."""
        left = self.producer.flush(self.timeout_s)
        failed, self._failed = self._failed, []
        if left:
            self.producer.purge()  # do not deliver them later behind the caller's back
            self.producer.flush(0)
            raise KafkaUnavailable(f"{left} messages not acknowledged within {self.timeout_s} s")
        if failed:
            transient = [e for e in failed if e.retriable() or e.code() in _CONFLUENT_TRANSIENT]
            error = KafkaUnavailable if len(transient) == len(failed) else KafkaRefused
            raise error(f"{len(failed)} messages failed: {[str(e) for e in failed[:3]]}")

    def send_now(self, messages: Sequence[Message]) -> None:
        """``produce`` each, then ``flush``: the blocking form of ``send``."""
        for m in messages:
            self.produce(m)
        self.flush()

    async def send(self, messages: Sequence[Message]) -> None:
        await asyncio.to_thread(self.send_now, messages)

    def close(self) -> None:
        self.producer.close()  # stop its broker connections now, not at garbage collection

    def __enter__(self) -> "ConfluentTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
