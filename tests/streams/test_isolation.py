"""The isolation rules on plain callables: outages are waited out, poison records are narrowed
down to the one that fails alone, and nothing else is dead-lettered."""

from __future__ import annotations

import asyncio
from typing import Sequence

import pytest

from simstream.errors import BadEvent, IndexUnavailable
from simstream import retry
from simstream.streams.isolation import apply_or_dead_letter, until_applied

FAST = retry.Backoff(first_s=0.01, max_s=0.05)


class Catalog:
    """A stand-in for the data path: applies records, fails on poison ones."""

    def __init__(self, poison: set[int], down_for: int = 0) -> None:
        self.poison, self.down_for = poison, down_for
        self.applied: list[int] = []
        self.calls = 0

    async def apply(self, records: Sequence[int]) -> None:
        self.calls += 1
        if self.down_for > 0:
            self.down_for -= 1
            raise IndexUnavailable("milvus: deadline exceeded")
        if bad := self.poison & set(records):
            raise ValueError(f"cannot apply {sorted(bad)}")
        self.applied += records


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


@pytest.mark.parametrize("poison", [set(), {0}, {63}, {5, 6}, {1, 17, 40, 41, 42}, set(range(64))])
def test_every_record_ends_applied_or_dead_lettered_alone(poison: set[int]) -> None:
    catalog = Catalog(poison)
    letters: list[tuple[int, str, int]] = []

    async def dead_letter(record: int, exc: Exception, attempts: int) -> None:
        letters.append((record, type(exc).__name__, attempts))

    n = run(apply_or_dead_letter(list(range(64)), catalog.apply, dead_letter))
    assert sorted(r for r, _, _ in letters) == sorted(poison) and n == len(poison)
    assert sorted(catalog.applied) == sorted(set(range(64)) - poison)
    assert all(kind == "ValueError" and attempts == 7 for _, kind, attempts in letters)  # 64 -> 32 -> ... -> 1
    # bisection, not one call per record: about 2 log2(64) calls per poison record
    assert catalog.calls <= 1 + len(poison) * 2 * 6 + 2


def test_an_outage_is_waited_out_and_dead_letters_nothing() -> None:
    catalog = Catalog(set(), down_for=4)
    answers = iter([False, False, False, True])

    async def answering() -> bool:
        return next(answers)

    run(until_applied(catalog.apply, [1, 2, 3], answering=answering, poison_after_s=60, policy=FAST))
    assert catalog.applied == [1, 2, 3] and catalog.calls == 5


def test_a_transient_error_that_lasts_while_everything_answers_is_a_records_fault() -> None:
    calls = 0

    async def always_times_out(records: Sequence[int]) -> None:
        nonlocal calls
        calls += 1
        raise IndexUnavailable("milvus: deadline exceeded on this record's query")

    async def answering() -> bool:
        return True

    with pytest.raises(IndexUnavailable):
        run(until_applied(always_times_out, [7], answering=answering, poison_after_s=0.05, policy=FAST))
    assert calls >= 2  # retried first: a blip is not poison


def test_a_non_transient_error_is_raised_at_once() -> None:
    calls = 0

    async def bad(records: Sequence[int]) -> None:
        nonlocal calls
        calls += 1
        raise BadEvent("broken")

    async def answering() -> bool:
        raise AssertionError("not asked: the error is not transient")

    with pytest.raises(BadEvent):
        run(until_applied(bad, [1], answering=answering, poison_after_s=60))
    assert calls == 1
