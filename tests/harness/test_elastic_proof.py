"""The elastic proof (bench/exactness.py --elastic) at CI size: under a steady stream, two workers
join (downloading the first one's snapshot), one is SIGKILLed and restarted, all three restart
one by one (a rolling update), two leave with SIGTERM; afterwards every list is exact, nothing lost
or resurrected, every event answered."""

from __future__ import annotations

import os

import pytest

from simstream.harness.elastic import passed, run_elastic
from simstream.harness.exactness import Options


@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_workers_join_and_leave_under_load_and_every_list_ends_exact(tmp_path) -> None:
    opts = Options(products=80, events=480, seed=23, quiet_s=8.0, timeout_s=1100.0, data_dir=tmp_path / "run",
                   log=print, milvus_uri=os.environ.get("SIMSTREAM_TEST_MILVUS_URI"))
    report = run_elastic(opts, rate=4.0)
    e = report["elastic"]
    assert report["lost"] == 0 and report["resurrected"] == 0, report
    assert report["equal"] == report["products"], report
    assert e["unanswered_events"] == 0 and e["measured_events"] > 0, e
    assert set(e["windows"]) == {"scale_out", "sigkill", "rolling", "scale_in"}, e
    assert e["killed_after_grace"] == [], e  # each drained within terminationGracePeriodSeconds
    assert len(e["drain_s"]) == 5, e  # three rolling restarts and two leavers, each exited after SIGTERM
    joins = [j["event"] for j in e["joins"]]
    assert "snapshot downloaded from a peer" in joins, e["joins"]  # the joiners took worker 0's snapshot
    assert joins.count("copies restored from a snapshot") >= 2, e["joins"]
    assert passed(report)


def test_freshness_is_the_first_message_that_reflects_an_event() -> None:
    from simstream.harness.elastic import freshness_of

    arrivals = {"a": [(1.0, 1), (5.0, 2), (9.0, None), (12.0, 4)], "b": [(3.0, None)]}
    sent = [("a", 2, "upsert", 2.0, False),   # v1 at 1.0 is older; v2 at 5.0
            ("a", 3, "upsert", 6.0, True),    # superseded by a delete: the tombstone at 9.0
            ("a", 3, "delete", 8.0, False),   # the tombstone at 9.0
            ("a", 4, "upsert", 10.0, False),  # v4 at 12.0
            ("b", 7, "upsert", 2.5, False),   # never answered: a tombstone does not answer an upsert
            ("a", 5, "upsert", 13.0, False)]  # nothing after it
    assert freshness_of(sent, arrivals) == [(2.0, 3.0), (6.0, 3.0), (8.0, 1.0), (10.0, 2.0), (2.5, None), (13.0, None)]
