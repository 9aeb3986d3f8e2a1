"""Replay protection: every accepted token id is remembered until it expires.

The memory is a table, so all replicas of a service sharing one database see
each other's tokens. The primary key (issuer, jti) makes "record if new" one
atomic insert on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import time

from sqlalchemy import BigInteger, Column, Connection, bindparam, delete, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel

PURGE_EVERY = 1000


class SeenToken(SQLModel, table=True):
    __tablename__ = "seen_token"

    issuer: str = Field(primary_key=True, max_length=512)
    jti: str = Field(primary_key=True, max_length=128)
    expires_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


# Built once: a table-level INSERT with bound parameters compiles once and is then
# served from SQLAlchemy's statement cache (an ORM insert built per call cost
# about 150 µs of CPU per request; bench/bench_peer_auth.py).
_SEEN = SeenToken.metadata.tables["seen_token"]
_INSERT_SEEN = insert(_SEEN)
_PURGE_SEEN = delete(_SEEN).where(_SEEN.c.expires_at < bindparam("cutoff"))


class ReplayGuard:
    """Records token ids; says whether one was already seen."""

    def __init__(self) -> None:
        self._since_purge = 0

    def record(
        self, connection: Connection, issuer: str, jti: str, expires_at: int, *, commit: bool = True
    ) -> bool:
        """True when (issuer, jti) is new and now recorded; False for a replay.

        With ``commit`` (the default) the record is committed at once and a replay rolled back;
        without, the insert joins the connection's transaction, whose owner commits or rolls back.
        """
        try:
            connection.execute(_INSERT_SEEN, {"issuer": issuer, "jti": jti, "expires_at": expires_at})
            if commit:
                connection.commit()
        except IntegrityError:
            if commit:
                connection.rollback()
            return False
        self._since_purge += 1
        if self._since_purge >= PURGE_EVERY:
            self._since_purge = 0
            self.purge_expired(connection, commit=commit)
        return True

    @staticmethod
    def purge_expired(connection: Connection, now: float | None = None, *, commit: bool = True) -> int:
        """Forget token ids whose tokens have expired; returns how many (``commit``: at once)."""
        result = connection.execute(_PURGE_SEEN, {"cutoff": int(time.time() if now is None else now)})
        if commit:
            connection.commit()
        return int(result.rowcount or 0)
