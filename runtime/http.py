"""HTTP plumbing shared by both services: request ids, access log, metrics, errors."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.routing import Match

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


def _route_template(request: Request) -> str:
    # Label by route template, not raw path: raw paths would explode label cardinality.
    # Routing records the matched route in the scope; routes of included routers are
    # only found there (the app's own route list holds the router, not its routes).
    matched_path = getattr(request.scope.get("route"), "path", None)
    if isinstance(matched_path, str):
        return matched_path
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "unmatched"


def install_http_plumbing(app: FastAPI, metrics: Metrics) -> None:
    log = get_logger("tessera.http")

    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if "\x00" in request.url.path:  # no database stores NUL; refuse it before any handler sees it
            return JSONResponse({"error": "the path contains a NUL character"}, status_code=400)
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(request)
            metrics.requests.labels(request.method, route, str(status)).inc()
            metrics.latency.labels(request.method, route).observe(elapsed)
            # The path only: query strings may carry data tokens in later flows.
            log.info(
                "request",
                method=request.method,
                path=request.url.path,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                peer=getattr(request.state, "peer", None) and request.state.peer.did,
            )
            request_id_var.reset(token)

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
