"""One retry policy for every retry simstream makes, built on tenacity.

A ``Backoff`` says how long to wait: jittered exponential (``first_s``, doubling up to ``max_s``,
each wait times a uniform 0.5-1.5), at most ``attempts`` tries, and never a wait that would pass
``deadline_s``. An exception with a ``retry_after_s`` attribute (an HTTP 429/503 ``Retry-After``)
waits at least that long. Every retry counts once in ``simstream_retries{operation, error}`` and
logs one line.

Its uses, each named where it is configured:

- ``INDEX_BLIP``: a Milvus call that failed transiently is tried again in place a few times
  (``streams/pipeline.py`` ``StepRunner``);
- ``OUTAGE``: a batch whose dependencies stopped answering is retried for as long as the outage
  lasts (``streams/isolation.py`` ``until_applied``: the decision to stop is its own);
- ``MILVUS_START``: the worker waits for a Milvus that is down or starting (``streams/runtime.py``);
- ``IMAGE_FETCH``: a 429/5xx/timeout of an image fetch, within the fetch's one deadline
  (``encoders/image_source.py``);
- ``QUEUE_FULL``: the Kafka producer's local queue is full (backpressure, not a failure: counted,
  logged at debug), so its delivery reports are served while waiting, up to the send deadline
  (``streams/transports.py``).

``operation`` labels are snake_case: a step name, ``outage_<stage>``, ``milvus_connect``,
``image_fetch``, ``produce_queue_full``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, TypeVar

import tenacity
from prometheus_client import Counter

from simstream.logs import get_logger
from simstream.redact import redact

__all__ = ["Backoff", "INDEX_BLIP", "OUTAGE", "MILVUS_START", "IMAGE_FETCH", "QUEUE_FULL", "RETRIES", "call", "call_async"]

log = get_logger(__name__)
T = TypeVar("T")

#: Not in a registry of its own: the worker's and serve's /metrics register it (streams/metrics.py).
RETRIES = Counter("simstream_retries", "Retries after a transient failure, by operation and error class.",
                  ["operation", "error"], registry=None)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How to wait between tries (see the module docstring)."""

    first_s: float
    max_s: float
    attempts: int | None = None  # tries in all; None: until the caller's condition stops it
    deadline_s: float | None = None  # from the first try; None: no deadline
    quiet: bool = False  # backpressure rather than a failure: each retry logs at debug, not warning

    def delay(self, retry_number: int, retry_after_s: float | None = None) -> float:
        """The wait before retry ``retry_number`` (1 = the first retry)."""
        doubled = self.first_s * 2.0 ** min(retry_number - 1, 64)  # capped: an outage of hours overflows no float
        base = min(doubled, self.max_s) * random.uniform(0.5, 1.5)
        return max(base, retry_after_s or 0.0)

    def with_attempts(self, attempts: int | None) -> "Backoff":
        return replace(self, attempts=attempts)

    def with_deadline(self, deadline_s: float | None) -> "Backoff":
        return replace(self, deadline_s=deadline_s)


INDEX_BLIP = Backoff(first_s=0.2, max_s=5.0, attempts=6)  # attempts: SIMSTREAM_MAX_RETRIES + 1
OUTAGE = Backoff(first_s=0.5, max_s=30.0)
MILVUS_START = Backoff(first_s=1.0, max_s=30.0)
IMAGE_FETCH = Backoff(first_s=0.2, max_s=2.0, attempts=3)  # deadline: SIMSTREAM_IMAGE_FETCH_TIMEOUT_S
QUEUE_FULL = Backoff(first_s=0.05, max_s=0.5, quiet=True)  # deadline: SIMSTREAM_KAFKA_TIMEOUT_S


def _retry_after(exc: BaseException | None) -> float | None:
    value = getattr(exc, "retry_after_s", None)
    return float(value) if isinstance(value, (int, float)) else None


def _tenacity_kwargs(policy: Backoff, operation: str, should_retry: Callable[[BaseException], bool],
                     on_retry: Callable[[BaseException], None] | None) -> dict[str, Any]:
    started = time.monotonic()
    waits: dict[int, float] = {}

    def wait(state: tenacity.RetryCallState) -> float:
        n = state.attempt_number
        if n not in waits:
            exc = state.outcome.exception() if state.outcome else None
            waits[n] = policy.delay(n, _retry_after(exc))
        return waits[n]

    def stop(state: tenacity.RetryCallState) -> bool:
        if policy.attempts is not None and state.attempt_number >= policy.attempts:
            return True
        return policy.deadline_s is not None and time.monotonic() + wait(state) >= started + policy.deadline_s

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        RETRIES.labels(operation, type(exc).__name__).inc()
        if on_retry is not None and exc is not None:
            on_retry(exc)
        (log.debug if policy.quiet else log.warning)(
            "retrying after a transient failure", operation=operation, attempt=state.attempt_number,
            error=redact(str(exc))[:300], retry_in_s=round(wait(state), 2))

    return dict(wait=wait, stop=stop, before_sleep=before_sleep, reraise=True,
                retry=tenacity.retry_if_exception(should_retry))


def _predicate(retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool]) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, tuple):
        return lambda exc: isinstance(exc, retry_on)
    return retry_on


def call(policy: Backoff, operation: str, fn: Callable[..., T], *args: Any,
         retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool],
         on_retry: Callable[[BaseException], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn(*args)``, retried under ``policy`` while it raises what ``retry_on`` names; the last
    failure is raised as it is."""
    retrying = tenacity.Retrying(sleep=sleep, **_tenacity_kwargs(policy, operation, _predicate(retry_on), on_retry))
    return retrying(fn, *args)


async def call_async(policy: Backoff, operation: str, fn: Callable[..., Awaitable[T]], *args: Any,
                     retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool],
                     on_retry: Callable[[BaseException], None] | None = None) -> T:
    """``await fn(*args)`` under ``policy``, as ``call``; waits with ``asyncio.sleep``."""
    retrying = tenacity.AsyncRetrying(**_tenacity_kwargs(policy, operation, _predicate(retry_on), on_retry))
    return await retrying(fn, *args)
