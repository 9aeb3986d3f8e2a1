"""Alembic migration histories: one for the connector schema, one for the consent service."""
