"""simstream.compute: torch work handed to one long-lived thread (one OpenMP team per process)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from simstream import compute


def test_calls_run_on_one_compute_thread_and_nested_calls_in_place() -> None:
    compute.configure(1)

    def where() -> tuple[str, str]:
        outer = threading.current_thread().name
        return outer, compute.run(lambda: threading.current_thread().name)  # in place: no deadlock

    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda _: compute.run(where), range(32)))
    assert {outer for outer, _ in seen} == {inner for _, inner in seen}
    assert len({outer for outer, _ in seen}) == 1 and seen[0][0].startswith(compute.THREAD_PREFIX)
    assert not compute.on_compute_thread()


def test_an_error_reaches_the_caller_and_configure_sets_the_thread_count() -> None:
    compute.configure(3)
    try:
        barrier = threading.Barrier(3, timeout=10)
        with ThreadPoolExecutor(3) as pool:  # three calls meet: three compute threads
            names = set(pool.map(lambda _: compute.run(lambda: (barrier.wait(), threading.current_thread().name)[1]),
                                 range(3)))
        assert len(names) == 3
        try:
            compute.run(lambda: 1 / 0)
        except ZeroDivisionError:
            pass
        else:
            raise AssertionError("the error did not reach the caller")
    finally:
        compute.configure(1)


def test_in_own_thread_runs_on_a_thread_that_has_ended_when_it_returns() -> None:
    seen: list[threading.Thread] = []

    def load(x: int) -> int:
        seen.append(threading.current_thread())
        return x * 2

    assert compute.in_own_thread(load, 21) == 42
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
    try:
        compute.in_own_thread(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("the error did not reach the caller")
