"""Alembic history of the connector database."""
