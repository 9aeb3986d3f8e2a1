"""Running Alembic from code: the only way a schema is made."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from runtime.database import redact_url
from runtime.errors import StartupError


def alembic_config(service: str, database_url: str) -> Config:
    """Config for ``service`` ('connector' or 'consent'), independent of the working directory."""
    location = Path(str(resources.files("migrations") / service))
    config = Config()
    config.set_main_option("script_location", str(location))
    config.attributes["database_url"] = database_url
    config.attributes["service"] = service
    return config


@contextmanager
def _one_migration_at_a_time(database_url: str) -> Iterator[None]:
    """Serialise migration runs on one SQLite file across processes (a lock file beside it).

    SQLite runs DDL outside transactions, so two processes starting on a fresh file (``tessera
    serve`` and a CLI command, say) would both create the same tables and one would fail. The
    second waits here, then finds the schema at head. PostgreSQL runs are serialised by an
    advisory lock inside the migration's transaction (``migrations/environment.py``).
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    lock_path = Path(url.database).with_name(Path(url.database).name + ".migrate-lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(service: str, database_url: str, revision: str = "head") -> None:
    try:
        with _one_migration_at_a_time(database_url):
            command.upgrade(alembic_config(service, database_url), revision)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StartupError(f"migrating database {redact_url(database_url)} failed: {reason}") from None


def schema_differences(engine: Engine, metadata: MetaData) -> list[Any]:
    """What autogenerate would change: empty when models and migrations agree."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))
