"""What both Alembic environments do; each ``env.py`` only names its tables.

The URL comes from the caller (``tessera db upgrade``) or, when alembic is run
by hand, from ``TESSERA_DATABASE_URL``.
"""

from __future__ import annotations

import os
import zlib

from alembic import context
from sqlalchemy import Connection, MetaData, create_engine, pool, text


def _database_url() -> str:
    url = context.config.attributes.get("database_url") or os.environ.get("TESSERA_DATABASE_URL")
    if not url:
        raise SystemExit("set TESSERA_DATABASE_URL to the database to migrate")
    return str(url).replace("postgresql://", "postgresql+psycopg://", 1)


def _serialise_migrations(connection: Connection) -> None:
    """On PostgreSQL, one migration run at a time per database (and service).

    Replicas starting together each migrate at start-up: without this, two would create the same
    tables at once and one would fail. The lock is the transaction's, taken before Alembic reads
    the current revision, so the second run waits, then finds the schema at head and does nothing.
    SQLite needs nothing: its writer lock already serialises the runs.
    """
    if connection.dialect.name != "postgresql":
        return
    service = str(context.config.attributes.get("service") or "tessera")
    key = zlib.crc32(f"tessera-migrations:{service}".encode())
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def run(target_metadata: MetaData) -> None:
    if context.is_offline_mode():
        context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            _serialise_migrations(connection)
            context.run_migrations()
    engine.dispose()
