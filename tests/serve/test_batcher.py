"""MicroBatcher: concurrent callers' items answered together, each caller its own answer or error."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from simstream.serve.batcher import GATHER_SHARE, MicroBatcher


def test_concurrent_items_go_together_and_each_gets_its_own_answer() -> None:
    sizes: list[int] = []

    def run(items):
        sizes.append(len(items))
        time.sleep(0.05)  # a pass: callers arriving meanwhile queue for the next one
        return [ValueError(f"bad {x}") if x % 7 == 3 else x * 10 for x in items]

    batcher = MicroBatcher(run, max_items=8)

    def ask(x: int):
        try:
            return batcher(x)
        except ValueError as exc:
            return str(exc)

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(ask, range(64)))
    assert got == [f"bad {x}" if x % 7 == 3 else x * 10 for x in range(64)]
    assert sum(sizes) == 64 and max(sizes) <= 8 and len(sizes) < 32  # batched, within the cap
    assert batcher.batches == len(sizes) and batcher.items == 64
    assert 0.05 * len(sizes) <= batcher.run_s < 0.05 * len(sizes) + 5 and batcher.gathered_s >= 0


def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_runs() -> None:
    calls = 0
    gate = threading.Event()

    def run(items):
        nonlocal calls
        calls += 1
        if calls == 1:
            gate.wait(5)
            raise RuntimeError("pass failed")
        return list(items)

    batcher = MicroBatcher(run, max_items=100)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher, "a")
        time.sleep(0.1)
        later = [pool.submit(batcher, x) for x in "bcd"]
        time.sleep(0.1)
        gate.set()
        with pytest.raises(RuntimeError, match="pass failed"):
            first.result(5)
        assert [f.result(5) for f in later] == ["b", "c", "d"]
    assert calls == 2



def _recording(sizes: list[int], first_s: float, starts: list[float] | None = None):
    def run(items):
        sizes.append(len(items))
        if starts is not None:
            starts.append(time.monotonic())
        if len(sizes) == 1:
            time.sleep(first_s)  # a long pass: gathering before the next may last GATHER_SHARE of it
        return list(items)
    return run


def test_the_callers_a_pass_answered_are_gathered_into_the_next_batch() -> None:
    """Under a steady load the callers a pass answered ask again while the callers that queued
    meanwhile wait for their turn: the next batch waits for them, so the callers do not split
    into cohorts that never share a pass."""
    sizes: list[int] = []
    batcher = MicroBatcher(_recording(sizes, 1.0), max_items=64)
    with ThreadPoolExecutor(4) as pool:
        def client() -> list[str]:
            first = batcher("a")
            time.sleep(0.03)  # the answer travels, the client asks again
            return [first, batcher("a2")]
        looping = pool.submit(client)
        time.sleep(0.2)  # the first pass ("a" alone, 1 s) runs: three callers queue meanwhile
        queued = [pool.submit(batcher, x) for x in ("x1", "x2", "x3")]
        assert looping.result(5) == ["a", "a2"] and [f.result(5) for f in queued] == ["x1", "x2", "x3"]
    assert sizes == [1, 4]


def test_a_lone_caller_waits_for_nobody() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(_recording(sizes, 1.0), max_items=64)
    batcher("a")
    started = time.perf_counter()
    assert batcher("b") == "b"
    assert time.perf_counter() - started < 0.2  # not the share of the last pass (GATHER_SHARE x 1 s)
    assert sizes == [1, 1]


def test_gathering_waits_a_share_of_the_last_pass_at_most() -> None:
    """The caller the last pass answered does not come back: the queued ones go after
    ``GATHER_SHARE`` of that pass's duration."""
    sizes: list[int] = []
    starts: list[float] = []
    batcher = MicroBatcher(_recording(sizes, 1.0, starts), max_items=64)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher, "a")
        time.sleep(0.2)
        queued = [pool.submit(batcher, x) for x in ("x1", "x2")]
        assert first.result(5) == "a" and [f.result(5) for f in queued] == ["x1", "x2"]
    assert sizes == [1, 2]
    assert 1.0 + GATHER_SHARE - 0.05 <= starts[1] - starts[0] < 1.0 + GATHER_SHARE + 0.5  # the pass, then the share


