"""Wiring: settings -> encoder, store, steps, Faust worker. One place builds the object graph."""

from __future__ import annotations

from simstream.encoders.fusion import ProductEncoder
from simstream.index.neighbours import ListBuilder
from simstream.index.store import VectorStore
from simstream.logs import configure_logging, get_logger
from simstream.settings import Settings
from simstream.streams.app import Worker
from simstream.streams.ingest import Ingest
from simstream.streams.refresh import Refresher

log = get_logger(__name__)


def open_store(settings: Settings, dim: int) -> VectorStore:
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
    return VectorStore.connect(settings.resolved_milvus_uri, settings.collection, dim, token=token,
                               flush_every_rows=settings.flush_every_rows, in_memory=settings.side_index)


def build_steps(settings: Settings, encoder: ProductEncoder | None = None) -> tuple[Ingest, Refresher]:
    encoder = encoder or ProductEncoder(settings)
    store = open_store(settings, encoder.dim)
    builder = ListBuilder(store, k=settings.top_k, layout=encoder.layout, model=encoder.model,
                          depth=settings.resolved_list_depth)
    return Ingest(store, encoder, candidate_pool=settings.candidate_pool), Refresher(store, builder)


def single_threaded_numpy() -> None:
    """numpy's BLAS runs single-threaded in the worker: the refresh path makes many small matrix
    products, and OpenBLAS's thread hand-off costs ~100x such a product when the cores are busy
    (measured: 384 x 3,232 by a vector, 6.8 ms with 2 threads vs 0.08 ms with 1). The big one, the
    side index's search, runs through torch with ``SIMSTREAM_TORCH_THREADS`` (index/side.py)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def build_worker(settings: Settings) -> Worker:
    single_threaded_numpy()
    ingest, refresher = build_steps(settings)
    encoder = ingest.encoder
    encoder.warm_up()
    log.info("encoders ready", model=encoder.model, dim=encoder.dim, device=str(encoder.text.device),
             weights=encoder.weights)
    return Worker(settings, ingest, refresher)


def run_worker(settings: Settings) -> None:
    """Build the worker and run it until it is stopped (the production entry point)."""
    import faust

    worker = build_worker(settings)

    class _Worker(faust.Worker):
        def _setup_logging(self) -> None:  # keep structlog's handlers; faust would replace them
            configure_logging(settings.log_format, settings.log_level)

    _Worker(worker.app, loglevel=settings.log_level.lower(), redirect_stdouts=False, quiet=True).execute_from_commandline()
