"""Waiting in a request handler for an outbox delivery in flight to be recorded.

A counter-party answers our message and may send its next one at once; that one
can arrive before our worker has recorded the answer (and released its lease).
The handler then waits, re-reading the row, for a few seconds at most. Workers
in this process announce every recorded outcome with the row it was for, so the
wait ends as soon as that row's record is committed rather than at the next
re-read, and records of other rows wake no re-read (with 8 negotiations in
flight, waking every waiter on every record re-read each row several times); a
record made by another replica (another process) is still seen by the re-read
every 20 ms.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlmodel import Session

IN_FLIGHT_WAIT_SECONDS = 5.0
REREAD_SECONDS = 0.02
# Rows whose latest record is remembered: far more than can be waited for at once (a waiter that
# finds its row forgotten still re-reads every REREAD_SECONDS).
REMEMBERED_ROWS = 4096


class OutboxRow(Protocol):
    """A negotiation or transfer row: its outbox and the delivering worker's lease."""

    @property
    def id(self) -> str: ...

    @property
    def pending_message(self) -> str | None: ...

    @property
    def lease_until(self) -> int | None: ...


Leased = TypeVar("Leased", bound=OutboxRow)


class _Records:
    """The outcomes this process's outbox workers have committed, by row, and a way to wait for one."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0
        self._latest: OrderedDict[str, int] = OrderedDict()  # row id -> count at its latest record

    @property
    def count(self) -> int:
        return self._count

    def announce(self, row_id: str) -> None:
        """An outcome (delivered, retry, given up, lease released) for ``row_id`` has just been committed."""
        with self._changed:
            self._count += 1
            self._latest[row_id] = self._count
            self._latest.move_to_end(row_id)
            if len(self._latest) > REMEMBERED_ROWS:
                self._latest.popitem(last=False)
            self._changed.notify_all()

    def wait_after(self, row_id: str, seen: int, timeout: float) -> None:
        """Until an outcome for ``row_id`` later than ``seen`` is announced, or ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self._latest.get(row_id, 0) > seen, timeout)


records = _Records()


def wait_for_record(session: Session, row: Leased, done: Callable[[Leased], bool]) -> Leased:
    """``row`` re-read until ``done(row)``, for ``IN_FLIGHT_WAIT_SECONDS`` at most (then as it is)."""
    deadline = time.monotonic() + IN_FLIGHT_WAIT_SECONDS
    row_id = row.id
    seen = records.count
    while not done(row) and (left := deadline - time.monotonic()) > 0:
        records.wait_after(row_id, seen, min(REREAD_SECONDS, left))
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
