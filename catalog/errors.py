"""Errors of catalog operations; the management API maps each to EDC's error types."""

from __future__ import annotations

from typing import Any


class CatalogOperationError(Exception):
    def __init__(self, message: str, path: str | None = None, invalid_value: Any = None) -> None:
        super().__init__(message)
        self.path = path
        self.invalid_value = invalid_value


class NotFoundError(CatalogOperationError):
    """No object of that kind has that id."""


class ConflictError(CatalogOperationError):
    """The id is taken, or the object is still referenced."""


class InvalidInputError(CatalogOperationError):
    """The object is not acceptable as sent."""
