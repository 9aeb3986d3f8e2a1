"""What both Alembic environments do; each ``env.py`` only names its tables.

The URL comes from the caller (``tessera db upgrade``) or, when alembic is run
by hand, from ``TESSERA_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import MetaData, create_engine, pool


def _database_url() -> str:
    url = context.config.attributes.get("database_url") or os.environ.get("TESSERA_DATABASE_URL")
    if not url:
        raise SystemExit("set TESSERA_DATABASE_URL to the database to migrate")
    return str(url).replace("postgresql://", "postgresql+psycopg://", 1)


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
            context.run_migrations()
    engine.dispose()
