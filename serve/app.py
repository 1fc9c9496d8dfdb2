"""The query API (FastAPI): read-only routes over the index, plus the explorer page at ``/``.

    GET  /v1/products/{id}                 what is stored about a product
    GET  /v1/products/{id}/neighbors?k=    the list as last published; with filters: exact filtered top-K
    GET  /v1/products/{id}/image           a file: image from the image root (guarded)
    GET  /v1/search?q=&k=&filters          search ranking: query text in the fused space
    POST /v1/similar                       query by example: a product document
    GET  /healthz /readyz /metrics         liveness, readiness (Milvus answers), latency histograms

Errors: 400 bad parameters or filters, 404 unknown/deleted product, 409 filters an old collection
cannot answer, 422 a body or document that does not validate or encode, 503 Milvus unavailable;
every error body is ``{"error": message}``.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from simstream.errors import EncodeError, IndexUnavailable
from simstream.generations import FIRST, ControlRecord, generation_settings
from simstream.index.control import ControlStore
from simstream.index.milvus import MilvusStore, close_client, open_client
from simstream.logs import get_logger
from simstream.serve.catalog import Catalog, NotFound, filters_view
from simstream.serve.filters import FilterError, Filters
from simstream.serve.images import LocalImages
from simstream.serve.metrics import ServeMetrics
from simstream.limits import MAX_QUERY_CHARS
from simstream.serve.queries import ProductDocument, QueryEncoder, field_names
from simstream.settings import Settings

__all__ = ["STATIC", "FOLLOW_S", "Conflict", "FilterBody", "SimilarRequest", "Services", "create_app"]

log = get_logger(__name__)
# the real folder (the strict editable install links each file from a tree of its own)
FOLLOW_S = 5.0  # serve reads the control record this often and follows a switch of generations
STATIC = Path(str(resources.files("simstream.serve") / "static" / "index.html")).resolve().parent


class Conflict(Exception):
    """A request this collection cannot answer (filters on a collection without display fields)."""


class FilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    brand: str | None = None
    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    attributes: dict[str, str] = Field(default_factory=dict)


class SimilarRequest(BaseModel):
    """Query by example: ``product`` in the event format (docs/events.md)."""

    model_config = ConfigDict(extra="forbid")
    product: ProductDocument
    k: int = 10
    filters: FilterBody = Field(default_factory=FilterBody)


class Services:
    """What the routes read through; opened at start-up unless given (tests, the demo).

    Opened by serve itself, they follow the live generation (simstream.generations): the control
    record is read every ``FOLLOW_S``, and after a switch (``simstream migrate``) the new
    generation's collections and query encoder are opened beside the old ones and swapped in,
    without a restart; queries in flight finish on the old ones."""

    def __init__(self, settings: Settings, milvus: MilvusStore | None, encoder: QueryEncoder | None) -> None:
        self.base = settings  # the deployment's settings; ``settings``: the generation served
        # (settings, milvus, encoder) of the generation served, swapped as one (``follow``)
        self.current: tuple[Settings, MilvusStore | None, QueryEncoder | None] = (settings, milvus, encoder)
        self.owns_milvus = milvus is None
        self.generation: str | None = None  # the tag served (None: given, not followed)
        self.images = LocalImages(settings)

    @property
    def settings(self) -> Settings:
        return self.current[0]

    @property
    def milvus(self) -> MilvusStore | None:
        return self.current[1]

    @property
    def encoder(self) -> QueryEncoder | None:
        return self.current[2]

    def pair(self) -> tuple[QueryEncoder, Catalog]:
        """The query encoder and the catalog of one generation (a switch may happen between two reads)."""
        _, milvus, encoder = self.current
        assert milvus is not None and encoder is not None
        return encoder, Catalog(milvus, encoder.layout)

    def _control(self, client: Any) -> ControlStore:
        return ControlStore(client, self.base.collection, timeout_s=self.base.milvus_timeout_s)

    def _open_generation(self, record: ControlRecord | None,
                         on: MilvusStore | None = None) -> tuple[str, Settings, MilvusStore, QueryEncoder]:
        """The live generation's settings, collections and query encoder; ``on``: a store whose
        client to reuse (a milvus-lite file has one server per process)."""
        tag = record.live if record is not None else FIRST
        s = generation_settings(self.base, record.generations.get(tag) if record is not None else None, tag)
        # dim None: open the collections the worker made, at their dimension; never create them
        milvus = (MilvusStore(on.client, on.uri, s.collection, None, exclusive=on.exclusive, timeout_s=s.milvus_timeout_s)
                  if on is not None else
                  MilvusStore.connect(s.resolved_milvus_uri, s.collection, None,
                                      token=s.milvus_token.get_secret_value() if s.milvus_token else None,
                                      timeout_s=s.milvus_timeout_s))
        try:
            encoder = QueryEncoder(s)
            encoder.encoder.warm_up()
            if encoder.dim != milvus.dim:
                raise ValueError(f"the encoders give dim {encoder.dim} but {milvus.products} has "
                                 f"{milvus.dim}: serve with the worker's fusion config and text model")
        except BaseException:
            if on is None:
                milvus.close()
            raise
        return tag, s, milvus, encoder

    def open(self) -> None:
        if self.milvus is None:
            uri = self.base.resolved_milvus_uri
            token = self.base.milvus_token.get_secret_value() if self.base.milvus_token else None
            client = open_client(uri, token=token, timeout_s=self.base.milvus_timeout_s)
            try:
                record = self._control(client).read()
            finally:
                close_client(client, uri)
            tag, settings, milvus, encoder = self._open_generation(record)
            self.generation, self.current = tag, (settings, milvus, encoder)
        elif self.encoder is None:
            encoder = QueryEncoder(self.settings)
            encoder.encoder.warm_up()
            self.current = (self.settings, self.milvus, encoder)
        assert self.encoder is not None and self.milvus is not None
        if self.encoder.dim != self.milvus.dim:
            raise ValueError(f"the encoders give dim {self.encoder.dim} but {self.milvus.products} has "
                             f"{self.milvus.dim}: serve with the worker's fusion config and text model")
        log.info("serve ready", collection=self.milvus.products, model=self.encoder.model,
                 generation=self.generation)

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
        tag, settings, milvus, encoder = self._open_generation(record, on=self.milvus)
        self.generation, self.current = tag, (settings, milvus, encoder)
        log.info("serve follows the live generation", generation=tag or "first", model=encoder.model,
                 collection=milvus.products)
        return True

    def close(self) -> None:
        if self.owns_milvus and self.milvus is not None:
            self.milvus.close()

    @property
    def catalog(self) -> Catalog:
        return self.pair()[1]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _k(raw: str | int | None, max_k: int, default: int = 10) -> int:
    if raw is None:
        return default
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise FilterError(f"k must be an integer, got {str(raw)[:40]!r}") from None
    if not 1 <= k <= max_k:
        raise FilterError(f"k must be between 1 and {max_k}")
    return k


def create_app(settings: Settings, *, milvus: MilvusStore | None = None,
               encoder: QueryEncoder | None = None) -> FastAPI:
    """The app; ``milvus`` / ``encoder`` given: use those (not closed here), else open them at start."""
    services = Services(settings, milvus, encoder)
    metrics = ServeMetrics()

    async def follow() -> None:
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                await asyncio.to_thread(services.follow)
            except Exception as exc:  # Milvus down or the new generation not openable: keep serving the old
                log.warning("following the control record failed; trying again", error=repr(exc)[:300])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.open()
        following = asyncio.create_task(follow()) if services.generation is not None else None
        try:
            yield
        finally:
            if following is not None:
                following.cancel()
            services.close()

    app = FastAPI(title="simstream query API", version="1", lifespan=lifespan,
                  description="Read-only similar items, search ranking and query by example (docs/serving.md).")
    app.state.services = services
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def timed(request: Request, call_next: Callable[[Request], Any]) -> Response:
        t0 = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        metrics.observe(endpoint, request.method, response.status_code, time.perf_counter() - t0)
        return response

    @app.exception_handler(FilterError)
    async def bad_request(request: Request, exc: FilterError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(EncodeError)
    async def cannot_encode(request: Request, exc: EncodeError) -> JSONResponse:
        return _error(422, f"cannot encode the query: {exc}")

    @app.exception_handler(IndexUnavailable)
    async def unavailable(request: Request, exc: IndexUnavailable) -> JSONResponse:
        return _error(503, "the index is unavailable, try again")

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = ["/".join(str(x) for x in e.get("loc", ())) + ": " + str(e.get("msg", "")) for e in exc.errors()[:5]]
        return _error(422, "; ".join(parts) or "invalid request")

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

    @app.get("/v1/products/{product_id:path}/neighbors", summary="Neighbours: published list, or filtered top-K")
    def neighbors(request: Request, product_id: str,
                  k: str | None = Query(None, description="1..SIMSTREAM_SERVE_MAX_K, default 10"),
                  brand: str | None = None, category: str | None = Query(None, description="a path prefix"),
                  price_min: str | None = None, price_max: str | None = None) -> dict[str, Any]:
        """Without filters: the list as last published. With ``brand``, ``category``, ``price_min``,
        ``price_max`` or ``attr.NAME=VALUE``: an exact filtered top-K over the current catalog."""
        filters, rest = Filters.from_query(request.query_params.multi_items(), {"k"})
        size = _k(rest.get("k"), settings.serve_max_k)
        if filters.empty:
            return services.catalog.published(product_id, size)
        return _live(lambda: services.catalog.filtered(product_id, size, filters))

    @app.get("/v1/products/{product_id:path}/image", summary="A file: image of a product (guarded)")
    def image(product_id: str) -> Response:
        url = services.catalog.served(product_id).display.image_url or ""
        try:
            data, kind = services.images.read(url)
        except (EncodeError, ValueError) as exc:
            return _error(404, f"no image served for {product_id[:80]!r}: {exc}")
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=300",
                                                         "X-Content-Type-Options": "nosniff"})

    @app.get("/v1/products/{product_id:path}", summary="What is stored about a product")
    def product(product_id: str) -> dict[str, Any]:
        return services.catalog.product(product_id)

    @app.get("/v1/search", summary="Search ranking: query text in the fused space")
    def search(request: Request, q: str | None = Query(None, description=f"1..{MAX_QUERY_CHARS} characters"),
               k: str | None = None, brand: str | None = None, category: str | None = None,
               price_min: str | None = None, price_max: str | None = None) -> dict[str, Any]:
        filters, rest = Filters.from_query(request.query_params.multi_items(), {"q", "k"})
        size = _k(rest.get("k"), settings.serve_max_k)
        text = (rest.get("q") or "").strip()
        if not text or len(text) > MAX_QUERY_CHARS:
            raise FilterError(f"q must be 1 to {MAX_QUERY_CHARS} characters")
        encoder, catalog = services.pair()
        vector = encoder.text(text)
        return {"query": text, "model": encoder.model, "query_fields": field_names(vector, encoder.layout),
                "filters": filters_view(filters), "neighbors": _live(lambda: catalog.nearest(vector, size, filters))}

    @app.post("/v1/similar", summary="Query by example: a product document not (yet) in the catalog")
    def similar(body: SimilarRequest = Body(...)) -> dict[str, Any]:
        size = _k(body.k, settings.serve_max_k)
        f = body.filters
        filters = Filters.build(f.brand, f.category, f.price_min, f.price_max, f.attributes)
        encoder, catalog = services.pair()
        vector = encoder.document(body.product)
        exclude = [body.product.product_id] if body.product.product_id else []
        return {"model": encoder.model, "query_fields": field_names(vector, encoder.layout),
                "filters": filters_view(filters),
                "neighbors": _live(lambda: catalog.nearest(vector, size, filters, exclude))}

    return app


def _live(fn: Callable[[], Any]) -> Any:
    """A live search; an old collection that cannot answer a filter is a 409, not a 500."""
    try:
        return fn()
    except ValueError as exc:
        if isinstance(exc, FilterError):
            raise
        raise Conflict(str(exc)) from None
