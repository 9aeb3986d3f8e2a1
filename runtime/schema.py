"""Per-service table sets.

SQLModel registers every table in one global MetaData; each service copies the
tables it owns into its own MetaData, which its migrations and its
models-versus-migrations check both use.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import MetaData, Table
from sqlmodel import SQLModel


def metadata_of(models: Iterable[type[SQLModel]]) -> MetaData:
    metadata = MetaData()
    for model in models:
        table: Table = model.__table__  # type: ignore[attr-defined]
        table.to_metadata(metadata)
    return metadata
