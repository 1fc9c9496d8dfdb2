"""Wiring: settings -> encoder, store, steps, Faust worker. One place builds the object graph."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from simstream import compute, retry
from simstream.encoders.fusion import ProductEncoder
from simstream.errors import IndexUnavailable
from simstream.generations import CONTROL_POLL_S, FIRST, ControlRecord, Role, generation_settings
from simstream.index.control import ControlStore
from simstream.index.milvus import close_client, open_client
from simstream.index.neighbours import RECENT_SEARCHES_MIN, ListBuilder, RecentSearches
from simstream.index.snapshot import snapshot_path
from simstream.index.store import VectorStore
from simstream.logs import configure_logging, get_logger
from simstream.memory import memory_limit
from simstream.metric import IP, Metric
from simstream.settings import Settings
from simstream.streams.app import Worker
from simstream.streams.fence import Fence
from simstream.streams.peers import fetch_snapshot
from simstream.vector_codec import Segment
from simstream.streams.ingest import Ingest
from simstream.streams.refresh import Refresher

__all__ = ["settle_heap", "open_store", "build_steps", "single_threaded_numpy", "control_store", "read_control",
           "generation_of", "control_fence", "live_steps", "idle_health", "build_worker", "run_worker", "worker_snapshot", "STANDBY_IDLE_POLL_S",
           "SNAPSHOT_ON_STOP_S"]

STANDBY_IDLE_POLL_S = 5.0  # a standby worker with no generation to run looks for one this often
SNAPSHOT_ON_STOP_S = 60.0  # the longest a stopping worker spends on its last snapshot

log = get_logger(__name__)


def open_store(settings: Settings, dim: int, *, wait: bool = False,
               segments: Sequence[Segment] | None = None, snapshot: Path | None = None,
               metric: Metric = IP) -> VectorStore:
    """Connect to Milvus; with ``wait``, a Milvus that is down or starting is waited for (jittered
    backoff, a log line per attempt) instead of the worker crash-looping. ``snapshot``: restore the
    in-memory copies from it when it fits (index/snapshot.py). ``metric``: the model's (its
    collections are created and searched by it)."""
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else None

    def connect() -> VectorStore:
        return VectorStore.connect(settings.resolved_milvus_uri, settings.collection, dim, token=token,
                                   flush_every_rows=settings.flush_every_rows, in_memory=settings.side_index,
                                   timeout_s=settings.milvus_timeout_s,
                                   memory_limit_bytes=settings.memory_limit_bytes, segments=segments,
                                   snapshot=snapshot, metric=metric)

    if not wait:
        return connect()
    return retry.call(retry.MILVUS_START, "milvus_connect", connect, retry_on=(IndexUnavailable,))


@contextmanager
def control_store(settings: Settings) -> Iterator[ControlStore]:
    """The control record of the deployment's collections (``SIMSTREAM_COLLECTION``), on a client
    of its own that is closed afterwards."""
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
    uri = settings.resolved_milvus_uri
    client = retry.call(retry.MILVUS_START, "milvus_connect",
                        lambda: open_client(uri, token=token, timeout_s=settings.milvus_timeout_s),
                        retry_on=(IndexUnavailable,))
    try:
        yield ControlStore(client, settings.collection, timeout_s=settings.milvus_timeout_s)
    finally:
        close_client(client, uri)


def read_control(settings: Settings, *, wait: bool = False) -> ControlRecord | None:
    """The control record (None: never migrated), its generations' lexicons fetched into
    ``data_dir``; with ``wait``, Milvus down or starting is waited for."""
    def read() -> ControlRecord | None:
        with control_store(settings) as control:
            record = control.read()
            control.fetch_lexicons(record, settings.data_dir)  # the copies its generations' encoders read
            return record

    return retry.call(retry.MILVUS_START, "milvus_connect", read, retry_on=(IndexUnavailable,)) if wait else read()


def generation_of(settings: Settings, record: ControlRecord | None, role: Role) -> tuple[str, Settings] | None:
    """The generation a worker of ``role`` runs, with the settings to run it with; None: a standby
    worker with nothing to do. Without a record the first generation is live, as configured."""
    tag = record.runs(role) if record is not None else (FIRST if role == "live" else None)
    if tag is None:
        return None
    generation = record.generations.get(tag) if record is not None else None
    return tag, generation_settings(settings, generation, tag)


def control_fence(base: Settings, store: VectorStore, tag: str, role: Role, *, stop: bool = True) -> Fence:
    """A fence that reads the control record through the store's own client (on the index thread);
    with ``stop`` (the worker), it stops the process (SIGTERM: Faust shuts down cleanly, the
    supervisor restarts it) when the record moves its role to another generation."""
    control = ControlStore(store.milvus.client, base.collection, timeout_s=base.milvus_timeout_s)

    def terminate(runs: str | None) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    return Fence(control.read, tag, role=role, on_reassigned=terminate if stop else None)


def live_steps(settings: Settings, encoder: ProductEncoder | None = None) -> tuple[Ingest, Refresher, Fence, Settings]:
    """The steps of the live generation and its fence, for the tools that write the index and
    publish lists (backfill, reconcile): after a migration they work on the live generation, and
    publish only while it may."""
    tag, live = generation_of(settings, read_control(settings, wait=True), "live")  # type: ignore[misc]
    ingest, refresher = build_steps(live, encoder, wait_for_milvus=True)
    return ingest, refresher, control_fence(settings, ingest.store, tag, "live", stop=False), live


def worker_snapshot(settings: Settings) -> Path | None:
    """The snapshot file of this generation's copies (index/snapshot.py); None when off."""
    directory = settings.resolved_snapshot_dir
    return snapshot_path(directory, settings.collection) if directory is not None else None


