"""Helpers for the data-plane tests: collecting streams, gates that behave in known ways."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from connector.dataplane.gate import GateContext, GateDecision
from tests.conftest import free_port

CONTEXT = GateContext(
    controller="did:web:transit.example",
    recipient="did:web:city.example",
    purpose="traffic-planning",
    dataset_id="card-trips",
    transfer_id="transfer-1",
)


async def collect(chunks: AsyncIterable[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def from_parts(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class ListGate:
    """Releases exactly the subjects it was told (a stand-in for the consent service's answers)."""

    def __init__(self, allowed: Collection[str], reason: str = "no consent") -> None:
        self.allowed = frozenset(allowed)
        self.reason = reason
        self.calls: list[list[str]] = []

    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        self.calls.append(list(subjects))
        return GateDecision(self.allowed & set(subjects), f"decision-{len(self.calls)}", self.reason)


class AlwaysYesGate:
    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        return GateDecision(frozenset(subjects), "yes")


class RaisingGate:
    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        raise ConnectionError("consent service unreachable")


class HangingGate:
    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class GarbageGate:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def decide(self, subjects: Sequence[str], context: GateContext) -> GateDecision:
        return self.answer  # type: ignore[return-value]  # garbage on purpose


@contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """A real uvicorn server for ``app`` on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def raw_tcp_server(answer: bytes) -> Iterator[str]:
    """A TCP server that answers every connection with ``answer`` (garbage, not HTTP) and closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        thread.join(timeout=30)
        listener.close()
