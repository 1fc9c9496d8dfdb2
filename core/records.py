"""The domain records: a product change coming in, a neighbour list going out.

Plain frozen dataclasses that every layer may hold; parsing and validation of the wire format live
in ``simstream.streams.contracts`` (docs/events.md). The wire format spells the list's field
``neighbors``; in code the concept is a *neighbour*.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["ProductEvent", "CONTRACT_FIELDS", "FUSED_FIELDS", "Neighbour", "NeighbourList"]


@dataclass(frozen=True, slots=True)
class ProductEvent:
    """One validated product change, as consumed from the events topic."""

    product_id: str
    op: Literal["upsert", "delete"]
    version: int
    title: str = ""
    description: str | None = None
    brand: str | None = None
    category: str | None = None
    price: float | None = None
    currency: str | None = None
    mpn: str | None = None
    image_url: str | None = None
    image_b64: str | None = None
    attributes: dict[str, str | None] = field(default_factory=dict)
    event_time: int | None = None
    # Where it came from: for dead letters and logs, not part of the contract.
    partition: int = -1
    offset: int = -1

    @property
    def is_delete(self) -> bool:
        return self.op == "delete"

    def supersedes(self, held: "ProductEvent | None") -> bool:
        """Whether this event replaces ``held`` as a product's state: the highest version wins, a
        later offset a tie (the one rule of the ingest's coalescing and the changelog's readers)."""
        return held is None or (self.version, self.offset) >= (held.version, held.offset)


CONTRACT_FIELDS = frozenset(ProductEvent.__dataclass_fields__) - {"partition", "offset"}

#: The fields fused into one vector, in the order of their segments; a list entry's "why similar"
#: contributions are keyed by them (encoders/fusion.py). Fields after ``price`` came later and take
#: room in the vector only when weighted (``fusion.OPTIONAL_FIELDS``).
FUSED_FIELDS = ("text", "title_lexical", "mpn", "image", "brand", "category", "price", "text_words")


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One entry of a list: the neighbour, its score, the score split by field ("why similar"), and
    how likely it is the same product (``simstream.match``; None where the model has no match
    decision: the wire form then leaves the key out)."""

    product_id: str
    score: float
    fields: dict[str, float]
    match_probability: float | None = None

    def to_wire(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"product_id": self.product_id, "score": self.score, "fields": self.fields}
        if self.match_probability is not None:
            doc["match_probability"] = self.match_probability
        return doc


@dataclass(frozen=True, slots=True)
class NeighbourList:
    """The value published on the neighbour topic for one product."""

    product_id: str
    version: int
    neighbours: list[Neighbour]
    model: str
    computed_at: int
    source_event_time: int | None

    def to_json(self) -> bytes:
        """The wire form (docs/events.md): the list is spelled ``neighbors`` there."""
        return orjson.dumps({
            "product_id": self.product_id, "version": self.version,
            "neighbors": [n.to_wire() for n in self.neighbours],
            "model": self.model, "computed_at": self.computed_at, "source_event_time": self.source_event_time,
        })

    @classmethod
    def from_json(cls, raw: bytes | str) -> "NeighbourList":
        """The wire form back (readers: serve, the exactness proof, recommenders in Python)."""
        doc: dict[str, Any] = orjson.loads(raw)
        return cls(
            product_id=doc["product_id"],
            version=doc["version"],
            # by name, so a payload from a newer writer with more keys still reads
            neighbours=[Neighbour(n["product_id"], n["score"], n["fields"], n.get("match_probability"))
                        for n in doc["neighbors"]],
            model=doc["model"],
            computed_at=doc["computed_at"],
            source_event_time=doc.get("source_event_time"),
        )

    def content_digest(self) -> bytes:
        """16 bytes that change whenever ``same_content`` could: version, model, ids, scores. Kept
        beside a recorded list (``index.rows.HeadFacts``), so the next refresh diffs without reading
        it back."""
        h = hashlib.blake2b(digest_size=16)
        h.update(orjson.dumps([self.version, self.model, [[n.product_id, n.score] for n in self.neighbours]]))
        return h.digest()

    def same_content(self, other: "NeighbourList | None") -> bool:
        """Equal ids, order and scores (to 1e-6): a list that did not change is not republished."""
        if other is None or other.version != self.version or other.model != self.model:
            return False
        if [n.product_id for n in other.neighbours] != [n.product_id for n in self.neighbours]:
            return False
        return all(abs(a.score - b.score) <= 1e-6 for a, b in zip(self.neighbours, other.neighbours))
