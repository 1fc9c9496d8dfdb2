"""Concurrent requests' work done together: one encoder call for many queries, one pass over the
catalog for many rankings.

An exact scan reads every packed row once per pass whatever the number of queries in it (at 100k,
1 query 42 ms, 64 queries 164 ms: bench/results/scan-100k-issue21.json), and a text model encodes
a batch of short texts in little more than one. So requests arriving while a pass runs wait for it
and then go together in the next one: no timer, no extra thread (the first waiter to get the
turn runs everything queued, its own item included, and hands each caller its answer).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

__all__ = ["MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """``run(items)`` answers a list of items with a list of results (or exceptions, per item);
    ``__call__`` answers one item, batched with whatever other threads asked meanwhile."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R | BaseException]], max_items: int) -> None:
        self._run = run
        self.max_items = max_items
        self._queue: list[tuple[T, Future[R]]] = []
        self._changed = threading.Condition()  # guards the queue and ``_leading``
        self._leading = False  # whether a caller is running a batch
        self.batches = 0  # batches run, and items in them: how well requests were batched
        self.items = 0

    def __call__(self, item: T) -> R:
        done: Future[R] = Future()
        with self._changed:
            self._queue.append((item, done))
        while not done.done():
            with self._changed:
                while self._leading and not done.done():
                    self._changed.wait()
                if done.done():
                    break
                self._leading = True  # this caller runs everything queued meanwhile, its own item too
                batch, self._queue = self._queue[: self.max_items], self._queue[self.max_items:]
            try:
                self._answer(batch)
            finally:
                with self._changed:
                    self._leading = False
                    self._changed.notify_all()
        return done.result()

    def _answer(self, batch: list[tuple[T, Future[R]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
        except BaseException as exc:  # the whole batch failed: every caller gets the error
            for _, done in batch:
                done.set_exception(exc)
            return
        for (_, done), result in zip(batch, results):
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)