def build_steps(settings: Settings, encoder: ProductEncoder | None = None, *,
                wait_for_milvus: bool = False, snapshot: Path | None = None) -> tuple[Ingest, Refresher]:
    encoder = encoder or ProductEncoder(settings)
    store = open_store(settings, encoder.dim, wait=wait_for_milvus, segments=encoder.segments, snapshot=snapshot,
                       metric=encoder.metric)
    builder = ListBuilder(store, k=settings.top_k, layout=encoder.layout, model=encoder.model,
                          depth=settings.resolved_list_depth, match=encoder.match, weights=encoder.weights)
    # The ingest's search around each changed product is its own list's starting point (one pass per
    # event). An entry lives from a batch's affected set to its lists' refresh, a batch later; one
    # whose list another worker refreshes is never taken, so the bound is what memory it may hold
    # (an entry keeps its vector, ~13 KB with images): a few batches' worth, not the catalog.
    recent = RecentSearches(capacity=max(RECENT_SEARCHES_MIN, 16 * settings.batch_size),
                            depth=settings.resolved_list_depth)
    return (Ingest(store, encoder, candidate_pool=settings.candidate_pool, recent=recent),
            Refresher(store, builder, recent=recent))


def single_threaded_numpy() -> None:
    """numpy's BLAS runs single-threaded in the worker: the refresh path makes many small matrix
    products, and OpenBLAS's thread hand-off costs ~100x such a product when the cores are busy
    (measured: 384 x 3,232 by a vector, 6.8 ms with 2 threads vs 0.08 ms with 1). The big one, the
    side index's search, runs through torch with ``SIMSTREAM_TORCH_THREADS`` (index/side.py)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def settle_heap() -> None:
    """After start-up: take what it built (the models, the catalog's copies, milvus-lite's own
    objects when it runs inside the worker) out of the garbage collector's generations, and give
    the memory it only passed through (pages of rows read from Milvus) back to the system.

    The first: those objects live as long as the process, and a full collection walks all of them
    (70 ms each at 20k products with milvus-lite inside, linear in the catalog); at 100k that cost
    was a fifth of a price-only update's time (docs/scaling.md). The second: glibc keeps freed
    memory in its arenas, and the load frees a lot (192 MiB at 20k float32 products)."""
    gc.collect()
    gc.freeze()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


def build_worker(settings: Settings, *, base: Settings | None = None, tag: str = FIRST,
                 role: Role = "live") -> Worker:
    """The worker of generation ``tag`` (``settings``: as ``generation_of`` gave them; ``base``:
    the deployment's, for the control record; None: no fence, tests that run one generation)."""
    single_threaded_numpy()
    snapshot = worker_snapshot(settings)
    download: threading.Thread | None = None
    if snapshot is not None and not snapshot.exists() and settings.snapshot_peers:
        # from a peer, while the models load (the download waits on the network, the models on the disk)
        limit = memory_limit(settings.memory_limit_bytes)
        download = threading.Thread(target=fetch_snapshot, name="snapshot-download", daemon=True,
                                    args=(settings.snapshot_peers, settings.collection, snapshot),
                                    kwargs={"max_bytes": limit.bytes if limit else None,
                                            "timeout_s": settings.snapshot_fetch_timeout_s})
        download.start()
    encoder = compute.in_own_thread(ProductEncoder, settings)  # no OpenMP team left on this thread
    if download is not None:
        download.join()
    ingest, refresher = build_steps(settings, encoder, wait_for_milvus=True, snapshot=snapshot)
    encoder = ingest.encoder
    compute.in_own_thread(encoder.warm_up)  # the scans' thread keeps the only team (simstream.compute)
    log.info("encoders ready", model=encoder.model, dim=encoder.dim, device=str(encoder.text.device),
             weights=encoder.weights, generation=tag or "first", role=role)
    settle_heap()
    fence = control_fence(base, ingest.store, tag, role) if base is not None else None
    return Worker(settings, ingest, refresher, fence=fence,
                  snapshot=snapshot if ingest.store.side is not None else None)


@contextmanager
def idle_health(settings: Settings) -> Iterator[None]:
    """While a standby worker waits for a generation: ``/healthz`` answers 200 and ``/readyz`` 503
    ("idle") on the worker's web port, so its probes hold and it takes no traffic; closed before
    Faust binds the port."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            ok = self.path.startswith("/healthz")
            body = b'{"status": "ok"}' if ok else b'{"ready": false, "idle": "standby: no generation to run"}'
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # probes every few seconds: not worth a line each
            pass

    if not settings.web_enabled:
        yield
        return
    server = ThreadingHTTPServer((settings.web_host, settings.web_port), Health)
    thread = threading.Thread(target=server.serve_forever, name="idle-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _wait_for_generation(settings: Settings, role: Role) -> tuple[str, Settings]:
    """The generation this worker's role runs; a standby worker with none waits until there is one."""
    found = generation_of(settings, read_control(settings, wait=True), role)
    if found is not None:
        return found
    with idle_health(settings):
        while (found := generation_of(settings, read_control(settings, wait=True), role)) is None:
            log.info("standby worker: no generation to run; waiting", poll_s=STANDBY_IDLE_POLL_S)
            time.sleep(STANDBY_IDLE_POLL_S)
    return found


def run_worker(settings: Settings) -> None:
    """Build the worker of the generation its role runs (SIMSTREAM_WORKER_ROLE) and run it until
    it is stopped (the production entry point)."""
    import faust

    role: Role = settings.worker_role
    tag, generation = _wait_for_generation(settings, role)
    worker = build_worker(generation, base=settings, tag=tag, role=role)

    class _Worker(faust.Worker):
        def _setup_logging(self) -> None:  # keep structlog's handlers; faust would replace them
            configure_logging(settings.log_format, settings.log_level)

    stop_watch = threading.Event()
    threading.Thread(target=worker.watch_rebalances, args=(stop_watch,), name="rebalance-watch", daemon=True).start()
    try:
        _Worker(worker.app, loglevel=settings.log_level.lower(), redirect_stdouts=False, quiet=True).execute_from_commandline()
    finally:
        stop_watch.set()
        worker.snapshot_on_stop(SNAPSHOT_ON_STOP_S)
