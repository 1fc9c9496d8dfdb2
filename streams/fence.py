"""The fence: a generation publishes lists only while the control record says it may.

Every list goes out through ``publish_refreshed`` (streams/pipeline.py), which asks the fence first.
The fence answers from the control record (simstream.generations) as read at most
``CONTROL_POLL_S`` ago, and reads it again (on the index thread) when it is older, so:

- a generation that may not publish (a shadow being built, the old one after a switch, kept for
  rollback) still *records* its lists: its index stays current, and a switch republishes them all;
- after ``simstream migrate`` takes the right away at time T, no send of the old generation starts
  after T + ``CONTROL_POLL_S``, and each one started before ends (acknowledged or failed) within
  the send deadline ``SIMSTREAM_KAFKA_TIMEOUT_S`` (the producers' own request timeout is the same);
  the switch waits that long before the new generation publishes (``fence_wait_s``). A worker that
  restarts reads the record before its first send;
- a fence that cannot read the record does not guess: it raises ``IndexUnavailable`` and the batch
  waits, as for any Milvus outage.

What this does not cover (docs/operations.md argues it): a process frozen (SIGSTOP, a VM pause)
between its check and its send for longer than the wait. Only broker-side fencing (Kafka
transactions) closes that, which the embedded broker does not have.

The fence also notices when the record moves the worker's role to another generation (a switch or a
new shadow) and calls ``on_reassigned`` once: the worker then stops, and its supervisor starts it
again on the generation it now runs.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from simstream.generations import CONTROL_POLL_S, ControlRecord, Role
from simstream.logs import get_logger
from simstream.settings import Settings
from simstream.streams import metrics

__all__ = ["Fence", "fence_wait_s"]

log = get_logger(__name__)


def fence_wait_s(settings: Settings) -> float:
    """How long after taking the right to publish away no send of the old generation can land."""
    return CONTROL_POLL_S + settings.kafka_timeout_s + 1.0


Run = Callable[..., Awaitable[Any]]  # StepRunner.__call__: (name, fn, *args)


class Fence:
    """May generation ``tag`` publish now? ``read`` returns the control record (None: none yet,
    the first generation publishes)."""

    def __init__(self, read: Callable[[], ControlRecord | None], tag: str, *, role: Role = "live",
                 on_reassigned: Callable[[str | None], None] | None = None, poll_s: float = CONTROL_POLL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read, self.tag, self.role = read, tag, role
        self.on_reassigned = on_reassigned
        self.poll_s, self.clock = poll_s, clock
        self.record: ControlRecord | None = None
        self.read_at = float("-inf")  # when the read that gave ``record`` started
        self.reassigned = False

    @property
    def fresh(self) -> bool:
        return self.clock() - self.read_at <= self.poll_s

    def refresh(self) -> ControlRecord | None:
        """Read the record now (blocking: on the index thread); IndexUnavailable when Milvus does not answer."""
        started = self.clock()
        record = self.read()
        self.record, self.read_at = record, started
        metrics.observe_control(record, self.tag, self.role)
        runs = record.runs(self.role) if record is not None else (self.tag if self.role == "live" else None)
        if runs != self.tag and not self.reassigned:
            self.reassigned = True
            log.warning("this worker's generation changed; stopping so that it restarts on the new one",
                        role=self.role, ran=self.tag, runs=runs, epoch=record.epoch if record else None)
            if self.on_reassigned is not None:
                self.on_reassigned(runs)
        return record

    def may_publish_now(self) -> bool:
        """The answer from the record in hand (the caller made sure it is fresh). It is about the
        generation, not the role: a worker stopping because its role moved on still publishes while
        its generation holds the right (the partitions it owns are nobody else's until it leaves)."""
        record = self.record
        return record.may_publish(self.tag) if record is not None else self.tag == ""

    async def allows(self, run: Run) -> bool:
        """Whether this generation may publish now; reads the record first when it is not fresh."""
        if not self.fresh:
            await run("control", self.refresh)
        return self.may_publish_now()
