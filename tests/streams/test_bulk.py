"""When a worker's ingest enters and leaves a bulk round (streams/bulk.py), without Kafka."""

from __future__ import annotations

from simstream.streams import bulk
from simstream.streams.bulk import BulkRound
from simstream.streams.dead_letter import RawRecord


def taken(n: int, start: int = 0) -> list[RawRecord]:
    return [RawRecord(b"k", b"v", 0, start + i) for i in range(n)]


def test_a_round_starts_only_above_the_minimum_and_the_share_of_the_catalog() -> None:
    r = BulkRound(min_backlog=100, backlog_share=0.25)
    assert not r.worth_counting(99)
    r.start_if(150, catalog=1000)  # 150 < 0.25 x 1000
    assert not r.active
    r.start_if(300, catalog=1000)
    assert r.active and not r.worth_counting(10_000)  # already in a round
    assert not BulkRound(min_backlog=0, backlog_share=0.0).worth_counting(10**9)  # 0: never


def test_batches_are_gathered_into_write_steps_and_the_rest_goes_when_the_round_ends(monkeypatch) -> None:
    monkeypatch.setattr(bulk, "WRITE_BATCH", 5)
    r = BulkRound(min_backlog=1, backlog_share=0.0)
    r.start_if(100, catalog=0)
    assert r.take(taken(3), backlog=90, batch_size=3) == ([], False)
    step, ends = r.take(taken(3, 3), backlog=80, batch_size=3)
    assert [x.offset for x in step] == [0, 1, 2, 3, 4, 5] and not ends
    step, ends = r.take(taken(2, 6), backlog=2, batch_size=3)  # caught up: the rest, and the end
    assert [x.offset for x in step] == [6, 7] and ends and not r.active and r.rounds == 1 and r.held == 8


def test_a_round_ends_after_the_most_events_it_may_hold() -> None:
    r = BulkRound(min_backlog=1, backlog_share=0.0, max_held=4)
    r.start_if(100, catalog=0)
    assert r.take(taken(3), backlog=90, batch_size=3)[1] is False
    step, ends = r.take(taken(1, 3), backlog=90, batch_size=3)
    assert ends and len(step) == 4
