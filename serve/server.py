"""Running the query API: uvicorn on one host and port, until interrupted."""

from __future__ import annotations

import uvicorn

from simstream.index.milvus import MilvusStore
from simstream.serve.app import create_app
from simstream.serve.queries import QueryEncoder
from simstream.settings import Settings

__all__ = ["run_server"]


def run_server(settings: Settings, host: str | None = None, port: int | None = None, *,
               milvus: MilvusStore | None = None, encoder: QueryEncoder | None = None) -> None:
    """Serve until SIGINT/SIGTERM; ``host`` / ``port`` default to SIMSTREAM_SERVE_HOST / _PORT."""
    app = create_app(settings, milvus=milvus, encoder=encoder)
    # uvicorn's own logging config would replace ours: structlog stays in charge, access log off
    uvicorn.run(app, host=host or settings.serve_host, port=port or settings.serve_port, log_config=None,
                access_log=False, timeout_graceful_shutdown=10,
                # longer than clients' and load balancers' idle timeouts, so the server is not the side that closes
                timeout_keep_alive=75)
