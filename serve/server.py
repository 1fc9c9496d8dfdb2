"""Running the query API: uvicorn on one host and port, until interrupted."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import uvicorn

from simstream.generations import FIRST, generation_settings
from simstream.index.control import ControlStore
from simstream.index.milvus import MilvusStore, close_client, open_client, opening_timeout
from simstream.logs import get_logger
from simstream.redact import redact
from simstream.serve.app import create_app
from simstream.serve.queries import QueryEncoder
from simstream.settings import Settings

__all__ = ["CatalogMissing", "check_catalog", "stop_signals_interrupt", "run_server"]

log = get_logger(__name__)


def check_catalog(settings: Settings, client: Any | None = None) -> None:
    """Refuse to start, with one line saying what to do, when there is no catalog to serve yet
    (a fresh install: the worker has not written the collections). Without it the start-up hook
    failed with a traceback from inside uvicorn. ``client``: an open client to ask (kept open),
    else one is opened and closed."""
    uri = settings.resolved_milvus_uri
    if client is None:
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
        client = open_client(uri, token=token, timeout_s=settings.milvus_timeout_s)
        try:
            check_catalog(settings, client)
        finally:
            close_client(client, uri)
        return
    # on a milvus-lite file the first call loads the collections: its own deadline (index/milvus.py)
    timeout_s = opening_timeout(uri, settings.milvus_timeout_s)
    record = ControlStore(client, settings.collection, timeout_s=timeout_s).read()
    tag = record.live if record is not None else FIRST
    served = generation_settings(settings, record.generations.get(tag) if record is not None else None, tag)
    products = f"{served.collection}_products"
    if not client.has_collection(products, timeout=timeout_s):
        raise CatalogMissing(f"no catalog to serve: collection {products} does not exist at "
                             f"{redact(uri)}. Run the worker (or `simstream demo`) first, or point "
                             "SIMSTREAM_MILVUS_URI / SIMSTREAM_COLLECTION at the worker's")


class CatalogMissing(LookupError):
    """serve started before any worker wrote the collections it reads."""


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread while the block runs (elsewhere:
    nothing changes). Opening serve builds its copy of the catalog (minutes at 100k products) before
    uvicorn listens, and uvicorn's handlers only set a flag it reads once started: without this a
    pod being stopped ran the whole build first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_server(settings: Settings, host: str | None = None, port: int | None = None, *,
               milvus: MilvusStore | None = None, encoder: QueryEncoder | None = None) -> None:
    """Serve until SIGINT/SIGTERM; ``host`` / ``port`` default to SIMSTREAM_SERVE_HOST / _PORT.
    CatalogMissing when there is nothing to serve yet."""
    client = None
    if milvus is None:  # one client for the check and the app: a milvus-lite file is loaded once
        uri = settings.resolved_milvus_uri
        client = open_client(uri, token=settings.milvus_token.get_secret_value() if settings.milvus_token else None,
                             timeout_s=settings.milvus_timeout_s)
        try:
            check_catalog(settings, client)
        except BaseException:
            close_client(client, uri)
            raise
    app = create_app(settings, milvus=milvus, encoder=encoder, client=client)
    services = app.state.services
    try:
        with stop_signals_interrupt():
            services.open()  # the copy and the models, before the port opens
    except KeyboardInterrupt as exc:
        log.info("serve stopped while opening the catalog", signal=str(exc) or "SIGINT")
        services.close()  # a half-open milvus path closed its client itself
        return
    # uvicorn's own logging config would replace ours: structlog stays in charge, access log off
    uvicorn.run(app, host=host or settings.serve_host, port=port or settings.serve_port, log_config=None,
                access_log=False, timeout_graceful_shutdown=10,
                # longer than clients' and load balancers' idle timeouts, so the server is not the side that closes
                timeout_keep_alive=75)
