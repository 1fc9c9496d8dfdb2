"""The query API (FastAPI): read-only routes over the index, plus the explorer page at ``/``.

    GET  /v1/info                          the model served, its field weights, limits
    GET  /v1/products/{id}                 what is stored about a product
    GET  /v1/products/{id}/neighbors       the published list; with filters, weights or paging: exact
    GET  /v1/products/{id}/image           a file: image from the image root (guarded)
    GET  /v1/search?q=                     search ranking: query text in the fused space
    POST /v1/similar                       query by example: a product document (title and/or image)
    POST /v1/recommend                     several positive (and negative) examples: ids or documents
    POST /v1/batch                         up to 100 of the queries above in one request
    GET  /healthz /readyz /metrics         liveness, readiness (Milvus answers), latency histograms

Live queries are answered from serve's exact in-memory copy of the catalog (serve/copy.py), or
from Milvus search when it does not fit (SIMSTREAM_SERVE_COPY). Every query option (filters,
weights, paging) is spelled once, in serve/requests.py. What memory holds whole (a product by id, a
published list) is answered on the event loop itself (``Catalog.held_*``); everything that may
wait (a pass, a Milvus read, an encoder) runs in a request thread.

Exposure (API keys, body cap, rate limit, CORS, deadline) and the error format, RFC 9457
problem details with stable codes, are in serve/guard.py; every request is logged once, with its
X-Request-ID (taken from the request or made), which every response carries back.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio
import orjson
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import Body, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from simstream import compute
from simstream.errors import EncodeError, IndexUnavailable
from simstream.generations import FIRST, ControlRecord, generation_settings
from simstream.index.budget import MemoryBudgetExceeded
from simstream.index.control import ControlStore
from simstream.index.milvus import MilvusStore, close_client, open_client
from simstream.logs import get_logger
from simstream.metric import IP
from simstream.serve.batcher import MicroBatcher
from simstream.serve.catalog import Catalog, NotFound
from simstream.serve.copy import SYNC_BUSY_SHARE, ServedCopy
from simstream.serve.filters import FilterError, Filters
from simstream.serve.guard import BodyLimit, Deadline, Guard, Problem, ProblemBody, parse_api_keys, problem, problem_body
from simstream.serve.images import LocalImages
from simstream.serve.metrics import ServeMetrics
from simstream.serve.published import PublishedLists
from simstream.serve.responses import (
    BatchBody, ExampleBody, InfoBody, ProductBody, RankingBody, ResponseBody, SearchBody,
)
from simstream.serve.queries import QueryEncoder
from simstream.serve.ranking import Conflict, CopyLive, LiveIndex, MilvusLive
from simstream.serve.requests import (
    BatchRequest, NeighborsQuery, RecommendRequest, SearchQuery, SimilarRequest, parse_weights,
)
from simstream.settings import Settings

__all__ = ["STATIC", "BATCH_THREADS", "FOLLOW_S", "PAGE_PARAMS", "FILTER_PARAMS", "query_params", "ERRORS", "QUERY_ERRORS", "INTERNAL", "ok", "JSON", "answer_of", "request_id_ok", "new_request_id", "Conflict", "Served", "Services", "open_copy", "create_app"]

log = get_logger(__name__)
# the real folder (the strict editable install links each file from a tree of its own)
BATCH_THREADS = 16  # items of one POST /v1/batch answered at once (their rankings share passes)
FOLLOW_S = 5.0  # serve reads the control record this often and follows a switch of generations
STATIC = Path(str(resources.files("simstream.serve") / "static" / "index.html")).resolve().parent


@dataclass(frozen=True)
class Served:
    """One generation as serve answers it, swapped as one (``Services.follow``)."""

    settings: Settings
    milvus: MilvusStore | None
    encoder: QueryEncoder | None
    copy: ServedCopy | None = None  # None: live queries go to Milvus
    lists: PublishedLists | None = None  # the published lists read (None until opened)

    @property
    def live(self) -> LiveIndex:
        assert self.milvus is not None
        return CopyLive(self.copy) if self.copy is not None else MilvusLive(self.milvus)

    @cached_property
    def catalog(self) -> Catalog:
        """What the routes read through, made once per generation (it holds no request's state)."""
        assert self.milvus is not None and self.encoder is not None
        return Catalog(self.milvus, self.live, self.encoder, max_k=self.settings.serve_max_k,
                       top_k=self.settings.top_k, lists=self.lists)


def open_copy(settings: Settings, milvus: MilvusStore, encoder: QueryEncoder) -> ServedCopy | None:
    """Serve's in-memory copy of ``milvus``' catalog (serve/copy.py), or None: SIMSTREAM_SERVE_COPY
    off, or "auto" and it does not fit the memory limit (live queries then go to Milvus)."""
    if settings.serve_copy == "off":
        return None
    segments = getattr(getattr(encoder, "encoder", None), "segments", None)
    try:
        need = ServedCopy.fits(milvus, segments, settings.memory_limit_bytes, settings.serve_list_cache_bytes)
    except MemoryBudgetExceeded as exc:
        if settings.serve_copy == "on":
            raise
        log.warning("serve's in-memory copy does not fit; live queries go to Milvus", reason=str(exc)[:400])
        return None
    copy = ServedCopy.build(milvus, segments, need.products, passes=settings.serve_passes,
                            metric=getattr(encoder, "metric", IP))
    # a query's encode comes before its pass: a pass waits for the encodes in flight (serve/batcher.py)
    copy.batcher.upstream = getattr(encoder, "batcher", None)
    return copy


class Services:
    """What the routes read through; opened at start-up unless given (tests, the demo).

    Opened by serve itself on a Milvus server, they follow the live generation
    (simstream.generations): the control record is read every ``FOLLOW_S``, and after a switch
    (``simstream migrate``) the new generation's collections, query encoder, copy and published
    lists are opened beside the old ones and swapped in, without a restart; queries in flight
    finish on the old ones."""

    def __init__(self, settings: Settings, milvus: MilvusStore | None, encoder: QueryEncoder | None,
                 client: Any | None = None) -> None:
        self.base = settings  # the deployment's settings; ``settings``: the generation served
        self.current = Served(settings, milvus, encoder)
        self.owns_milvus = milvus is None
        # an open client of SIMSTREAM_MILVUS_URI to serve through (serve/server.py's, which checked the
        # catalog): opening a milvus-lite file again would load its collections again (12.5 s at 100k)
        self._client = client
        self.generation: str | None = None  # the tag served (None: given, not followed)
        self.images = LocalImages(settings)
        self.opened = False  # ``open`` done: by serve/server.py before uvicorn starts, else in the lifespan

    @property
    def settings(self) -> Settings:
        return self.current.settings

    @property
    def written_elsewhere(self) -> bool:
        """Whether anyone but this process can change the catalog: not when serve opened a
        milvus-lite file itself (one process per file); given a store (the demo), its owner may."""
        return not (self.owns_milvus and self.milvus is not None and self.milvus.exclusive)

    @property
    def milvus(self) -> MilvusStore | None:
        return self.current.milvus

    @property
    def encoder(self) -> QueryEncoder | None:
        return self.current.encoder

    @property
    def copy(self) -> ServedCopy | None:
        return self.current.copy

    @property
    def catalog(self) -> Catalog:
        """The catalog of one generation (a switch may happen between two reads of ``current``)."""
        return self.current.catalog

    def _control(self, client: Any) -> ControlStore:
        return ControlStore(client, self.base.collection, timeout_s=self.base.milvus_timeout_s)

    def _open_generation(self, record: ControlRecord | None, on: MilvusStore | None = None,
                         client: Any | None = None) -> tuple[str, Served]:
        """The live generation's settings, collections, query encoder and copy; ``on``: a store
        whose client to reuse (a milvus-lite file has one server per process); ``client``: an open
        client of SIMSTREAM_MILVUS_URI to serve through (the caller closes it on failure)."""
        tag = record.live if record is not None else FIRST
        if record is not None and (on is not None or client is not None):  # its lexicon's copy, for the query encoder
            self._control(on.client if on is not None else client).fetch_lexicons(record, self.base.data_dir)
        s = generation_settings(self.base, record.generations.get(tag) if record is not None else None, tag)
        uri = s.resolved_milvus_uri
        # dim None: open the collections the worker made, at their dimension; never create them
        milvus = (MilvusStore(on.client, on.uri, s.collection, None, exclusive=on.exclusive, timeout_s=s.milvus_timeout_s)
                  if on is not None else
                  MilvusStore(client, uri, s.collection, None, exclusive="://" not in uri, timeout_s=s.milvus_timeout_s)
                  if client is not None else
                  MilvusStore.connect(uri, s.collection, None,
                                      token=s.milvus_token.get_secret_value() if s.milvus_token else None,
                                      timeout_s=s.milvus_timeout_s))
        try:
            encoder = QueryEncoder(s)
            encoder.warm_up()
            self._check_dim(encoder, milvus)
            copy = open_copy(s, milvus, encoder)
        except BaseException:
            if on is None and client is None:
                milvus.close()
            raise
        return tag, Served(s, milvus, encoder, copy, PublishedLists(milvus, s.serve_list_cache_bytes))

    @staticmethod
    def _check_dim(encoder: QueryEncoder, milvus: MilvusStore) -> None:
        if encoder.dim != milvus.dim:
            raise ValueError(f"the encoders give dim {encoder.dim} but {milvus.products} has "
                             f"{milvus.dim}: serve with the worker's fusion config and text model")
        metric = getattr(encoder, "metric", IP)
        if metric != milvus.metric:
            raise ValueError(f"the model ranks by {metric.name} but {milvus.products} is indexed by "
                             f"{milvus.metric.name}: serve with the worker's fusion config and SIMSTREAM_METRIC")

    def open(self) -> None:
        if self.milvus is None:
            uri = self.base.resolved_milvus_uri
            token = self.base.milvus_token.get_secret_value() if self.base.milvus_token else None
            client, self._client = self._client or open_client(uri, token=token, timeout_s=self.base.milvus_timeout_s), None
            try:  # one client for the control record and the collections: the file is loaded once
                record = self._control(client).read()
                self.generation, self.current = self._open_generation(record, client=client)
            except BaseException:
                close_client(client, uri)
                raise
        else:
            encoder = self.encoder
            if encoder is None:
                encoder = QueryEncoder(self.settings)
                encoder.warm_up()
            assert self.milvus is not None
            self._check_dim(encoder, self.milvus)
            self.current = Served(self.settings, self.milvus, encoder, open_copy(self.settings, self.milvus, encoder),
                                  PublishedLists(self.milvus, self.settings.serve_list_cache_bytes))
        assert self.encoder is not None and self.milvus is not None
        self.opened = True
        log.info("serve ready", collection=self.milvus.products, model=self.encoder.model,
                 generation=self.generation, live_index="copy" if self.copy is not None else "milvus",
                 products=len(self.copy) if self.copy is not None else None)

    def follow(self) -> bool:
        """Read the control record; after a switch, open the live generation and swap it in (blocking:
        call it off the event loop). Returns whether it switched."""
        if self.generation is None or self.milvus is None:
            return False
        record = self._control(self.milvus.client).read()
        live = record.live if record is not None else FIRST
        if live == self.generation:
            return False
        # on the same client: queries in flight on the old collections finish; it is closed at shutdown
        tag, served = self._open_generation(record, on=self.milvus)
        if served.lists is not None:  # warm before it answers; the syncs after the swap catch up
            served.lists.preload()
        self.generation, self.current = tag, served
        assert served.encoder is not None and served.milvus is not None
        log.info("serve follows the live generation", generation=tag or "first", model=served.encoder.model,
                 collection=served.milvus.products)
        return True

    def sync(self) -> int:
        """Bring the copy and the published lists held in step with Milvus (blocking: call it off
        the event loop); returns how many products and lists changed."""
        served = self.current
        if served.milvus is None:
            return 0
        changed = served.lists.sync() if served.lists is not None else 0
        return changed + (served.copy.sync(served.milvus) if served.copy is not None else 0)

    def preload(self) -> int:
        """Read the published lists into memory (blocking: call it off the event loop)."""
        lists = self.current.lists
        return lists.preload() if lists is not None else 0

    def close(self) -> None:
        if self.owns_milvus and self.milvus is not None:
            self.milvus.close()


ERRORS: dict[int | str, dict[str, Any]] = {  # what /docs shows every route may answer
    # the model registers the schema; errors are problem+json, so that content names it too
    status: {"model": ProblemBody, "description": text,
             "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemBody"}}}}
    for status, text in ((400, "invalid_query"), (401, "unauthorized"), (404, "not_found"), (409, "conflict"),
                         (413, "body_too_large"), (422, "invalid_request or cannot_encode"), (429, "rate_limited"),
                         (503, "index_unavailable"), (504, "deadline_exceeded"))}