def test_several_batches_run_at_once_when_allowed_and_never_more() -> None:
    """``max_batches`` 2: a caller arriving while a batch runs starts the next at once (both meet at
    a barrier: with one batch at a time the barrier would time out); under 32 threads each caller
    still gets its own answer and no more than ``max_batches`` run together."""
    meet = threading.Barrier(2, timeout=5)

    def run_meeting(items):
        meet.wait()
        return [x * 2 for x in items]

    batcher = MicroBatcher(run_meeting, max_items=8, max_batches=2)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher, 1)
        time.sleep(0.2)  # the first batch is at the barrier
        assert batcher(2) == 4 and first.result(timeout=5) == 2

    lock = threading.Lock()
    running, most = 0, 0

    def run(items):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return [x + 1000 for x in items]

    batcher = MicroBatcher(run, max_items=4, max_batches=3)
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(batcher, range(300)))
    assert got == [x + 1000 for x in range(300)]
    assert 1 < most <= 3 and batcher.items == 300


def test_one_batch_at_a_time_by_default() -> None:
    meet = threading.Barrier(2, timeout=0.5)

    def run(items):
        meet.wait()  # a second batch never comes while this one runs
        return items

    batcher = MicroBatcher(run, max_items=8)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher, 1)
        time.sleep(0.1)
        second = pool.submit(batcher, 2)
        with pytest.raises(threading.BrokenBarrierError):
            first.result(timeout=5)
        with pytest.raises(threading.BrokenBarrierError):
            second.result(timeout=5)


def test_a_copys_passes_run_on_the_compute_thread() -> None:
    """serve ranks (and encodes) on simstream.compute's thread, not in whichever request thread
    leads a batch: torch then keeps one OpenMP team (core/compute.py says why)."""
    import numpy as np

    from simstream import compute
    from simstream.index.rows import Display, ServedProduct
    from simstream.serve.copy import LiveQuery, ServedCopy
    from simstream.serve.filters import Filters

    copy = ServedCopy(4, None, 8)
    copy.apply([ServedProduct("a", 1, "Acme", "Home", 5.0, "m", 0, 0, Display(), vector=np.ones(4, np.float32))], ())
    seen: list[str] = []
    search = copy.side.search_filtered

    def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(threading.current_thread().name)
        return search(*args, **kwargs)

    copy.side.search_filtered = recorded  # type: ignore[method-assign]
    assert [pid for pid, *_ in copy.top_one(LiveQuery(np.ones(4, np.float32), Filters.build(), 5))] == ["a"]
    assert seen and seen[0].startswith(compute.THREAD_PREFIX)


@pytest.mark.parametrize("linked", [True, False])
def test_a_pass_waits_for_the_callers_still_in_the_stage_before_it(linked: bool) -> None:
    """Two stages (encode, then rank): callers that reach the second while others are still in the
    first wait for them (``upstream``), so two cohorts merge into one pass instead of alternating
    for good; without the link the pass goes with those that came."""
    passes: list[int] = []

    def encode(items):
        time.sleep(0.2)
        return list(items)

    def rank(items):
        passes.append(len(items))
        return list(items)

    first = MicroBatcher(encode, max_items=64)
    second = MicroBatcher(rank, max_items=64)
    first._last_run_s, first._last_size = 0.5, 3  # an encode of three takes about this long: how much longer a pass may wait
    second._last_run_s = 0.02  # a short last pass: its share alone would not cover an encode
    second._last_size = 3
    if linked:
        second.upstream = first
    with ThreadPoolExecutor(8) as pool:
        late = [pool.submit(lambda x: second(first(x)), f"late{i}") for i in range(3)]
        time.sleep(0.05)  # they are being encoded
        early = [pool.submit(second, f"early{i}") for i in range(3)]
        assert [f.result(5) for f in early + late] == [f"early{i}" for i in range(3)] + [f"late{i}" for i in range(3)]
    assert passes == [6] if linked else passes[0] == 3  # unlinked: the early three went alone
    assert first.in_flight == 0 and second.in_flight == 0
