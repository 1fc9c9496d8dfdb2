"""Every message simstream writes to Kafka, built here and nowhere else, as a plain ``Message``.

The worker (through Faust) and the command-line tools (through confluent-kafka) send the same
records: a dead letter, a neighbour list or its tombstone, a refresh request, a product event.
Each is a topic, a key, a value, headers, a timestamp and a partition, where the partition of a
keyed message comes from ``partition_for`` — Kafka's default murmur2 partitioner, applied by the
transports (streams/transports.py) with the topic's real partition count, never by the clients'
own partitioners (two of those once disagreed, and a compacted topic kept a stale list beside a
later tombstone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence

import orjson
from aiokafka.partitioner import murmur2

from simstream.limits import CHANGELOG_HEADROOM_BYTES, DEAD_LETTER_HEADROOM_BYTES, MAX_BARE_KEY_BYTES
from simstream.records import NeighbourList, ProductEvent
from simstream.streams.contracts import event_document
from simstream.streams.dead_letter import SIMSTREAM_HEADER, Rejected

__all__ = ["Message", "partition_for", "route", "dead_letter", "bare_dead_letter", "neighbour_list",
           "refresh_requests", "encode_refresh_request", "EVERY_LIST_REQUEST", "every_list_requests",
           "REPUBLISH_REQUEST", "republish_requests", "recorded_list", "product_event",
           "replayed", "Original", "Headers", "catalog_record", "OMITTED_HEADER", "OMITTABLE_FIELDS"]

Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class Message:
    """One record to produce. ``partition`` None: the key's partition (``partition_for``), or any
    partition for a message without a key."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone on a compacted topic
    headers: Headers = ()
    partition: int | None = None
    timestamp_ms: int | None = None

    @property
    def size(self) -> int:
        """Key, value and header bytes (what counts against the broker's request limit)."""
        return len(self.key or b"") + len(self.value or b"") + sum(len(k.encode()) + len(v or b"") for k, v in self.headers)


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2, as the Java clients and aiokafka use): the one rule for
    which partition a key lives on, so a list, its tombstone and its refresh requests meet there."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def route(ids: Iterable[str], partitions: int) -> dict[int, list[str]]:
    """Ids grouped by the partition that owns their lists (sorted, so requests are deterministic)."""
    routed: dict[int, list[str]] = {}
    for pid in sorted(ids):
        routed.setdefault(partition_for(pid.encode(), partitions), []).append(pid)
    return routed


# --- dead letters ---------------------------------------------------------------------------------

def dead_letter(rejected: Rejected, *, source_topic: str, dlq_topic: str, max_message_bytes: int) -> Message:
    """The original key, value, headers and timestamp, then simstream's headers saying why; the
    value is left out (``x-simstream-value-omitted``) when the record would not fit the request cap
    with room for those headers."""
    value, extra = rejected.value_for_dlq(max_message_bytes - DEAD_LETTER_HEADROOM_BYTES)
    r = rejected.record
    return Message(dlq_topic, r.key, value, tuple(rejected.headers(source_topic) + extra), timestamp_ms=r.timestamp_ms)


def bare_dead_letter(rejected: Rejected, *, source_topic: str, dlq_topic: str) -> Message:
    """The fallback when Kafka refused the dead letter itself (an oversized key or headers): no value,
    no original headers, the key cut to ``MAX_BARE_KEY_BYTES``; the source offset still points at
    the record."""
    full = dead_letter(rejected, source_topic=source_topic, dlq_topic=dlq_topic, max_message_bytes=0)
    own = tuple(h for h in full.headers if h[0].startswith(SIMSTREAM_HEADER))
    return Message(dlq_topic, (rejected.record.key or b"")[:MAX_BARE_KEY_BYTES], None, own,
                   timestamp_ms=rejected.record.timestamp_ms)


# --- neighbour lists ------------------------------------------------------------------------------

def neighbour_list(product_id: str, lst: NeighbourList | None, *, topic: str, encoded: bytes | None = None) -> Message:
    """A product's list keyed by its id; None is the tombstone of a deleted product. ``encoded``:
    ``lst.to_json()`` when the caller already has it."""
    if lst is None:
        return Message(topic, product_id.encode(), None)
    return Message(topic, product_id.encode(), encoded if encoded is not None else lst.to_json())


# --- refresh requests -----------------------------------------------------------------------------

def encode_refresh_request(ids: Sequence[str], event_times: Mapping[str, int | None], *,
                           every_list: bool = False, republish: bool = False) -> bytes:
    """The wire form (streams/refresh_requests.py reads it): the ids and, per id, its causing event
    time; ``every_list``: every list of the partition it goes to; ``republish``: publish every
    recorded list of that partition as it is (a switch of generations). Flags are sent only when set."""
    doc: dict[str, object] = {"ids": list(ids), "event_times": {i: event_times.get(i) for i in ids}}
    if every_list:
        doc["every_list"] = True
    if republish:
        doc["republish"] = True
    return orjson.dumps(doc)


