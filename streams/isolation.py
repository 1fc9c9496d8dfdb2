"""No record can stop a partition: apply a batch, wait out outages, narrow failures down.

Three outcomes for every record, nothing else: applied, dead-lettered by a step (bad contract,
undecodable image, ...), or dead-lettered here because it fails alone. The rules:

- A failure that is *transient* (Milvus or Kafka did not answer in time) while either of them does
  not answer is an outage: retry with jittered backoff for as long as it lasts; nothing is
  dead-lettered for it and no offset moves.
- Any other failure, or a transient one that goes on for ``poison_after_s`` while both answer, is
  a record's fault: split the batch in halves and apply each, down to the record that fails alone.

Re-applying a part is harmless: writes are idempotent and versions turn replays into no-ops.
Plain asyncio over callables, so the rules are unit-tested without a broker.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Sequence, TypeVar

from simstream import retry
from simstream.errors import IndexUnavailable, KafkaUnavailable
from simstream.logs import get_logger

__all__ = ["TRANSIENT", "until_applied", "apply_or_dead_letter"]

log = get_logger(__name__)
R = TypeVar("R")

TRANSIENT: tuple[type[Exception], ...] = (IndexUnavailable, KafkaUnavailable)


async def until_applied(process: Callable[[Sequence[R]], Awaitable[None]], records: Sequence[R], *,
                        answering: Callable[[], Awaitable[bool]], poison_after_s: float, stage: str = "batch",
                        policy: retry.Backoff = retry.OUTAGE) -> None:
    """Run ``process(records)``; retry transient failures (``policy``, the outage wait) while the
    dependencies do not answer. Raise a non-transient failure at once, and a transient one that
    lasts ``poison_after_s`` while ``answering()`` says both Milvus and Kafka answer."""
    answering_since: float | None = None
    give_up = False

    async def attempt() -> None:
        nonlocal answering_since, give_up
        try:
            await process(records)
        except TRANSIENT:
            if await answering():
                answering_since = answering_since or time.monotonic()
                give_up = time.monotonic() - answering_since >= poison_after_s
            else:
                answering_since = None
            raise

    await retry.call_async(policy.with_attempts(None), f"outage_{stage.replace('-', '_')}", attempt,
                           retry_on=lambda exc: isinstance(exc, TRANSIENT) and not give_up)


async def apply_or_dead_letter(records: Sequence[R], apply: Callable[[Sequence[R]], Awaitable[None]],
                               dead_letter: Callable[[R, Exception, int], Awaitable[None]], *,
                               attempt: int = 1) -> int:
    """``apply(records)``; on failure apply each half in turn, down to single records; a record
    that fails alone goes to ``dead_letter(record, error, attempts)``. Returns how many did."""
    try:
        await apply(records)
        return 0
    except Exception as exc:
        if len(records) <= 1:
            for record in records:
                await dead_letter(record, exc, attempt)
            return len(records)
        log.warning("batch failed; narrowing it down", records=len(records), error=repr(exc)[:300])
    mid = len(records) // 2
    return (await apply_or_dead_letter(records[:mid], apply, dead_letter, attempt=attempt + 1)
            + await apply_or_dead_letter(records[mid:], apply, dead_letter, attempt=attempt + 1))
