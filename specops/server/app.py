"""`create_app(settings)`: the FastAPI application, its middleware and lifespan.

Start-up returns at once (so /health/live answers during a long sync); the model sync runs
in the background and the engine worker starts when the models are ready.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from . import openai_routes, routes
from .contract import install_contract
from .errors import error_body, install_error_handlers
from .metrics import Metrics
from .service import Service
from .shutdown import DrainOnSignal

log = logging.getLogger("specops.server")

OPEN_PATHS = frozenset({"/health", "/health/live", "/metrics"})  # never behind the API key
ENDPOINTS = frozenset({"/generate", "/v1/models", "/v1/completions", "/v1/chat/completions",
                       "/docs", "/openapi.json"}) | OPEN_PATHS


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ApiKeyMiddleware:
    """With an API key set, every path but health and metrics needs `Authorization: Bearer <key>`.

    Compared in constant time, as digests (so not even the key's length leaks); the key and
    the header are never logged."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.expected = app, _digest(f"Bearer {api_key}".encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(_digest(given), self.expected):
                body = error_body("missing or wrong API key (Authorization: Bearer <key>)",
                                  "authentication_error", code="invalid_api_key")
                await JSONResponse(body, 401, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class JsonBody:
    """Read every POST body as JSON whatever its Content-Type: `curl -d` sends form encoding,
    which FastAPI would otherwise not parse (and report as a confusing type error)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over `max_bytes`, before the app reads it: at once from Content-Length, or
    as soon as a chunked body passes the limit (the body read so far is then handed on whole)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                return await self._refuse(int(declared), scope, receive, send)
            return await self.app(scope, receive, send)  # the server holds the body to its length
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(size, scope, receive, send, at_least=True)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, size: int, scope: Scope, receive: Receive, send: Send, at_least: bool = False) -> None:
        body = error_body(f"the request body is {'over ' if at_least else ''}{size} bytes; the limit is "
                          f"{self.max_bytes} bytes (max_body_bytes): send a shorter prompt, or raise "
                          "SPECOPS_MAX_BODY_BYTES", "invalid_request_error", code="body_too_large")
        # no `Connection: close`: uvicorn reads and drops the rest of the body, so the client gets
        # this answer rather than a connection reset
        await JSONResponse(body, 413)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, as one message; then the connection's own messages (disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


class RequestCounter:
    """specops_requests_total{endpoint, status}; unknown paths count as endpoint="other"."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]  # if the app fails before it starts a response

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()


def configure_logging(level: str) -> None:
    logger = logging.getLogger("specops")
    logger.setLevel(level.upper())
    if not logger.handlers:  # uvicorn configures only its own loggers
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        DrainOnSignal(service).install()
        service.start()
        yield
        service.stop()

    app = FastAPI(title="SpecOps", version="0.1.0", lifespan=lifespan,
                  description="Speculative-decoding LLM inference on ONNX Runtime (CPU). Limits marked "
                              "`x-limit` are the settings' and, once the model is ready, the loaded model's.")
    app.state.service = service
    app.include_router(routes.router)
    app.include_router(openai_routes.router)
    install_error_handlers(app)
    install_contract(app, service, OPEN_PATHS)
    app.add_middleware(JsonBody)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(RequestCounter, metrics=service.metrics)  # outermost: counts 401s too
    return app
