"""Running Alembic from code: the only way a schema is made."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData
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


def upgrade(service: str, database_url: str, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(service, database_url), revision)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StartupError(f"migrating database {redact_url(database_url)} failed: {reason}") from None


def schema_differences(engine: Engine, metadata: MetaData) -> list[Any]:
    """What autogenerate would change: empty when models and migrations agree."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))
