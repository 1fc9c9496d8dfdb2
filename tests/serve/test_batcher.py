"""MicroBatcher: concurrent callers' items answered together, each caller its own answer or error."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from simstream.serve.batcher import MicroBatcher


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


def _slow_first(sizes: list[int], first_s: float):
    def run(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            time.sleep(first_s)  # a long pass: gathering before the next may last a share of it
        return list(items)
    return run


def test_callers_arriving_one_by_one_after_a_pass_are_gathered_into_one_batch() -> None:
    """Closed-loop clients answered by a pass ask again one by one: the next pass waits for them
    (each within the gap of the last), so passes do not split the clients into two cohorts."""
    sizes: list[int] = []
    batcher = MicroBatcher(_slow_first(sizes, 1.0), max_items=64, gather_gap_s=0.2)
    assert batcher("a") == "a"  # the long pass: the next gathering may last up to 0.25 s
    with ThreadPoolExecutor(4) as pool:
        asked = []
        for x in "bcd":
            asked.append(pool.submit(batcher, x))
            time.sleep(0.03)
        assert [f.result(5) for f in asked] == ["b", "c", "d"]
    assert sizes == [1, 3]


def test_a_lone_caller_waits_one_gap_at_most() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(_slow_first(sizes, 1.0), max_items=64, gather_gap_s=0.05)
    batcher("a")
    started = time.perf_counter()
    assert batcher("b") == "b"
    assert time.perf_counter() - started < 0.2  # one gap (0.05 s), not the whole share (0.25 s)
    assert sizes == [1, 1]