def _chunks(ids: Sequence[str], max_bytes: int) -> Iterable[list[str]]:
    """``ids`` in runs whose request stays under ``max_bytes`` (a whole catalog's worth of affected
    lists must not exceed the broker's message size)."""
    chunk: list[str] = []
    size = 32
    for pid in ids:
        entry = len(orjson.dumps(pid)) * 2 + 24  # the id in "ids" and as a key of "event_times", with a time
        if chunk and size + entry > max_bytes:
            yield chunk
            chunk, size = [], 32
        chunk.append(pid)
        size += entry
    if chunk:
        yield chunk


def refresh_requests(ids: Iterable[str], event_times: Mapping[str, int | None], *, topic: str, partitions: int,
                     max_bytes: int) -> list[Message]:
    """Requests to refresh the lists of ``ids``, each sent to the partition that owns those lists, so
    that exactly one worker ever writes a given list."""
    return [Message(topic, None, encode_refresh_request(chunk, event_times), partition=partition)
            for partition, owned in route(ids, partitions).items() for chunk in _chunks(owned, max_bytes)]


EVERY_LIST_REQUEST = encode_refresh_request([], {}, every_list=True)


def every_list_requests(*, topic: str, partitions: int) -> list[Message]:
    """A request to every partition for every list it owns (after a bulk load: streams/bulk.py)."""
    return [Message(topic, None, EVERY_LIST_REQUEST, partition=p) for p in range(partitions)]


REPUBLISH_REQUEST = encode_refresh_request([], {}, republish=True)


def republish_requests(*, topic: str, partitions: int) -> list[Message]:
    """A request to every partition to publish every list it has recorded (``simstream migrate``'s
    switch: the new generation's lists replace the old one's on the neighbour topic)."""
    return [Message(topic, None, REPUBLISH_REQUEST, partition=p) for p in range(partitions)]


def recorded_list(product_id: str, payload: bytes, *, topic: str) -> Message:
    """A recorded list as it was published (its payload), or its tombstone when the payload is empty."""
    return Message(topic, product_id.encode(), payload or None)


# --- the catalog changelog -----------------------------------------------------------------------

OMITTED_HEADER = f"{SIMSTREAM_HEADER}omitted"  # the fields a changelog record left out, comma-separated
# What a changelog record may leave out to fit a message, in this order: an inline image (a
# re-encoding reuses the stored image segment), then the long free text. At the default
# SIMSTREAM_MAX_MESSAGE_BYTES (1 MB) only an inline image is ever left out.
OMITTABLE_FIELDS = ("image_b64", "description", "attributes")


def catalog_record(event: ProductEvent, *, topic: str, max_message_bytes: int) -> Message:
    """A product's latest accepted state keyed by its id, in the input contract's form
    (``contracts.event_document``): an upsert's source fields, or an explicit delete record (never
    a Kafka tombstone, so a reader starting from offset 0 still sees the delete after compaction
    dropped the product's earlier records). Fields that would take it over ``max_message_bytes``
    are left out (``OMITTABLE_FIELDS``), named in the ``OMITTED_HEADER``."""
    key = event.product_id.encode()
    room = max_message_bytes - CHANGELOG_HEADROOM_BYTES - len(key)
    value = orjson.dumps(event_document(event))
    omitted: list[str] = []
    for name in OMITTABLE_FIELDS:
        if len(value) <= room:
            break
        if getattr(event, name):
            omitted.append(name)
            value = orjson.dumps(event_document(event, without=frozenset(omitted)))
    headers: Headers = ((OMITTED_HEADER, ",".join(omitted).encode()),) if omitted else ()
    return Message(topic, key, value, headers, timestamp_ms=event.event_time)


# --- product events (the catalog side: simstream produce, the harness) -----------------------------

def product_event(value: bytes | None, *, key: bytes | None, topic: str,
                  headers: Sequence[tuple[str, bytes | None]] = ()) -> Message:
    """A product event (or any raw record the tools publish) keyed by its product id."""
    return Message(topic, key, value, tuple(headers))


class Original(Protocol):
    """A record as it was first sent (a consumed ``RawRecord``, a dead letter's original)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def timestamp_ms(self) -> int | None: ...


def replayed(record: Original, *, topic: str, partition: int | None) -> Message:
    """A record sent again as it was (``simstream dlq replay``): its key, value, headers and
    timestamp; ``partition`` None: the key's partition."""
    return Message(topic, record.key, record.value, record.headers, partition, record.timestamp_ms)
