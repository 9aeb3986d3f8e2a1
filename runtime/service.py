"""What every participant service is made of, and how it is started.

``ServiceCore`` holds the long-lived objects (engine, key, authenticator,
peer client, metrics). ``base_app`` builds the routes both services share:
the DID document, ``/health`` and ``/metrics``. ``serve`` checks everything
an operator can get wrong before it binds the port, then runs uvicorn.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from identity.did import build_did_document
from identity.keys import load_private_key
from identity.peer_auth import PeerAuthenticator
from identity.peer_client import PeerClient
from runtime.database import check_database, make_engine
from runtime.errors import StartupError
from runtime.http import Metrics, install_http_plumbing
from runtime.logging import configure_logging, get_logger
from runtime.migrate import upgrade
from runtime.settings import ParticipantSettings

if TYPE_CHECKING:
    from policies.engine import PolicyEngine


@dataclass
class ServiceCore:
    settings: ParticipantSettings
    engine: Engine
    key: Ed25519PrivateKey
    metrics: Metrics
    authenticator: PeerAuthenticator
    peer_client: PeerClient

    @classmethod
    def create(cls, settings: ParticipantSettings, engine: Engine | None = None) -> ServiceCore:
        from identity.errors import KeyFileError

        try:
            key = load_private_key(settings.resolved_private_key_file)
        except KeyFileError as exc:
            raise StartupError(str(exc)) from None
        engine = engine or make_engine(settings.resolved_database_url)
        metrics = Metrics()
        authenticator = PeerAuthenticator(
            engine,
            settings.did,
            clock_skew=settings.clock_skew_seconds,
            on_reject=lambda reason: metrics.peer_auth_rejections.labels(reason).inc(),
        )
        client = PeerClient(settings.did, key, lifetime=settings.token_lifetime_seconds)
        return cls(settings, engine, key, metrics, authenticator, client)

    @cached_property
    def policy_engine(self) -> PolicyEngine:
        """The connector's policy engine (loaded, and compiled if need be, on first use)."""
        from policies.engine import PolicyEngine

        return PolicyEngine(self.engine)


BackgroundJob = Callable[[], Coroutine[Any, Any, None]]
RECANCEL_SECONDS = 0.5


async def stop_tasks(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again those still running.

    One cancellation can be lost: a library that catches it at the wrong moment (a timeout of its
    own expiring as the cancellation arrives) lets a polling loop go on, and the process would
    never finish shutting down. So each task still running is cancelled again every
    ``RECANCEL_SECONDS``.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
    for task in tasks:  # retrieve what each ended with, so that none is reported as never retrieved
        if not task.cancelled():
            task.exception()


def base_app(
    core: ServiceCore,
    *,
    title: str,
    services: list[dict[str, Any]],
    background: Sequence[BackgroundJob] = (),
) -> FastAPI:
    """A FastAPI app with the routes every participant serves.

    Each ``background`` job runs as a task from start-up until shutdown, when it is cancelled.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(job()) for job in background]
        try:
            yield
        finally:
            await stop_tasks(tasks)
            await core.peer_client.aclose()

    app = FastAPI(title=title, version="2025-1", lifespan=lifespan)
    app.state.core = core
    app.state.peer_authenticator = core.authenticator
    install_http_plumbing(app, core.metrics)
    did_document = build_did_document(core.settings.did, core.key.public_key(), services)

    @app.get("/.well-known/did.json", tags=["discovery"])
    @app.get("/did.json", include_in_schema=False)  # did:web with a path resolves to …/did.json
    def did_json() -> JSONResponse:
        return JSONResponse(did_document, media_type="application/did+json")

    @app.get("/health", tags=["operations"])
    def health(request: Request) -> JSONResponse:
        try:
            with core.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            get_logger("tessera.health").error("database check failed")
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "did": core.settings.did})

    return app


def prepare_database(settings: ParticipantSettings, service: str) -> None:
    """Check the database answers, then bring its schema to the newest migration."""
    engine = make_engine(settings.resolved_database_url)
    try:
        check_database(engine)
    finally:
        engine.dispose()
    upgrade(service, settings.resolved_database_url)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets created with it; without it every kept-alive response waited ~40 ms for a
    # delayed ACK (bench/bench_catalog.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == 98:  # EADDRINUSE
            raise StartupError(
                f"port {port} on {host} is in use: stop what runs there or change 'port'"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ParticipantSettings, service: str, build_app: Callable[[ServiceCore], FastAPI]) -> None:
    """Run one service in the foreground until interrupted."""
    configure_logging(settings.log_level, service=f"{service}:{settings.name}")
    log = get_logger("tessera.serve")
    # Everything an operator can get wrong is checked before anything changes: the key
    # and the port first, then the database is migrated.
    core = ServiceCore.create(settings)
    sock = bind_socket(settings.host, settings.port)
    try:
        prepare_database(settings, service)
    except BaseException:
        sock.close()
        core.engine.dispose()
        raise
    app = build_app(core)
    config = uvicorn.Config(
        app, http="httptools", log_config=None, access_log=False, proxy_headers=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    log.info("serving", did=settings.did, url=settings.public_url, database=_kind_of(settings))
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
        core.engine.dispose()


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (not on Windows), else asyncio's own (None).

    Measured in the negotiation benchmark, alternating runs: about 3 % less CPU per negotiation.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _kind_of(settings: ParticipantSettings) -> str:
    return "postgresql" if settings.resolved_database_url.startswith("postgresql") else "sqlite"
