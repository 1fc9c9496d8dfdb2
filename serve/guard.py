"""What stands between the internet and the query API: API keys, a body cap checked before any
parsing, per-key rate limits, and RFC 9457 problem details for every error.

Errors, each a stable ``code`` (the ``type`` is ``urn:simstream:problem:<code>``)::

    400 invalid_query        a parameter, filter, weight or cursor the client got wrong
    401 unauthorized         no or an unknown API key (SIMSTREAM_SERVE_API_KEYS set)
    404 not_found            an unknown or deleted product, or no such route
    405 method_not_allowed
    409 conflict             filters this (old) collection cannot answer
    413 body_too_large       a body over SIMSTREAM_SERVE_MAX_BODY_BYTES (refused before it is parsed)
    422 invalid_request      a body that does not validate
    422 cannot_encode        a query document whose field cannot be encoded (e.g. a bad image)
    429 rate_limited         over SIMSTREAM_SERVE_RATE_LIMIT for this key (Retry-After says when)
    503 index_unavailable    Milvus does not answer
    504 deadline_exceeded    not answered within SIMSTREAM_SERVE_DEADLINE_S
    500 internal             a bug: logged with the request id

Health, readiness, metrics, the explorer page and the API docs stay open; keys are compared in
constant time and only their names are logged.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any, Awaitable, Callable, Mapping, MutableMapping

from fastapi.responses import JSONResponse
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel

__all__ = ["PROBLEM_TYPE", "PROBLEM_MEDIA_TYPE", "OPEN_PATHS", "OPEN_PREFIXES", "TITLES", "Problem", "ProblemBody",
           "problem", "problem_body", "parse_api_keys", "BodyLimit", "Guard", "Deadline"]

PROBLEM_TYPE = "urn:simstream:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"
# never behind a key: probes, scrapes, the explorer page (it asks for a key when the API wants one), the docs
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
                        "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed", 409: "Conflict",
          413: "Body too large", 422: "Unprocessable request", 429: "Too many requests",
          503: "Service unavailable", 504: "Deadline exceeded", 500: "Internal error"}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class ProblemBody(BaseModel):
    """An error as RFC 9457 problem details (what ``/docs`` shows for every error)."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    request_id: str | None = None


class Problem(Exception):
    """An error to answer as problem details."""

    def __init__(self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, dict(headers or {})


def problem_body(status: int, code: str, detail: str, request_id: str | None = None) -> dict[str, Any]:
    return {"type": PROBLEM_TYPE + code, "title": TITLES.get(status, "Error"), "status": status, "code": code,
            "detail": detail, "request_id": request_id}


def problem(status: int, code: str, detail: str, request_id: str | None = None,
            headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem_body(status, code, detail, request_id), status_code=status,
                        media_type=PROBLEM_MEDIA_TYPE, headers=dict(headers or {}))


def parse_api_keys(raw: str) -> dict[str, str]:
    """``name:key,name:key`` (or bare keys, named key1, key2, ...) as key -> name."""
    out: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, sep, key = part.partition(":")
        name, key = (name.strip(), key.strip()) if sep else (f"key{i + 1}", name.strip())
        if not key:
            raise ValueError(f"SIMSTREAM_SERVE_API_KEYS: entry {i + 1} has an empty key")
        out[key] = name
    return out


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return None


def _request_id(scope: Scope) -> str | None:
    return _header(scope, b"x-request-id")


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with 413, by its Content-Length or, without one,
    while it streams in, before the app parses a byte of it."""

    def __init__(self, app: App, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem(413, "body_too_large", f"the request body is over {self.max_bytes} bytes "
                                             "(SIMSTREAM_SERVE_MAX_BODY_BYTES)", _request_id(scope))(scope, receive, send)


class Guard:
    """API keys (header ``X-API-Key`` or ``Authorization: Bearer``) and a moving-window rate limit
    per key (per client address when keys are off); the key's name goes to the access log."""

    def __init__(self, app: App, keys: Mapping[str, str], rate: str | None) -> None:
        self.app = app
        self.keys = dict(keys)
        self.rate = parse(rate) if rate else None
        self.limiter = MovingWindowRateLimiter(MemoryStorage()) if rate else None

    def _name(self, given: str) -> str | None:
        found = None
        for key, name in self.keys.items():  # every key compared, in constant time each
            if hmac.compare_digest(key.encode(), given.encode()):
                found = name
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" or path in OPEN_PATHS \
                or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        name = None
        if self.keys:
            given = _header(scope, b"x-api-key")
            auth = _header(scope, b"authorization")
            if given is None and auth and auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            name = self._name(given) if given else None
            if name is None:
                await problem(401, "unauthorized", "a valid API key is required: send it as X-API-Key",
                              _request_id(scope), {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        scope.setdefault("state", {})["api_key"] = name
        if self.limiter is not None and self.rate is not None:
            who = name or (scope.get("client") or ("?",))[0]
            if not self.limiter.hit(self.rate, who):
                reset = self.limiter.get_window_stats(self.rate, who).reset_time
                wait = max(1, int(reset - time.time() + 0.999))
                await problem(429, "rate_limited", f"over the rate limit of {self.rate} for this key",
                              _request_id(scope), {"Retry-After": str(wait)})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Deadline:
    """A request not answered within ``seconds`` gets a 504 then (its work, in a thread that cannot
    be stopped, finishes on its own and its answer is dropped); ``done(scope, status, seconds)`` is
    called once per request for the histogram and the access log. Plain ASGI, so it adds no task
    or response copy to a request answered in time."""

    def __init__(self, app: App, seconds: float, done: Callable[[Scope, int, float], None]) -> None:
        self.app, self.seconds, self.done = app, seconds, done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"status": 500, "late": False}

        async def tracked(message: MutableMapping[str, Any]) -> None:
            if state["late"]:
                return  # answered 504 already
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, tracked))
        try:
            done, _ = await asyncio.wait({work}, timeout=self.seconds)
            if done:
                work.result()
            else:
                state["late"], state["status"] = True, 504
                work.add_done_callback(lambda t: t.cancelled() or t.exception())
                await problem(504, "deadline_exceeded", f"not answered within {self.seconds} s "
                              "(SIMSTREAM_SERVE_DEADLINE_S)", _request_id(scope))(scope, receive, send)
        finally:
            self.done(scope, int(state["status"]), time.perf_counter() - t0)
