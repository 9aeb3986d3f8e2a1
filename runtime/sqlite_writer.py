"""One writer at a time per SQLite file in this process, handed over at once.

SQLite lets one connection write at a time. A second writer that finds the
file locked is parked by SQLite's busy handler, which sleeps and retries on a
fixed schedule (1, 2, 5, 10, ... up to 100 ms per nap), so under load a writer
often sleeps for milliseconds after the lock was released. Measured in the
negotiation benchmark: the first write of a transaction waited 15 ms on
average for a lock held for under 1 ms.

Inside one process we can do better: every connection to the same file takes
a process-wide lock before its first write, and gives it up the moment its
transaction ends (commit, rollback, close), so the next writer wakes at once.
SQLite's own lock and busy timeout still guard against other processes (the
CLI, a second server started by mistake).

The rule for "first write" is the sqlite3 module's own (Python 3.11, legacy
transaction control): it opens a transaction implicitly before INSERT,
UPDATE, DELETE and REPLACE, and runs everything else outside one; so that is
exactly when the lock is taken (and at an explicit BEGIN or an outermost
SAVEPOINT), and ``in_transaction`` says when to let go.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

# Statements before which the sqlite3 module opens a transaction (Modules/_sqlite/cursor.c), an
# explicit BEGIN (the transfer log's ``BEGIN IMMEDIATE``) and a SAVEPOINT outside a transaction
# (SQLAlchemy's ``begin_nested``; SQLite then opens one): held from there to the end.
_WRITE_KEYWORDS = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN", "SAVEPOINT")

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def writer_lock_for(path: str) -> threading.Lock:
    """The process-wide writer lock of the SQLite file at ``path``."""
    key = os.path.realpath(path)
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _opens_transaction(statement: str) -> bool:
    return statement.lstrip()[:9].upper().startswith(_WRITE_KEYWORDS)


class SerialisedWriterConnection(sqlite3.Connection):
    """A sqlite3 connection that holds its file's writer lock for the length of each write transaction."""

    writer_lock: threading.Lock  # set on the per-file subclass made by ``connection_factory``
    lock_timeout: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holds_writer_lock = False

    def take_writer_lock(self, statement: str) -> None:
        if self._holds_writer_lock or self.in_transaction or not _opens_transaction(statement):
            return
        if not self.writer_lock.acquire(timeout=self.lock_timeout):
            # What SQLite itself says when its busy timeout runs out: callers already handle it.
            raise sqlite3.OperationalError("database is locked")
        self._holds_writer_lock = True

    def release_writer_lock(self) -> None:
        if self._holds_writer_lock and not self.in_transaction:
            self._holds_writer_lock = False
            self.writer_lock.release()

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or SerialisedWriterCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        # sqlite3's own shortcut makes its cursor in C, past ``cursor()``: route it through ours.
        return self.cursor().execute(sql, parameters)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_writer_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_writer_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._drop_writer_lock()  # a closed connection has no transaction, whatever it said before

    def __del__(self) -> None:
        self._drop_writer_lock()  # dropped without close(): must not keep every other writer waiting

    def _drop_writer_lock(self) -> None:
        if getattr(self, "_holds_writer_lock", False):
            self._holds_writer_lock = False
            self.writer_lock.release()


class SerialisedWriterCursor(sqlite3.Cursor):
    """Takes the connection's writer lock before a statement that opens a write transaction."""

    connection: SerialisedWriterConnection

    def execute(self, sql: str, parameters: Any = (), /) -> SerialisedWriterCursor:
        self.connection.take_writer_lock(sql)
        try:
            super().execute(sql, parameters)
        finally:
            self.connection.release_writer_lock()  # the statement failed before BEGIN, or ran in autocommit
        return self

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> SerialisedWriterCursor:
        self.connection.take_writer_lock(sql)
        try:
            super().executemany(sql, seq_of_parameters)
        finally:
            self.connection.release_writer_lock()
        return self


def connection_factory(path: str, lock_timeout: float) -> type[SerialisedWriterConnection]:
    """A connection class (sqlite3.connect's ``factory``) sharing ``path``'s writer lock."""
    return type(
        "SerialisedWriterConnection",
        (SerialisedWriterConnection,),
        {"writer_lock": writer_lock_for(path), "lock_timeout": lock_timeout},
    )
