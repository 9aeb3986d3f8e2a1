"""Replay protection: every accepted token id is remembered until it expires.

The memory is a table, so all replicas of a service sharing one database see
each other's tokens. The primary key (issuer, jti) makes "record if new" one
atomic insert on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import time

from sqlalchemy import BigInteger, Column, CursorResult, delete, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel

PURGE_EVERY = 1000


class SeenToken(SQLModel, table=True):
    __tablename__ = "seen_token"

    issuer: str = Field(primary_key=True, max_length=512)
    jti: str = Field(primary_key=True, max_length=128)
    expires_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


class ReplayGuard:
    """Records token ids; says whether one was already seen."""

    def __init__(self) -> None:
        self._since_purge = 0

    def record(self, session: Session, issuer: str, jti: str, expires_at: int) -> bool:
        """True when (issuer, jti) is new and now recorded; False for a replay."""
        try:
            session.execute(insert(SeenToken).values(issuer=issuer, jti=jti, expires_at=expires_at))
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
        self._since_purge += 1
        if self._since_purge >= PURGE_EVERY:
            self._since_purge = 0
            self.purge_expired(session)
        return True

    @staticmethod
    def purge_expired(session: Session, now: float | None = None) -> int:
        cutoff = int(time.time() if now is None else now)
        result = session.execute(delete(SeenToken).where(SeenToken.expires_at < cutoff))  # type: ignore[arg-type]
        session.commit()
        return int(result.rowcount or 0) if isinstance(result, CursorResult) else 0
