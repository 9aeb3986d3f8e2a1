"""HTTP plumbing shared by both services: request ids, access log, metrics, errors."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from identity.peer_auth import PeerAuthError
from runtime.logging import get_logger, request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
# (request path, message) -> extra members of a 401 body, or None
AuthErrorShape = Callable[[str, str], dict[str, Any] | None]
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
    """One registry per app, so several apps in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tessera_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tessera_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.peer_auth_rejections = Counter(
            "tessera_peer_auth_rejections",
            "Peer requests refused, by reason",
            ["reason"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _route_template(request: Request, status: int) -> str:
    # Label by route template, not raw path: raw paths would explode label cardinality.
    # Routing records the matched route in the scope; routes of included routers are
    # only found there (the app's own route list holds the router, not its routes).
    matched_path = getattr(request.scope.get("route"), "path", None)
    if isinstance(matched_path, str):
        return matched_path
    if status == 404:  # routing matched nothing: a second scan would find nothing, at its full cost again
        return "unmatched"
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "unmatched"


class RequestContextMiddleware:
    """Request id, access log line and metrics for every HTTP request.

    A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: that one runs the app
    in a separate task behind a memory stream, which cost about a third of a millisecond per
    request and a copy of every chunk of a streamed body.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.log = get_logger("tessera.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if "\x00" in path:  # no database stores NUL; refuse it before any handler sees it
            await JSONResponse({"error": "the path contains a NUL character"}, status_code=400)(
                scope, receive, send
            )
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            request = Request(scope)
            route = _route_template(request, status)
            method: str = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            peer = scope.get("state", {}).get("peer")
            # The path only: query strings may carry data tokens in later flows.
            self.log.info(
                "request",
                method=method,
                path=path,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                peer=peer.did if peer is not None else None,
            )
            request_id_var.reset(token)


def install_http_plumbing(app: FastAPI, metrics: Metrics) -> None:
    log = get_logger("tessera.http")
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    @app.exception_handler(PeerAuthError)
    async def peer_auth_failed(request: Request, exc: PeerAuthError) -> JSONResponse:
        log.warning("peer authentication refused", reason=exc.reason, detail=exc.message)
        content: dict[str, Any] = {
            "error": "invalid_token",
            "reason": exc.reason,
            "error_description": exc.message,
        }
        # A protocol can give refusals its own error shape (DSP: CatalogError, ...), keeping these fields;
        # where both name a member the protocol's wins (a DSP error's "reason" must be an array).
        shape: AuthErrorShape | None = getattr(request.app.state, "auth_error_shape", None)
        if shape is not None:
            content = {**content, **(shape(request.url.path, exc.message) or {})}
        return JSONResponse(
            status_code=401,
            content=content,
            headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{exc.reason}"'},
        )

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
