"""The exactness proof (bench/exactness.py) at a small size: one real worker, the real broker and
milvus-lite, a random stream with creates, far updates, deletes, re-creates, duplicates and
out-of-order versions; the neighbour topic must equal an exact numpy top-K."""

from __future__ import annotations

import pytest

from simstream.harness.exactness import Options, oracle_lists, run_exactness
from simstream.harness.synthetic import generate_stream


def test_stream_has_every_kind_of_event() -> None:
    s = generate_stream(60, 300, seed=3)
    assert len(s.final) == 60 and len(s.events) >= 300
    for kind in ("create", "update_far", "delete", "recreate", "duplicate", "stale", "stale_after_delete",
                 "out_of_order_late"):
        assert s.kinds.get(kind, 0) > 0, kind
    # The final state is the highest version per product, whatever the arrival order.
    for pid, doc in s.final.items():
        assert doc["version"] == max(e["version"] for e in s.events if e["product_id"] == pid)


def test_oracle_breaks_ties_by_product_id() -> None:
    import numpy as np

    v = np.array([1.0, 0.0], np.float32)
    w = np.array([0.0, 1.0], np.float32)
    got = oracle_lists({"a": v, "c": v, "b": v, "d": w}, k=2)
    assert [pid for pid, _ in got["a"]] == ["b", "c"]
    assert [pid for pid, _ in got["d"]][0] == "a"


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_neighbour_topic_equals_exact_oracle(tmp_path) -> None:
    report = run_exactness(Options(products=60, events=300, workers=1, kills=0, seed=11, quiet_s=8.0,
                                   timeout_s=360.0, data_dir=tmp_path / "run", log=lambda _: None))
    assert report["lost"] == 0, report["details"]
    assert report["resurrected"] == 0, report["details"]
    assert report["equal_share"] == 1.0, report["details"]
    # the default model has a match decision: every entry's probability was checked against the oracle's
    assert report["match_decision"] is not None


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_the_topic_is_exact_under_the_l2_metric(tmp_path) -> None:
    """SIMSTREAM_METRIC=l2 through the real worker: every list equals the l2 oracle's, and the metric
    decides lists (some differ from inner product's), with a worker killed once."""
    report = run_exactness(Options(products=60, events=300, workers=1, kills=1, seed=12, quiet_s=8.0, metric="l2",
                                   timeout_s=360.0, data_dir=tmp_path / "run", log=lambda _: None))
    assert report["metric"] == "l2" and report["match_decision"] is None  # the decision is fitted for ip
    assert report["lost"] == 0 and report["resurrected"] == 0, report["details"]
    assert report["equal_share"] == 1.0, report["details"]
    assert report["details"]["lists_other_than_ip"] > 0


def test_the_oracle_checks_every_entry_match_probability() -> None:
    """``Decision.agrees``: the probabilities a worker computes pass; one off by more than a unit of
    the last decimal, or one missing, fails the list."""
    import dataclasses

    import numpy as np

    from simstream.harness.exactness import Decision
    from simstream.index.neighbours import contributions
    from simstream.match import MatchModel
    from simstream.records import Neighbour, NeighbourList

    rng = np.random.default_rng(2)
    vecs = {f"p{i}": v / np.linalg.norm(v) for i, v in enumerate(rng.normal(size=(12, 8)).astype(np.float32))}
    vecs["p3"][4:] = 0  # field "b" missing on one neighbour
    layout, weights = {"a": slice(0, 4), "b": slice(4, 8)}, {"a": 0.7, "b": 0.3}
    match = MatchModel(("a", "b"), (4.0, 2.0, -1.0, -0.5), -0.5, 0.5)
    others = sorted((q for q in vecs if q != "p0"), key=lambda q: -float(vecs[q] @ vecs["p0"]))
    fields = contributions(vecs["p0"], [vecs[q] for q in others], layout)  # as the worker computes them
    nl = NeighbourList("p0", 1, [Neighbour(q, round(float(vecs[q] @ vecs["p0"]), 6), f, p) for q, f, p in
                                 zip(others, fields, match.of_entries(fields, weights))], "m", 0, None)
    stored = {pid: (1, v) for pid, v in vecs.items()}
    decision = Decision(match, weights, layout)
    assert decision.agrees(nl, stored)
    first = nl.neighbours[0]
    off = dataclasses.replace(first, match_probability=first.match_probability + 0.01)
    assert not decision.agrees(NeighbourList(nl.product_id, nl.version, [off, *nl.neighbours[1:]], "m", 0, None), stored)
    bare = dataclasses.replace(first, match_probability=None)
    assert not decision.agrees(NeighbourList(nl.product_id, nl.version, [bare, *nl.neighbours[1:]], "m", 0, None), stored)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_outages_during_the_stream_lose_nothing(tmp_path) -> None:
    """A frozen Milvus server, a crashed and restarted one, and a frozen broker while events flow:
    afterwards every product is applied once and every list equals the oracle (docs/reliability.md
    records the full-size runs)."""
    report = run_exactness(Options(products=60, events=300, workers=1, seed=13, quiet_s=8.0, timeout_s=540.0,
                                   faults=[("milvus-pause", 15.0), ("milvus-crash", 10.0), ("broker-pause", 15.0)],
                                   data_dir=tmp_path / "run", log=lambda _: None))
    assert report["faults"] == ["milvus-pause:15", "milvus-crash:10", "broker-pause:15"]
    assert report["lost"] == 0 and report["resurrected"] == 0, report["details"]
    assert report["equal_share"] == 1.0, report["details"]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_bulk_load_killed_midway_loses_nothing(tmp_path) -> None:
    """Chunks of the stream arrive as backlogs the worker loads on the bulk path (no affected sets,
    offsets held), then refreshes every list; a SIGKILL lands 1-8 s into a chunk (inside a round or
    in the pass after it; test_data_path.py has the deterministic crash inside a round). Afterwards
    every list equals the oracle (streams/bulk.py says why a kill cannot lose one)."""
    report = run_exactness(Options(products=80, events=400, workers=1, kills=1, seed=17, quiet_s=8.0,
                                   timeout_s=540.0, bulk_min_backlog=40, data_dir=tmp_path / "run",
                                   log=lambda _: None))
    assert report["bulk_rounds"] >= 1 and report["every_list_passes"] >= 1, report
    assert report["lost"] == 0 and report["resurrected"] == 0, report["details"]
    assert report["equal_share"] == 1.0, report["details"]
