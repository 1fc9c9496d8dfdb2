"""The one retry policy: jittered exponential backoff within attempts and a deadline, Retry-After
honoured, the last failure raised as it is, one metric labelled (operation, error)."""

from __future__ import annotations

import asyncio

import pytest

from simstream import retry
from simstream.errors import IndexUnavailable


class Flaky:
    def __init__(self, fails: int, exc: BaseException) -> None:
        self.fails, self.exc, self.calls = fails, exc, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.fails:
            raise self.exc
        return "ok"


def count(operation: str, error: str) -> float:
    return retry.RETRIES.labels(operation, error)._value.get()


def test_delays_double_with_jitter_up_to_the_cap() -> None:
    b = retry.Backoff(first_s=1.0, max_s=4.0)
    for n, base in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0), (5_000, 4.0)]:  # an outage of hours: no overflow
        delays = [b.delay(n) for _ in range(50)]
        assert all(0.5 * base <= d <= 1.5 * base for d in delays)
        assert max(delays) - min(delays) > 0.25 * base  # jittered: workers do not retry in step
    assert b.delay(1, retry_after_s=7.0) == 7.0  # a server's Retry-After is a floor


def test_retries_until_success_and_counts_each_retry() -> None:
    waits: list[float] = []
    before = count("t_ok", "IndexUnavailable")
    fn = Flaky(2, IndexUnavailable("blip"))
    assert retry.call(retry.Backoff(0.1, 1.0, attempts=5), "t_ok", fn, retry_on=(IndexUnavailable,),
                      sleep=waits.append) == "ok"
    assert fn.calls == 3 and len(waits) == 2 and count("t_ok", "IndexUnavailable") - before == 2


def test_gives_up_after_its_attempts_with_the_original_error() -> None:
    fn = Flaky(10, IndexUnavailable("down"))
    with pytest.raises(IndexUnavailable, match="down"):
        retry.call(retry.Backoff(0.1, 1.0, attempts=3), "t_attempts", fn, retry_on=(IndexUnavailable,),
                   sleep=lambda s: None)
    assert fn.calls == 3


def test_other_errors_are_not_retried() -> None:
    fn = Flaky(1, ValueError("bad record"))
    with pytest.raises(ValueError):
        retry.call(retry.Backoff(0.1, 1.0, attempts=3), "t_other", fn, retry_on=(IndexUnavailable,),
                   sleep=lambda s: None)
    assert fn.calls == 1


def test_never_waits_past_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(retry.time, "monotonic", lambda: clock[0])
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    fn = Flaky(10, IndexUnavailable("slow"))
    with pytest.raises(IndexUnavailable):
        retry.call(retry.Backoff(1.0, 1.0, deadline_s=2.5), "t_deadline", fn, retry_on=(IndexUnavailable,),
                   sleep=sleep)
    assert 0 < sum(waits) < 2.5 and fn.calls == len(waits) + 1


def test_the_async_form_follows_the_same_policy() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise IndexUnavailable("blip")
        return "ok"

    assert asyncio.run(retry.call_async(retry.Backoff(0.01, 0.02, attempts=3), "t_async", flaky,
                                        retry_on=(IndexUnavailable,))) == "ok"
    assert len(calls) == 3
