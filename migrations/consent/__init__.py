"""Alembic history of the consent database."""
