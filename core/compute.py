"""The threads a process runs its torch work on (serve: rankings, query encodes, model loading).

PyTorch's CPU kernels run on an OpenMP (libgomp) team of their own for every native thread that
starts a parallel region, kept for that thread's life; once the teams' threads outnumber the
cores, libgomp stops spinning between regions, and every one of a pass's hundreds of operations
then waits for sleeping threads to wake. Measured at 100k products, 32 queries, 2 torch threads
on this 2-core machine: a pass in the thread that loaded the models 89-96 ms on 1.9 cores; in any
other thread 165-192 ms on 1.15 cores (bench/serve_bench.py's catalog, in process). serve's
rankings were led by whichever of its 64 request threads came first: the second core idled.

So ``run`` hands a call to one long-lived thread (``configure``: more, for passes that may run
at once), and torch work that goes through it shares one team. A process whose torch work already
runs on one thread of its own (the worker's index thread) loads its models with ``in_own_thread``
instead: a thread that ends, and its team with it (the worker loaded and warmed up its models on
the main thread, and its scans on the index thread ran at 199 ms a pass on 1.10 cores; loaded in a
thread that ended, 102 ms on 1.84: 100k, 32 queries, in process).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, ParamSpec, TypeVar

__all__ = ["THREAD_PREFIX", "configure", "run", "on_compute_thread", "in_own_thread"]

THREAD_PREFIX = "simstream-compute"
P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_threads = 1


def configure(threads: int) -> None:
    """How many compute threads (serve: SIMSTREAM_SERVE_PASSES); takes effect for calls made after."""
    global _pool, _threads
    with _lock:
        threads = max(1, threads)
        if threads != _threads and _pool is not None:
            _pool.shutdown(wait=False)  # calls already handed to it finish there
            _pool = None
        _threads = threads


def on_compute_thread() -> bool:
    """Whether the caller is a compute thread (``run`` then calls in place)."""
    return threading.current_thread().name.startswith(THREAD_PREFIX)


def run(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` on a compute thread (the caller waits); in place when the caller is one."""
    global _pool
    if on_compute_thread():
        return fn(*args, **kwargs)
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_threads, thread_name_prefix=THREAD_PREFIX)
        pool = _pool
    return pool.submit(fn, *args, **kwargs).result()


def in_own_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` on a new thread that ends when it returns (the caller waits), so
    the OpenMP team it starts ends too: for one-off torch work (loading, warming up models)."""
    with ThreadPoolExecutor(1, thread_name_prefix="simstream-load") as once:  # leaving joins the thread
        return once.submit(fn, *args, **kwargs).result()
