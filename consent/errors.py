"""Errors of the consent service's domain; the API turns each into a status and a JSON body."""

from __future__ import annotations


class ConsentError(Exception):
    """A request the consent service refuses; ``status`` and ``code`` say how the API answers."""

    status = 400
    code = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ConsentError):
    status = 422
    code = "invalid"


class NotFound(ConsentError):
    """Unknown, or not the caller's: a citizen never learns whether another citizen's thing exists."""

    status = 404
    code = "not_found"


class Conflict(ConsentError):
    status = 409
    code = "conflict"


class NotController(ConsentError):
    status = 403
    code = "not_controller"


class NoAgreement(ConsentError):
    """A controller asked about a purpose (recipient, dataset) none of its data agreements covers."""

    status = 403
    code = "no_agreement"


class HistoryTampered(Exception):
    """The event history does not verify: an event was edited, removed or inserted."""

    def __init__(self, seq: int | None, message: str) -> None:
        super().__init__(message)
        self.seq = seq
