"""Database engines: SQLite in the participant directory, or PostgreSQL.

SQLite runs in WAL mode with ``synchronous=NORMAL``: commits are durable
against process crashes and cost microseconds instead of an fsync each. Writers
in one process queue on a lock of their own (runtime.sqlite_writer) rather
than on SQLite's sleeping busy handler.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from runtime.errors import StartupError
from runtime.sqlite_writer import connection_factory

# How long a writer waits for another before "database is locked": SQLite's busy timeout for
# other processes, the in-process writer lock (runtime.sqlite_writer) for this one.
BUSY_TIMEOUT_SECONDS = 5.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
    # LIKE is case-sensitive on PostgreSQL; QuerySpec's "like" must match the same rows here ("ilike" ignores case).
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        connect_args: dict[str, Any] = {"check_same_thread": False}
        pooling: dict[str, Any] = {}
        path = make_url(url).database
        if path and path != ":memory:":
            connect_args["factory"] = connection_factory(path, BUSY_TIMEOUT_SECONDS)
            # Room for every thread of the request thread pool (40): a connection past the pool's
            # size is closed on return, and the next one pays for opening the file and its pragmas.
            pooling = {"pool_size": 20, "max_overflow": 20}
        engine = create_engine(url, connect_args=connect_args, **pooling)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args={"connect_timeout": 5}
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL we cannot parse is shown as its scheme only
        return url.split("://", 1)[0] + "://…"


def check_database(engine: Engine) -> None:
    """Raise StartupError in one line when the database does not answer."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StartupError(f"database {redact_url(str(engine.url))} does not answer: {reason}") from None


def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session
