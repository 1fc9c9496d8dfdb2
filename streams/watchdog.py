"""The stuck-partition watchdog: a partition this worker holds whose events wait and never move.

Faust has open reports of partitions that are never fetched again after a rebalance
(faust-streaming #629): the worker stays in the group, healthy and ready, and that partition's
events wait forever, so its products' lists go stale with no error anywhere. Every
``WATCHDOG_INTERVAL_S`` the watchdog compares, per assigned partition of the events and refresh
topics, where this worker stands (the offset after the last record it took, or the group's
committed offset) with the broker's end offset (a ListOffsets request, independent of the fetches
that stopped). A partition whose events wait and whose position has not moved for
``SIMSTREAM_STUCK_PARTITION_AFTER_S`` of the worker's *free* time (no step in flight, no rebalance:
a long every-list pass holds every partition, rightly) is a suspect; a read of the record at its
position confirms that an event is really there (so a broker that misreports end offsets cannot
cause a restart loop; the embedded Tansu counts a batch of records as one). A confirmed stuck
partition is logged, counted (``simstream_stuck_partitions``; deploy/k8s/components/alerts) and
recovered by stopping the worker: Faust commits and leaves the group, the supervisor starts it
again, and it restores its copies from its snapshot in seconds (index/snapshot.py). A restart is
the one recovery sure to reset Faust's fetcher state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from simstream.logs import get_logger
from simstream.settings import Settings
from simstream.streams.kafka_config import client_config

__all__ = ["WATCHDOG_INTERVAL_S", "Partition", "StallClock", "BrokerView"]

log = get_logger(__name__)

WATCHDOG_INTERVAL_S = 15.0

Partition = tuple[str, int]  # (topic, partition)


@dataclass
class _Watch:
    position: int
    waiting: bool  # whether events waited at the last check (the clock starts at the first that sees them)
    still_s: float = 0.0  # free time the position has not moved while events waited


class StallClock:
    """Per partition: how long (in the worker's free time) its position has stood still while its
    end offset was ahead. Pure bookkeeping; ``BrokerView`` reads the offsets."""

    def __init__(self, stuck_after_s: float) -> None:
        self.stuck_after_s = stuck_after_s
        self._watch: dict[Partition, _Watch] = {}

    def observe(self, positions: Mapping[Partition, int], ends: Mapping[Partition, int], *, free_s: float) -> list[Partition]:
        """One check: ``positions`` of the assigned partitions, their ``ends``, and the free time
        since the last check. Returns the partitions that have stood still for ``stuck_after_s``."""
        self._watch = {tp: w for tp, w in self._watch.items() if tp in positions}  # revoked: forgotten
        suspects = []
        for tp, position in positions.items():
            w = self._watch.get(tp)
            waiting = ends.get(tp, position) > position
            if w is None or w.position != position or not waiting or not w.waiting:
                self._watch[tp] = _Watch(position, waiting)
                continue
            w.still_s += free_s
            if w.still_s >= self.stuck_after_s:
                suspects.append(tp)
        return suspects

    def still_s(self, tp: Partition) -> float:
        w = self._watch.get(tp)
        return w.still_s if w is not None else 0.0


class BrokerView:
    """The broker's side of the check, on a consumer of its own (never a group member): end
    offsets, the group's committed offsets, and whether a record really waits at a position.
    Blocking calls with the Kafka deadline: run them off the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group = settings.app_id
        self._consumer: Consumer | None = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(client_config(self.settings, **{
                "group.id": self.group, "enable.auto.commit": False, "auto.offset.reset": "earliest"}))
        return self._consumer

    def ends_and_committed(self, tps: list[Partition]) -> tuple[dict[Partition, int], dict[Partition, int]]:
        """End offsets and the group's committed offsets of ``tps`` (a partition never committed: 0)."""
        c, timeout = self._client(), self.settings.kafka_timeout_s
        ends = {tp: int(c.get_watermark_offsets(TopicPartition(*tp), timeout=timeout, cached=False)[1]) for tp in tps}
        got = c.committed([TopicPartition(*tp) for tp in tps], timeout=timeout)
        return ends, {(t.topic, t.partition): max(0, t.offset) for t in got}

    def record_waits(self, tp: Partition, position: int, timeout_s: float = 5.0) -> bool:
        """Whether a record at ``position`` or later can be read now (assigned directly: no group)."""
        c = self._client()
        try:
            c.assign([TopicPartition(tp[0], tp[1], position)])
            for m in c.consume(1, timeout=timeout_s):
                if m.error() is None and (m.offset() or 0) >= position:
                    return True
            return False
        finally:
            c.unassign()

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except KafkaException:
                pass
            self._consumer = None
