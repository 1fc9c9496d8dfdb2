"""The fence: who may publish, from a view of the control record at most CONTROL_POLL_S old."""

import asyncio

import pytest

from simstream.errors import IndexUnavailable
from simstream.generations import ControlRecord, Migration
from simstream.streams.fence import Fence, fence_wait_s
from simstream.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _run(name, fn, *args):  # StepRunner's shape, inline
    return fn(*args)


def _fence(records, tag, role="live", clock=None, reassigned=None):
    reads = []

    def read():
        reads.append(1)
        value = records[0]
        if isinstance(value, Exception):
            raise value
        return value
    return Fence(read, tag, role=role, clock=clock or Clock(), on_reassigned=reassigned), reads


def test_without_a_record_only_the_first_generation_publishes():
    first, _ = _fence([None], "")
    shadow, _ = _fence([None], "g1", role="standby")
    assert asyncio.run(first.allows(_run)) is True
    assert asyncio.run(shadow.allows(_run)) is False


def test_a_fresh_view_is_used_and_a_stale_one_read_again():
    clock = Clock()
    records = [ControlRecord(1, "", "g1", "")]
    fence, reads = _fence(records, "", clock=clock)
    assert asyncio.run(fence.allows(_run)) and len(reads) == 1
    records[0] = records[0].changed(publishing=None)  # a switch starts fencing
    clock.now += 0.5
    assert asyncio.run(fence.allows(_run)) and len(reads) == 1  # still fresh: the switch waits this out
    clock.now += 0.6
    assert asyncio.run(fence.allows(_run)) is False and len(reads) == 2


def test_a_record_that_cannot_be_read_stops_the_batch_instead_of_guessing():
    fence, _ = _fence([IndexUnavailable("down")], "")
    with pytest.raises(IndexUnavailable):
        asyncio.run(fence.allows(_run))


def test_a_worker_whose_role_moves_to_another_generation_is_told_once_and_still_follows_the_record():
    told = []
    records = [ControlRecord(1, "", "g1", "")]
    clock = Clock()
    fence, _ = _fence(records, "g1", role="standby", clock=clock, reassigned=told.append)
    fence.refresh()
    assert told == [] and not fence.may_publish_now()
    records[0] = ControlRecord(5, "g1", "", "g1", migration=Migration("", "g1", "republishing"))
    fence.refresh()
    fence.refresh()
    assert told == [""]  # the standby role now runs the first generation; said once
    assert fence.may_publish_now()  # its generation publishes now, until it hands its partitions over


def test_the_switch_waits_for_a_view_to_go_stale_and_a_send_to_end():
    assert fence_wait_s(Settings(kafka_timeout_s=30)) == pytest.approx(32.0)


def test_the_workers_gauges_follow_the_record_they_read():
    from simstream.streams import metrics

    record = ControlRecord(4, "", "g1", "", migration=Migration("", "g1", "catching_up",
                                                               progress={"filled": 50, "total": 80, "lag": 7}))
    fence, _ = _fence([record], "g1", role="standby")
    fence.refresh()
    value = metrics.REGISTRY.get_sample_value
    assert value("simstream_generation", {"role": "standby", "generation": "g1", "publishing": "false"}) == 1
    assert value("simstream_migration_phase") == 1
    assert value("simstream_migration_products", {"state": "filled"}) == 50
    assert value("simstream_migration_lag_events") == 7
    assert value("simstream_migration_gate_passed") == -1
