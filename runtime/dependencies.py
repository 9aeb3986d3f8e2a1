"""FastAPI dependencies shared by both services."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlmodel import Session

from runtime.service import ServiceCore


def service_core(request: Request) -> ServiceCore:
    core: ServiceCore = request.app.state.core
    return core


def db_session(request: Request) -> Iterator[Session]:
    """One database session per request, closed when the response is sent."""
    with Session(service_core(request).engine) as session:
        yield session
