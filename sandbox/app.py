"""Sandbox app factory, ``/_sandbox/*`` control routes and fault middleware.

``create_app`` mounts every imitated processor under its own prefix. The
fault middleware wraps processor routes only; control routes are never
faulted, delayed or authenticated, so tests can always inspect and reset.
The middleware also keeps the last requests' method, path, query and headers
(``GET /_sandbox/requests``), so tests can check what a client puts there.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from typing import Protocol

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.cleverreach import CleverReach, bad_request
from sandbox.common import json_body
from sandbox.errors import ApiError, error_response
from sandbox.faults import ERROR_FAULTS, SLOW_MIN_MS, FaultInjector
from sandbox.flexperto import Flexperto
from sandbox.isic import Isic
from sandbox.nect import Nect
from sandbox.timify import Timify

FAULT_HEADER = b"x-sandbox-fault"

# Set when the middleware deliberately leaves a response incomplete, so the
# log filter below can silence uvicorn's error about it without hiding real
# incomplete responses. uvicorn logs from the same task (same context) right
# after the app returns, so the value is visible there.
_intentional_drop: contextvars.ContextVar[bool] = contextvars.ContextVar("sandbox_intentional_drop", default=False)


class Processor(Protocol):
    """What the app needs from an imitated processor module."""

    name: str
    prefix: str
    api: APIRouter
    control: APIRouter

    def reset(self) -> None: ...

    def snapshot(self) -> dict: ...

    def revoke_request_token(self, headers: dict[str, str]) -> None: ...

    def error_response(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response: ...


class _DropLogFilter(logging.Filter):
    """Drops uvicorn's "returned without completing response" for drop faults."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_intentional_drop.get() and "without completing response" in str(record.msg))


def _install_drop_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropLogFilter) for f in logger.filters):
        logger.addFilter(_DropLogFilter())


class RequestLog:
    """The last `size` processor requests as they arrived: method, path, query, headers.

    ``path`` is decoded, as routes see it; ``raw_path`` is what came over the wire, so a
    test can check how a client percent-encoded an id.

    Kept apart from the processors' state (``/_sandbox/state``): paths and headers may hold
    what a client should not have put there, and that is what tests look for here. Bodies
    are not kept.
    """

    def __init__(self, size: int = 2000) -> None:
        self.entries: deque[dict] = deque(maxlen=size)
        self.total = 0  # requests seen since the last reset, also those no longer kept

    def add(self, scope: Scope) -> None:
        self.total += 1
        self.entries.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "raw_path": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
                "query": scope["query_string"].decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            }
        )

    def reset(self) -> None:
        self.entries.clear()
        self.total = 0

    def snapshot(self) -> dict:
        return {"total": self.total, "kept": self.entries.maxlen, "requests": list(self.entries)}


