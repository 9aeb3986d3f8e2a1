"""FastAPI dependencies shared by both services."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from sqlmodel import Session

from runtime.service import ServiceCore


def service_core(request: Request) -> ServiceCore:
    core: ServiceCore = request.app.state.core
    return core


async def db_session(request: Request) -> AsyncIterator[Session]:
    """One database session per request, closed when the response is sent.

    Opened and closed on the event loop: opening does no I/O and closing only hands the connection
    back to the pool, cheaper than the two thread hand-offs a plain generator dependency costs.
    """
    with Session(service_core(request).engine) as session:
        yield session
