"""Alembic environment of the connector database (see migrations/environment.py)."""

from connector.schema import metadata
from migrations.environment import run

run(metadata)
