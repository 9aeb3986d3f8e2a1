"""Waiting in a request handler for an outbox delivery in flight to be recorded.

A counter-party answers our message and may send its next one at once; that one
can arrive before our worker has recorded the answer (and released its lease).
The handler then waits, re-reading the row, for a few seconds at most. Workers
in this process announce every recorded outcome, so the wait ends as soon as
the record is committed rather than at the next re-read; a record made by
another replica (another process) is still seen by the re-read every 20 ms.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlmodel import Session

IN_FLIGHT_WAIT_SECONDS = 5.0
REREAD_SECONDS = 0.02

Row = TypeVar("Row")


class OutboxRow(Protocol):
    """A negotiation or transfer row: its outbox and the delivering worker's lease."""

    @property
    def pending_message(self) -> str | None: ...

    @property
    def lease_until(self) -> int | None: ...


Leased = TypeVar("Leased", bound=OutboxRow)


class _Records:
    """A count of the outcomes this process's outbox workers have committed, and a way to wait for the next."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def announce(self) -> None:
        """An outcome (delivered, retry, given up, lease released) has just been committed."""
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def wait_after(self, seen: int, timeout: float) -> None:
        """Until an outcome later than ``seen`` is announced, or ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self._count != seen, timeout)


records = _Records()


def wait_for_record(session: Session, row: Row, done: Callable[[Row], bool]) -> Row:
    """``row`` re-read until ``done(row)``, for ``IN_FLIGHT_WAIT_SECONDS`` at most (then as it is)."""
    deadline = time.monotonic() + IN_FLIGHT_WAIT_SECONDS
    seen = records.count
    while not done(row) and time.monotonic() < deadline:
        records.wait_after(seen, REREAD_SECONDS)
        seen = records.count  # taken before the re-read: a record committed after it wakes the next wait
        session.refresh(row)
    return row


def in_flight(row: OutboxRow) -> bool:
    """Is a worker delivering this row's pending message now (its lease held and unexpired)?"""
    return (
        row.pending_message is not None
        and row.lease_until is not None
        and row.lease_until > int(time.time() * 1000)
    )


def settle(session: Session, row: Leased, allowed_now: Callable[[Leased], bool]) -> Leased:
    """``row`` once the delivery in flight (if any) is recorded, unless ``allowed_now(row)`` already."""
    return wait_for_record(session, row, lambda current: not in_flight(current) or allowed_now(current))
