"""Concurrent requests' work done together: one encoder call for many queries, one pass over the
catalog for many rankings (and, with ``max_batches`` > 1, several such batches at once).

An exact scan reads every packed row once per pass whatever the number of queries in it (at 100k,
1 query 42 ms, 64 queries 164 ms: bench/results/scan-100k-issue21.json), and a text model encodes
a batch of short texts in little more than one. So requests arriving while a pass runs wait for it
and then go together in the next one: no extra thread (the first waiter to get the turn runs
everything queued, its own item included, and hands each caller its answer).

Gathering. Under a steady load that alone splits the callers into cohorts that never meet: those
answered by a batch ask again while the next one runs, so they wait for the one after (over HTTP
at 100k, 32 clients: batches of 15 and 1 by turns, 72 rankings/s). So the caller whose turn it is
first waits for the callers the last batch answered, besides those that were already waiting when
it ended, for at most ``GATHER_SHARE`` of its duration (half) (the dynamic batchers of TensorFlow Serving
and Triton wait a fixed queue delay instead). A lone caller waits for nobody: it is the one the
last batch answered.

Stages. Where callers come from another batcher (``upstream``: serve's query encoder before its
passes), the callers still inside it are waited for too, for at most its last batch's time more.
Otherwise two cohorts, each through the encoder while the other is in a pass, stay split for good:
at 100k, ``POST /v1/similar`` with 32 clients ran in passes of ~15 at 133 req/s (p99 323 ms) or
in passes of 32 at ~195 (p99 188) by turns, a pass costing the same ~70 ms either way.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Generic, Sequence, TypeVar

__all__ = ["GATHER_SHARE", "UPSTREAM_POLL_S", "MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")

GATHER_SHARE = 0.5  # gathering lasts at most this share of the last pass
UPSTREAM_POLL_S = 0.002  # while callers are upstream, gathering looks at the queue this often


class MicroBatcher(Generic[T, R]):
    """``run(items)`` answers a list of items with a list of results (or exceptions, per item);
    ``__call__`` answers one item, batched with whatever other threads asked meanwhile."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R | BaseException]], max_items: int,
                 max_batches: int = 1, on: Callable[..., Any] | None = None) -> None:
        """``max_batches``: batches that may run at once (``run`` must then be thread-safe): each
        runs on its own core where ``run`` releases the GIL (serve's passes: SIMSTREAM_SERVE_PASSES).
        ``on(run, items)``: where a batch runs (serve: ``simstream.compute.run``, torch's thread);
        None: in the caller whose turn it is."""
        self._run = run
        self._on = on
        self.max_items = max_items
        self.max_batches = max(1, max_batches)
        self._queue: list[tuple[T, Future[R]]] = []
        lock = threading.Lock()
        self._changed = threading.Condition(lock)  # a batch ended: guards the queue and ``_leading``
        self._arrived = threading.Condition(lock)  # an item was queued (what gathering waits for)
        self._leading = 0  # callers running (or gathering for) a batch now
        self._last_run_s = 0.0  # how long the last batch took: bounds the gathering before the next
        self._last_size = 0  # items in the last batch: callers the next one waits for
        self._waiting_at_end = 0  # items queued when the last batch ended: waited for besides those
        self._running_items = 0  # items in the batches running now, until their answers are set
        self.upstream: MicroBatcher[Any, Any] | None = None  # whose callers come here next
        # how well requests were batched (serve's /metrics): batches run, the items in them, the
        # seconds they ran and the seconds their leaders waited to gather callers
        self.batches = 0
        self.items = 0
        self.run_s = 0.0
        self.gathered_s = 0.0

    def __call__(self, item: T) -> R:
        done: Future[R] = Future()
        with self._changed:
            self._queue.append((item, done))
            self._arrived.notify()
        while not done.done():
            with self._changed:
                # a turn: fewer batches running than allowed, and this item not taken by one of them
                while (self._leading >= self.max_batches or done.running()) and not done.done():
                    self._changed.wait()
                if done.done():
                    break
                self._leading += 1  # this caller runs everything queued meanwhile, its own item too
                self._gather()
                batch, self._queue = self._queue[: self.max_items], self._queue[self.max_items:]
                for _, taken in batch:
                    taken.set_running_or_notify_cancel()
                self._running_items += len(batch)
                if not batch:  # another batch took them all (its own item too) while this one gathered
                    self._leading -= 1
                    self._changed.notify_all()
                    continue
            try:
                self._answer(batch)
            finally:
                with self._changed:
                    self._running_items -= len(batch)  # answered (and woken): no longer coming downstream
                    self._waiting_at_end = len(self._queue)
                    self._leading -= 1
                    self._changed.notify_all()
        return done.result()

    @property
    def in_flight(self) -> int:
        """Items queued or in a running batch (read without the lock: a hint for ``upstream``)."""
        return len(self._queue) + self._running_items

    def _gather(self) -> None:
        """Wait (the lock held, released while waiting) for the callers the last batch answered,
        who ask again under a steady load: until the queue holds them besides those that were
        already waiting when it ended, or ``GATHER_SHARE`` of its duration has passed; and for the
        callers still in ``upstream``, for at most its last batch's time more."""
        started = time.monotonic()
        until = started + GATHER_SHARE * self._last_run_s
        up = self.upstream
        if up is not None and up.in_flight:
            until += up._last_run_s
        want = 0
        while len(self._queue) < (want := max(want, self._want())):  # once seen coming, expected
            left = until - time.monotonic()
            if left <= 0:
                break
            # an upstream answer wakes nobody here: look again every UPSTREAM_POLL_S meanwhile
            self._arrived.wait(left if up is None else min(left, UPSTREAM_POLL_S))
        self.gathered_s += time.monotonic() - started

    def _want(self) -> int:
        """How many items the queue should hold: the last batch's callers and those waiting when it
        ended, or those queued now and all still upstream, whichever is more."""
        want = self._waiting_at_end + self._last_size
        if self.upstream is not None:
            want = max(want, len(self._queue) + self.upstream.in_flight)
        return min(self.max_items, want)

    def _answer(self, batch: list[tuple[T, Future[R]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        self._last_size = len(batch)
        started = time.perf_counter()
        try:
            items = [item for item, _ in batch]
            results = self._run(items) if self._on is None else self._on(self._run, items)
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
        except BaseException as exc:  # the whole batch failed: every caller gets the error
            for _, done in batch:
                done.set_exception(exc)
            return
        finally:
            self._last_run_s = time.perf_counter() - started
            self.run_s += self._last_run_s
        for (_, done), result in zip(batch, results):
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)
