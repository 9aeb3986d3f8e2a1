"""Sign-in attempt limits shared by every replica of a service: a sliding window per key, in its database.

A limit kept in one process's memory lets each replica grant its own
allowance: two replicas of a connector behind one address would let a guesser
try twice as many API keys or passwords. The attempts are rows of
``sign_in_attempt`` instead, in the database the replicas share, and a check
and its record are one transaction: serialised on SQLite by its single writer,
and per key on PostgreSQL by a transaction-scoped advisory lock.

Keys (a client address, a citizen's account name) are personal data: only
their SHA-256, with the limit's scope, is stored (pseudonymous, not anonymous:
an address can be found again by trying them all), and every attempt deletes
the rows of its scope that have left the window.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from fastapi import Request
from sqlalchemy import BigInteger, Column, Engine, delete, func, insert, select, text
from sqlmodel import Field, SQLModel


class SignInAttempt(SQLModel, table=True):
    __tablename__ = "sign_in_attempt"

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(max_length=32)  # which limit: "operator-pages", "citizen-name", ...
    key_hash: str = Field(max_length=64, index=True)  # SHA-256 of scope and key, hex
    at_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


_ATTEMPTS = SignInAttempt.metadata.tables["sign_in_attempt"]
_A = _ATTEMPTS.c


def client_address(request: Request) -> str:
    """The key of a per-address limit: the connecting client's address."""
    return request.client.host if request.client else "unknown"


class SharedAttemptLimiter:
    """At most ``limit`` attempts per ``window`` seconds for each key, counted across replicas.

    ``attempt`` records an attempt and answers None, or, when the window is full,
    records nothing and answers the seconds until one will be allowed.
    """

    def __init__(self, scope: str, limit: int, window: float, clock: Callable[[], float] = time.time) -> None:
        self.scope = scope
        self.limit = limit
        self.window = window
        self._clock = clock  # wall-clock seconds: replicas compare their times

    def key_hash(self, key: str) -> str:
        return hashlib.sha256(f"{self.scope}\x00{key}".encode()).hexdigest()

    def attempt(self, engine: Engine, key: str) -> float | None:
        now_ms = int(self._clock() * 1000)
        window_ms = int(self.window * 1000)
        hashed = self.key_hash(key)
        mine = (_A.scope == self.scope) & (_A.key_hash == hashed)
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # One check-and-record at a time per key, whichever replica makes it.
                lock = int.from_bytes(bytes.fromhex(hashed[:16]), "big", signed=True)
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock})
            # A write first (on SQLite it takes the database's write lock for this transaction): what
            # has left the window goes, for every key of this scope.
            connection.execute(
                delete(_ATTEMPTS).where(_A.scope == self.scope, _A.at_ms <= now_ms - window_ms)
            )
            count, oldest = connection.execute(select(func.count(), func.min(_A.at_ms)).where(mine)).one()
            if int(count) >= self.limit:
                return max(0.0, (int(oldest) + window_ms - now_ms) / 1000)
            connection.execute(insert(_ATTEMPTS).values(scope=self.scope, key_hash=hashed, at_ms=now_ms))
        return None
