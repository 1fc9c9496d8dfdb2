"""What simstream sends, durably: dead letters, the catalog changelog, neighbour lists, refresh
requests.

One sender for each, used by the worker (over ``FaustTransport``) and by ``backfill`` and
``reconcile`` (over ``ConfluentTransport``), so the dead-letter fallback, the list wire format and
the refresh routing exist once. Every method returns only after Kafka acknowledged its messages:
the callers commit offsets or record lists only after that.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from simstream.errors import KafkaRefused, KafkaUnavailable
from simstream.logs import get_logger
from simstream.records import NeighbourList, ProductEvent
from simstream.settings import Settings
from simstream.streams import messages
from simstream.streams.dead_letter import Rejected
from simstream.streams.fence import Fence
from simstream.streams.transports import Transport

__all__ = ["Outbox"]

log = get_logger(__name__)


class Outbox:
    """Builds the messages (streams/messages.py) and sends them through one ``Transport``."""

    def __init__(self, transport: Transport, settings: Settings, *, fence: Fence | None = None) -> None:
        """``fence``: whether this generation may publish lists now (None: always; the worker and
        the tools that publish lists pass one, streams/fence.py)."""
        self.transport = transport
        self.settings = settings
        self.fence = fence
        self.answering = True  # whether Kafka acknowledged the last send (readiness, outage detection)

    async def _send(self, what: str, batch: Sequence[messages.Message]) -> None:
        if not batch:
            return
        try:
            await self.transport.send(batch)
        except KafkaUnavailable as exc:
            self.answering = False
            raise KafkaUnavailable(f"{what}: {exc}") from exc
        self.answering = True

    async def _partitions(self, topic: str) -> int:
        try:
            return await self.transport.partitions(topic)
        except KafkaUnavailable:
            self.answering = False
            raise

    async def dead_letters(self, rejects: Iterable[Rejected], source_topic: str) -> None:
        """Rejected records to the DLQ with the reason in headers. When Kafka refuses a dead letter
        itself (an oversized key or headers), the batch goes again as bare pointers."""
        rejects = list(rejects)
        for rej in rejects:
            log.warning("dead-lettered", kind=rej.kind, reason=rej.reason[:300], stage=rej.stage,
                        partition=rej.record.partition, offset=rej.record.offset,
                        key=(rej.record.key or b"").decode("utf-8", "replace")[:300])
        s = self.settings
        try:
            await self._send("dead letters", [
                messages.dead_letter(r, source_topic=source_topic, dlq_topic=s.dlq_topic,
                                     max_message_bytes=s.max_message_bytes) for r in rejects])
        except KafkaRefused as exc:
            log.error("Kafka refused a dead letter; sending bare pointers", error=str(exc)[:300])
            await self._send("dead letters", [
                messages.bare_dead_letter(r, source_topic=source_topic, dlq_topic=s.dlq_topic) for r in rejects])

    async def catalog(self, events: Iterable[ProductEvent]) -> None:
        """The accepted events to the catalog changelog (``messages.catalog_record``), once the
        index holds them and before their offsets commit; nothing when it is off."""
        s = self.settings
        if s.changelog_topic:
            await self._send("catalog changelog", [
                messages.catalog_record(e, topic=s.changelog_topic, max_message_bytes=s.max_message_bytes)
                for e in events])

    async def lists(self, lists: Mapping[str, NeighbourList | None], encoded: Mapping[str, bytes] | None = None) -> None:
        """Publish lists (None: a tombstone) keyed by product id, before they are recorded;
        ``encoded``: wire forms already made (the recorded payloads), so none is encoded twice.
        The caller asked the fence (``publish_refreshed``)."""
        topic = self.settings.neighbors_topic
        made = encoded or {}
        await self._send("neighbour lists", [messages.neighbour_list(pid, nl, topic=topic, encoded=made.get(pid))
                                             for pid, nl in lists.items()])

    async def recorded_lists(self, payloads: Mapping[str, bytes]) -> None:
        """Recorded lists as they were published (an empty payload: the tombstone); a republish."""
        topic = self.settings.neighbors_topic
        await self._send("recorded lists", [messages.recorded_list(pid, p, topic=topic) for pid, p in payloads.items()])

    async def republish_request(self) -> None:
        """A request to every refresh partition to publish every list it recorded (a switch)."""
        partitions = await self.refresh_partitions()
        await self._send("republish requests",
                         messages.republish_requests(topic=self.settings.refresh_topic, partitions=partitions))

    async def refresh_partitions(self) -> int:
        """How many partitions the refresh topic has (list ownership follows them)."""
        return await self._partitions(self.settings.refresh_topic)

    async def every_list_request(self) -> None:
        """A request to every refresh partition for every list it owns (the end of a bulk load)."""
        partitions = await self.refresh_partitions()
        await self._send("every-list requests",
                         messages.every_list_requests(topic=self.settings.refresh_topic, partitions=partitions))

    async def refresh_requests(self, ids: Iterable[str], event_times: Mapping[str, int | None]) -> None:
        """Requests to the partitions that own the lists of ``ids``, each under the size cap."""
        ids = list(ids)
        if not ids:
            return
        s = self.settings
        partitions = await self._partitions(s.refresh_topic)
        await self._send("refresh requests", messages.refresh_requests(
            ids, event_times, topic=s.refresh_topic, partitions=partitions, max_bytes=s.refresh_request_max_bytes))
