"""The bulk path: with a large backlog, write products without affected sets, then refresh every
list once, instead of ~15 list refreshes per event.

    streaming --(backlog >= max(SIMSTREAM_BULK_MIN_BACKLOG, SIMSTREAM_BULK_BACKLOG_SHARE x catalog))--> bulk
    bulk: batches are gathered into steps of WRITE_BATCH events (as ``simstream backfill`` does),
          each validated, encoded and written (no affected set, no refresh request); the input
          offsets are held, not committed
    bulk --(caught up: backlog <= one batch; or BULK_MAX_HELD_EVENTS held)--> an every-list request
          to each refresh partition, durable, then the held offsets are released --> streaming

The held offsets are the durable "bulk pending" marker: until the every-list request is on Kafka,
none of the round's input commits, so a crash (or a rebalance) reads those events again. They are
duplicates of what was written, and a duplicate's affected set is computed again
(streams/ingest.py ``VersionCheck.replays``), or, while the backlog is still large, they join a new
round. Once the request is durable, each partition's owner searches, publishes and records every
list it owns (``DataPath.refresh``), and commits the request only after that: the lists end exact,
as after ``simstream backfill``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from simstream.limits import BULK_MAX_HELD_EVENTS
from simstream.streams.dead_letter import RawRecord

__all__ = ["WRITE_BATCH", "BulkRound"]

WRITE_BATCH = 1024  # events per bulk step: one version read, one encode call, one upsert (the backfill's batch)


@dataclass
class BulkRound:
    """When a worker's ingest switches to the bulk path and back (one per worker)."""

    min_backlog: int  # 0: never
    backlog_share: float
    max_held: int = BULK_MAX_HELD_EVENTS
    active: bool = False
    held: int = 0  # events of the current round whose offsets are held
    rounds: int = 0
    pending: list[RawRecord] = field(default_factory=list)  # taken, not yet written (< WRITE_BATCH)

    def worth_counting(self, backlog: int) -> bool:
        """Whether ``backlog`` may start a round (only then is the catalog counted)."""
        return not self.active and self.min_backlog > 0 and backlog >= self.min_backlog

    def start_if(self, backlog: int, catalog: int) -> None:
        """Start a round when the backlog is a large share of the catalog (and at least the minimum)."""
        if self.worth_counting(backlog) and backlog >= self.backlog_share * catalog:
            self.active, self.held = True, 0

    def take(self, records: Sequence[RawRecord], backlog: int, batch_size: int) -> tuple[list[RawRecord], bool]:
        """Add a taken batch to the round: returns the records to write now (a full step, or the
        rest when the round ends) and whether the round ends with this batch (every list is then
        requested, and the round's offsets released)."""
        self.pending += records
        ends = self._ends_with(len(records), backlog, batch_size)
        if ends or len(self.pending) >= WRITE_BATCH:
            step, self.pending = self.pending, []
            return step, ends
        return [], ends

    def _ends_with(self, events: int, backlog: int, batch_size: int) -> bool:
        self.held += events
        if backlog <= batch_size or self.held >= self.max_held:
            self.active = False
            self.rounds += 1
            return True
        return False
