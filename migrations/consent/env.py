"""Alembic environment of the consent database (see migrations/environment.py)."""

from consent.schema import metadata
from migrations.environment import run

run(metadata)