class FaultMiddleware:
    """ASGI middleware injecting latency and faults into processor routes, and logging them."""

    def __init__(
        self, app: ASGIApp, injector: FaultInjector, processors: list[Processor], requests: RequestLog
    ) -> None:
        self.app = app
        self.injector = injector
        self.prefixes = [(p.prefix, p) for p in processors]
        self.requests = requests

    def _processor(self, path: str) -> Processor | None:
        for prefix, processor in self.prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return processor
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        processor = self._processor(scope["path"])
        if processor is None:
            await self.app(scope, receive, send)
            return
        self.requests.add(scope)  # faulted ones too: the client sent them all the same
        # Decide before the first await so the draw order is the arrival order.
        kind = self.injector.decide()
        delay_ms = self.injector.latency_ms
        if kind == "slow":
            delay_ms += max(self.injector.latency_ms, SLOW_MIN_MS)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if kind is None:
            await self.app(scope, receive, send)
        elif kind in ERROR_FAULTS:
            status, message, headers = ERROR_FAULTS[kind]
            # Each processor answers an injected error in its own error shape.
            response = processor.error_response(status, message, headers)
            response.raw_headers.append((FAULT_HEADER, kind.encode()))
            await response(scope, receive, send)
        elif kind == "drop":
            await self._drop(scope, receive, send)
        else:  # slow, token_expiry: handled normally, after revoking for the latter
            if kind == "token_expiry":
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
                processor.revoke_request_token(headers)
            await self.app(scope, receive, _tagging_send(send, kind))

    async def _drop(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Process the request fully, then break the connection mid-body.

        The response head declares the full Content-Length but only half the
        body is sent and the response is never completed, so the server closes
        the connection: clients see an incomplete read (requests raises
        ChunkedEncodingError, httpx RemoteProtocolError) although the state
        change already happened - the case idempotent retries must handle.
        """
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        declared = max(len(body), 1)
        headers = [(k, v) for k, v in (start or {}).get("headers", []) if k.lower() != b"content-length"]
        headers += [(b"content-length", str(declared).encode()), (FAULT_HEADER, b"drop")]
        await send({"type": "http.response.start", "status": (start or {}).get("status", 200), "headers": headers})
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        _intentional_drop.set(True)


def _tagging_send(send: Send, kind: str) -> Send:
    async def tagged(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (FAULT_HEADER, kind.encode())]}
        await send(message)

    return tagged


def _control_router(injector: FaultInjector, processors: list[Processor], requests: RequestLog) -> APIRouter:
    router = APIRouter(prefix="/_sandbox", tags=["sandbox control"])

    async def fault_settings(request: Request) -> dict:
        body = await json_body(request, bad_request, empty={})
        if not isinstance(body, dict):
            raise bad_request("expected an object")
        return {k: body[k] for k in ("fault_rate", "latency_ms", "seed", "kinds") if k in body}

    def configure(settings: dict) -> None:
        try:
            injector.configure(**settings)
        except ValueError as exc:
            raise bad_request(str(exc)) from None

    @router.get("/state")
    async def state() -> Response:
        """Every processor's state plus injected-fault counts."""
        body: dict = {p.name: p.snapshot() for p in processors}
        body["faults"] = injector.counts
        # Rendered here, synchronously, because snapshots share live objects.
        return JSONResponse(body)

    @router.post("/reset")
    async def reset(request: Request) -> Response:
        """Reset all state; optional body ``{fault_rate, latency_ms, seed, kinds}``."""
        configure(await fault_settings(request))
        injector.reset()
        requests.reset()
        for p in processors:
            p.reset()
        return JSONResponse({"ok": True, "faults": injector.config()})

    @router.get("/requests")
    async def request_log() -> Response:
        """The last processor requests (method, path, query, headers; no bodies), oldest
        first, with ``total`` seen since the reset and how many are ``kept``."""
        return JSONResponse(requests.snapshot())

    @router.post("/faults")
    async def faults(request: Request) -> Response:
        """Reconfigure faults without touching processor state or counters."""
        configure(await fault_settings(request))
        return JSONResponse(injector.config())

    @router.get("/faults")
    async def fault_config() -> Response:
        """Current fault configuration."""
        return JSONResponse(injector.config())

    return router


def create_app(
    fault_rate: float = 0.0,
    latency_ms: int = 0,
    seed: int | None = None,
    token_ttl_s: int = 3600,
) -> FastAPI:
    """Build the sandbox app with fresh in-memory state.

    ``fault_rate`` (0..1) is the probability that a processor request gets a
    fault, ``latency_ms`` delays every processor request, ``seed`` makes the
    fault sequence reproducible, ``token_ttl_s`` is the OAuth token lifetime.
    """
    injector = FaultInjector(fault_rate=fault_rate, latency_ms=latency_ms, seed=seed)
    processors: list[Processor] = [
        CleverReach(token_ttl_s=token_ttl_s),
        Timify(token_ttl_s=token_ttl_s),
        Flexperto(token_ttl_s=token_ttl_s),
        Isic(token_ttl_s=token_ttl_s),
        Nect(),
    ]

    app = FastAPI(title="psync processor sandbox", version="1")
    for processor in processors:
        app.include_router(processor.api, prefix=processor.prefix, tags=[processor.name])
        app.include_router(processor.control, prefix=f"/_sandbox/{processor.name}", tags=["sandbox control"])
    requests = RequestLog()
    app.include_router(_control_router(injector, processors, requests))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown routes / wrong methods answer in the error shape of the processor whose
        # prefix they fall under, else CleverReach's.
        path = request.url.path
        owner = next((p for p in processors if path == p.prefix or path.startswith(p.prefix + "/")), None)
        render = owner.error_response if owner is not None else error_response
        return render(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    app.add_middleware(FaultMiddleware, injector=injector, processors=processors, requests=requests)
    app.state.injector = injector
    app.state.requests = requests
    app.state.processors = {p.name: p for p in processors}
    _install_drop_log_filter()
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8700,
    fault_rate: float = 0.0,
    latency_ms: int = 0,
    seed: int | None = None,
    token_ttl_s: int = 3600,
) -> None:
    """Run the sandbox with uvicorn until interrupted (blocking)."""
    app = create_app(fault_rate=fault_rate, latency_ms=latency_ms, seed=seed, token_ttl_s=token_ttl_s)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