access_log = get_logger("simstream.serve.access")


def ok(model: type[ResponseBody]) -> dict[int | str, dict[str, Any]]:
    """A route's documented answers: ``model`` on success (serve/responses.py), and every error."""
    return {200: {"model": model, "description": model.__doc__ or "OK"}, **ERRORS}


class JSON(Response):
    """A body written by orjson as it is: no pass through FastAPI's encoder (numpy scalars included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# how a route answers each error the catalog raises: (type, status, code, detail), one place
QUERY_ERRORS: tuple[tuple[type[Exception], int, str, Callable[[Exception], str]], ...] = (
    (FilterError, 400, "invalid_query", str),
    (NotFound, 404, "not_found", str),
    (Conflict, 409, "conflict", str),
    (EncodeError, 422, "cannot_encode", lambda exc: f"cannot encode the query: {exc}"),
    (IndexUnavailable, 503, "index_unavailable", lambda exc: "the index is unavailable, try again"),
)
INTERNAL = "internal error; the request id is in the server's log"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
# made ids: this process's random prefix and a count. uuid4 per request (the middleware's default)
# reads the kernel's random source each time: ~30 us a request here, a sixth of the event loop's
# work on the cheap routes. An id only correlates log lines, so unique is all it needs to be.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNT = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across processes and restarts (random prefix) and within one (count)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNT):x}"


def request_id_ok(value: str) -> bool:
    """A caller's X-Request-ID is kept when it is 8-128 safe characters (it goes into log lines);
    otherwise one is made."""
    return bool(_REQUEST_ID.fullmatch(value))


def _error(status: int, code: str, message: str) -> JSONResponse:
    return problem(status, code, message, correlation_id.get())


def _number(name: str, raw: str | None, kind: type[int] | type[float]) -> Any:
    """A GET parameter as ``kind``; None when absent; FilterError (400) when malformed."""
    if raw is None:
        return None
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise FilterError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {str(raw)[:40]!r}") from None


PAGE_PARAMS = {"k", "cursor", "min_score", "per_brand", "weights"}


def _options(rest: dict[str, str]) -> dict[str, Any]:
    """The paging and weight parameters of a GET query, as the request models spell them."""
    out: dict[str, Any] = {"weights": parse_weights(rest.get("weights"))}
    if (k := _number("k", rest.get("k"), int)) is not None:
        out["k"] = k
    if (per_brand := _number("per_brand", rest.get("per_brand"), int)) is not None:
        if per_brand < 1:
            raise FilterError("per_brand must be at least 1")
        out["per_brand"] = per_brand
    if (min_score := _number("min_score", rest.get("min_score"), float)) is not None:
        out["min_score"] = min_score
    if rest.get("cursor"):
        out["cursor"] = rest["cursor"]
    return out


# the query parameters /docs lists on the neighbours and search routes (the others as the route docstrings say)
FILTER_PARAMS = (("k", "1..SIMSTREAM_SERVE_MAX_K, default 10", False),
                 ("brand", "any of these brands (repeat the parameter)", True),
                 ("category", "path prefixes: any of them", True),
                 ("price_min", "at least this price", False), ("price_max", "at most this price", False))


def query_params(*params: tuple[str, str, bool]) -> dict[str, Any]:
    """A route's ``openapi_extra`` documenting query parameters (name, description, repeatable)
    that the route reads from the query string itself (``Filters.from_query``): declared as
    FastAPI parameters, they were parsed and validated on the event loop before the route parsed
    them again (~10 % of a published neighbours request, answered on the loop)."""
    return {"parameters": [{"name": name, "in": "query", "required": False, "description": text,
                            "schema": {"type": "array", "items": {"type": "string"}} if many else {"type": "string"}}
                           for name, text, many in params]}


def _model(cls: type, **data: Any) -> Any:
    """A request model from GET parameters; its validation errors are 400s, as for a body."""
    try:
        return cls(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FilterError("/".join(str(x) for x in first.get("loc", ())) + ": " + str(first.get("msg", ""))) from None


def create_app(settings: Settings, *, milvus: MilvusStore | None = None,
               encoder: QueryEncoder | None = None, client: Any | None = None) -> FastAPI:
    """The app; ``milvus`` / ``encoder`` given: use those (not closed here), else open them at start
    (through ``client``, an open client of SIMSTREAM_MILVUS_URI, when given: closed with the app)."""
    compute.configure(settings.serve_passes)  # passes that may run at once, each on a compute thread
    services = Services(settings, milvus, encoder, client)
    metrics = ServeMetrics()

    def batchers() -> dict[str, MicroBatcher[Any, Any] | None]:
        served = services.current
        return {"rank": served.copy.batcher if served.copy is not None else None,
                "encode": getattr(served.encoder, "batcher", None)}  # a test's own encoder may have none

    metrics.watch(batchers)

    async def follow() -> None:
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                await asyncio.to_thread(services.follow)
            except Exception as exc:  # Milvus down or the new generation not openable: keep serving the old
                log.warning("following the control record failed; trying again", error=repr(exc)[:300])

    async def sync() -> None:
        took = 0.0
        while True:
            # a sync costing more than a share of the time (milvus-lite scans every row, vectors
            # included, to find the recent ones) waits longer: queries keep the CPU; as_of says how old
            await asyncio.sleep(max(services.settings.serve_sync_s, took / SYNC_BUSY_SHARE))
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(services.sync)
            except Exception as exc:  # Milvus down: keep answering from the copy; as_of says how old
                log.warning("syncing serve's copy failed; trying again", error=repr(exc)[:300])
            took = time.perf_counter() - t0

    async def preload() -> None:
        try:
            held = await asyncio.to_thread(services.preload)
            log.info("published lists read into memory", lists=held)
        except Exception as exc:  # each list is then read on its first request
            log.warning("reading the published lists at start failed", error=repr(exc)[:300])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # as many requests answered at once as one pass ranks (serve/batcher.py); the rest wait in order
        anyio.to_thread.current_default_thread_limiter().total_tokens = services.base.serve_threads
        if not services.opened:
            services.open()
        # the copy and the models are long-lived: out of the collector's sight, so a full
        # collection (triggered by requests' garbage) does not walk ~10 objects per product
        gc.freeze()
        tasks = [asyncio.create_task(preload())]
        if services.written_elsewhere:
            tasks.append(asyncio.create_task(sync()))
            if services.generation is not None:
                tasks.append(asyncio.create_task(follow()))
        else:
            log.info("serve holds the milvus-lite file alone: nothing else can write it, so the copy "
                     "and the control record are not polled")
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            services.close()

    app = FastAPI(title="simstream query API", version="1", lifespan=lifespan,
                  description="Read-only similar items, search ranking, query by example and recommendations "
                              "(docs/serving.md).")
    app.state.services = services
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def answered(scope: dict[str, Any], status: int, seconds: float) -> None:
        """The latency histogram and the access log line of a request."""
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        metrics.observe(endpoint, scope.get("method", "?"), status, seconds)
        if endpoint not in ("/healthz", "/readyz", "/metrics"):
            client = scope.get("client")
            access_log.info("request", method=scope.get("method"), route=endpoint, status=status,
                            ms=round(seconds * 1000, 1), request_id=correlation_id.get(),
                            key=scope.get("state", {}).get("api_key"), client=client[0] if client else None)

    @app.exception_handler(Problem)
    async def a_problem(request: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.code, exc.detail, correlation_id.get(), exc.headers)

    async def a_query_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(*answer_of(exc))

    for kind, *_ in QUERY_ERRORS:
        app.add_exception_handler(kind, a_query_error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = ["/".join(str(x) for x in e.get("loc", ())) + ": " + str(e.get("msg", "")) for e in exc.errors()[:5]]
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", error=repr(exc)[:300], request_id=correlation_id.get(), exc_info=exc)
        return _error(500, "internal", INTERNAL)

    # outermost last: request id, the deadline and access log, CORS (preflights answered before
    # any key), keys and rate, body cap
    app.add_middleware(BodyLimit, max_bytes=settings.serve_max_body_bytes)  # type: ignore[arg-type]
    app.add_middleware(Guard, keys=parse_api_keys(settings.serve_api_keys.get_secret_value())  # type: ignore[arg-type]
                       if settings.serve_api_keys else {}, rate=settings.serve_rate_limit or None)
    if settings.serve_cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.serve_cors_origins,  # type: ignore[arg-type]
                           allow_methods=["GET", "POST"], allow_headers=["X-API-Key", "Authorization",
                                                                         "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(Deadline, seconds=settings.serve_deadline_s, done=answered)  # type: ignore[arg-type]
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID",  # type: ignore[arg-type]
                       generator=new_request_id, validator=request_id_ok)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        ok = services.milvus is not None and services.encoder is not None and services.milvus.ping()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics_() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/info", summary="The model served, its field weights (query-time weights start from these), limits",
             responses=ok(InfoBody))
    def info() -> JSON:
        served = services.current
        assert served.encoder is not None
        return JSON({"model": served.encoder.model, "generation": services.generation,
                "fields": {f: round(float(w), 6) for f, w in getattr(served.encoder, "weights", {}).items()},
                "top_k": served.settings.top_k, "max_k": served.settings.serve_max_k,
                "index": "copy" if served.copy is not None else "milvus",
                "products": len(served.copy) if served.copy is not None else None,
                "as_of": served.live.as_of(),
                "published_lists": None if served.lists is None else
                {"held": len(served.lists), "preloaded": served.lists.preloaded}})

    @app.get("/v1/products/{product_id:path}/neighbors", summary="Neighbours: published list, or exact live top-K",
             responses=ok(RankingBody), openapi_extra=query_params(*FILTER_PARAMS))
    async def neighbors(request: Request, product_id: str) -> JSON:
        """Without options: the list as last published. With filters (``brand``, ``brand_not``,
        ``category``, ``category_not``, ``price_min``, ``price_max``, ``attr.NAME=VALUE``,
        ``exclude``, ``same_brand``, ``same_category``, ``price_within_pct``), ``min_score`` or
        ``per_brand``: the published entries that pass when at least k do, else an exact live
        top-K; with ``weights`` (``text:2,image:0``) or ``cursor``: live."""
        filters, rest = Filters.from_query(request.query_params.multi_items(), PAGE_PARAMS)
        q = _model(NeighborsQuery, product_id=product_id, **_options(rest))
        catalog = services.catalog
        held = catalog.held_neighbors(q, filters)
        return JSON(held if held is not None else await run_in_threadpool(catalog.neighbors, q, filters))

    @app.get("/v1/products/{product_id:path}/image", summary="A file: image of a product (guarded)", responses=ERRORS)
    def image(product_id: str) -> Response:
        url = services.catalog.served(product_id).display.image_url or ""
        try:
            data, kind = services.images.read(url)
        except (EncodeError, ValueError) as exc:
            return _error(404, "not_found", f"no image served for {product_id[:80]!r}: {exc}")
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=300",
                                                         "X-Content-Type-Options": "nosniff"})

    @app.get("/v1/products/{product_id:path}", summary="What is stored about a product", responses=ok(ProductBody))
    async def product(product_id: str) -> JSON:
        catalog = services.catalog
        held = catalog.held_product(product_id)
        return JSON(held if held is not None else await run_in_threadpool(catalog.product, product_id))

    @app.get("/v1/search", summary="Search ranking: query text in the fused space", responses=ok(SearchBody),
             openapi_extra=query_params(("q", "1..500 characters", False), *FILTER_PARAMS))
    def search(request: Request) -> JSON:
        """The same filters, weights and paging as the neighbours route (relative filters aside)."""
        filters, rest = Filters.from_query(request.query_params.multi_items(), PAGE_PARAMS | {"q"})
        query = _model(SearchQuery, q=rest.get("q") or "", **_options(rest))
        return JSON(services.catalog.search(query, filters))

    @app.post("/v1/similar", summary="Query by example: a product document (title and/or image)",
              responses=ok(ExampleBody))
    def similar(body: SimilarRequest = Body(...)) -> JSON:
        return JSON(services.catalog.similar(body))

    @app.post("/v1/recommend", summary="Recommend from several positive (and negative) examples",
              responses=ok(ExampleBody))
    def recommend(body: RecommendRequest = Body(...)) -> JSON:
        return JSON(services.catalog.recommend(body))

    @app.post("/v1/batch", summary="Up to 100 queries in one request, answered in order", responses=ok(BatchBody))
    def batch(body: BatchRequest = Body(...)) -> JSON:
        """Each item is answered as its own route would answer it: ``{"status": 200, "body": ...}``
        or ``{"status": 4xx/5xx, "error": message}``; one item's error fails no other."""
        catalog = services.catalog  # one generation for the whole batch
        handlers: dict[str, Callable[[Any], dict[str, Any]]] = {
            "neighbors": catalog.neighbors, "search": catalog.search, "similar": catalog.similar,
            "recommend": catalog.recommend}
        request_id = correlation_id.get()

        def answer(item: Any) -> dict[str, Any]:
            try:
                return {"status": 200, "body": handlers[item.op](item)}
            except Exception as exc:
                status, code, detail = answer_of(exc)
                if status == 500:
                    log.exception("a batch item failed", op=item.op, request_id=request_id)
                return {"status": status, "problem": problem_body(status, code, detail, request_id)}

        # the items at once: their encodes and rankings go together (serve/batcher.py)
        with ThreadPoolExecutor(min(BATCH_THREADS, len(body.queries)), thread_name_prefix="batch") as pool:
            results = list(pool.map(answer, body.queries))
        return JSON({"results": results})

    return app


def answer_of(exc: BaseException) -> tuple[int, str, str]:
    """The status, code and detail a route answers a query's error with (``QUERY_ERRORS``), a
    batch item's too; anything else is a 500 whose detail says no more."""
    for kind, status, code, detail in QUERY_ERRORS:
        if isinstance(exc, kind):
            return status, code, detail(exc)
    return 500, "internal", INTERNAL
