"""Server-side sessions of signed-in citizens, and the pending OpenID Connect sign-ins.

The cookie holds a random token; the database holds only its SHA-256, so a
leaked database row cannot be replayed as a cookie. A new session is made at
every sign-in (the token of any earlier one is never reused: no session
fixation) and its row is deleted at sign-out, so revocation is immediate.
Each session has its own CSRF token for the forms of its pages.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, DateTime, delete
from sqlmodel import Field, Session, SQLModel

SESSION_LIFETIME = timedelta(hours=2)
PENDING_SIGN_IN_LIFETIME = timedelta(minutes=10)
MAX_TOKEN_LENGTH = 128


def utcnow() -> datetime:
    return datetime.now(UTC)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they are stored in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class CitizenSession(SQLModel, table=True):
    __tablename__ = "citizen_session"

    token_hash: str = Field(primary_key=True, max_length=64)
    citizen_id: str = Field(foreign_key="citizen_account.id", index=True, max_length=64)
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))


class PendingOidcSignIn(SQLModel, table=True):
    """A sign-in sent to the OpenID Connect provider: bound to the browser by a cookie whose hash is the key."""

    __tablename__ = "pending_oidc_sign_in"

    binding_hash: str = Field(primary_key=True, max_length=64)
    state: str = Field(max_length=128)
    nonce: str = Field(max_length=128)
    code_verifier: str = Field(max_length=128)
    next_path: str = Field(max_length=512)
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))


_session = CitizenSession.__table__.c  # type: ignore[attr-defined]
_pending = PendingOidcSignIn.__table__.c  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SignedIn:
    token: str
    citizen_id: str
    csrf_token: str


def start_session(session: Session, citizen_id: str, *, replaces: str | None = None) -> SignedIn:
    """A new session for the citizen; the one whose token the browser presented (if any) ends."""
    now = utcnow()
    if replaces:
        session.execute(delete(CitizenSession).where(_session.token_hash == token_hash(replaces)))
    # Expired sessions of anyone are cleared on the way; they are useless rows.
    session.execute(delete(CitizenSession).where(_session.expires_at < now))
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    session.add(
        CitizenSession(
            token_hash=token_hash(token),
            citizen_id=citizen_id,
            csrf_token=csrf,
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    session.commit()
    return SignedIn(token, citizen_id, csrf)


def find_session(session: Session, token: str | None) -> SignedIn | None:
    """The live session this cookie value names, else None."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = session.get(CitizenSession, token_hash(token))
    if row is None or _aware(row.expires_at) <= utcnow():
        return None
    return SignedIn(token, row.citizen_id, row.csrf_token)


def end_session(session: Session, token: str) -> None:
    session.execute(delete(CitizenSession).where(_session.token_hash == token_hash(token)))
    session.commit()


def end_all_sessions(session: Session, citizen_id: str) -> None:
    session.execute(delete(CitizenSession).where(_session.citizen_id == citizen_id))
    session.commit()


@dataclass(frozen=True)
class PendingSignIn:
    binding: str
    state: str
    nonce: str
    code_verifier: str
    next_path: str


def begin_oidc_sign_in(session: Session, next_path: str) -> PendingSignIn:
    now = utcnow()
    session.execute(delete(PendingOidcSignIn).where(_pending.expires_at < now))
    pending = PendingSignIn(
        binding=secrets.token_urlsafe(32),
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        code_verifier=secrets.token_urlsafe(48),
        next_path=next_path,
    )
    session.add(
        PendingOidcSignIn(
            binding_hash=token_hash(pending.binding),
            state=pending.state,
            nonce=pending.nonce,
            code_verifier=pending.code_verifier,
            next_path=next_path,
            expires_at=now + PENDING_SIGN_IN_LIFETIME,
        )
    )
    session.commit()
    return pending


def take_oidc_sign_in(session: Session, binding: str | None) -> PendingSignIn | None:
    """The browser's pending sign-in, removed so it is used once; None when there is none (or it expired)."""
    if not binding or len(binding) > MAX_TOKEN_LENGTH:
        return None
    row = session.get(PendingOidcSignIn, token_hash(binding))
    if row is None:
        return None
    session.delete(row)
    session.commit()
    if _aware(row.expires_at) <= utcnow():
        return None
    return PendingSignIn(binding, row.state, row.nonce, row.code_verifier, row.next_path)
