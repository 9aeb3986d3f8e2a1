"""Citizen accounts: local names with argon2 password hashes, optionally linked to an OpenID Connect subject.

A citizen signs in either with name and password, or through the city's OpenID
Connect provider; an account found by its (issuer, subject) link is the same
account whichever way the citizen came in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Column, DateTime, UniqueConstraint
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from consent.models import Citizen
from consent.service import create_citizen

CITIZEN_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
_hasher = PasswordHasher()
# Checked when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """An account operation an operator or citizen asked for that cannot be done (message says why)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class CitizenAccount(SQLModel, table=True):
    """How a citizen signs in; its id is the citizen's id in the consent records."""

    __tablename__ = "citizen_account"
    __table_args__ = (UniqueConstraint("oidc_issuer", "oidc_subject", name="uq_citizen_account_oidc"),)

    id: str = Field(primary_key=True, foreign_key="consent_citizen.id", max_length=64)
    name: str = Field(max_length=64, unique=True)
    display_name: str = Field(default="", max_length=200)
    password_hash: str | None = Field(default=None, max_length=512)
    oidc_issuer: str | None = Field(default=None, max_length=512)
    oidc_subject: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


@dataclass(frozen=True)
class CitizenView:
    id: str
    name: str
    display_name: str
    has_password: bool
    oidc_linked: bool

    @property
    def shown_name(self) -> str:
        return self.display_name or self.name


def _view(row: CitizenAccount) -> CitizenView:
    return CitizenView(
        id=row.id,
        name=row.name,
        display_name=row.display_name,
        has_password=row.password_hash is not None,
        oidc_linked=row.oidc_subject is not None,
    )


def check_name(name: str) -> str:
    if not CITIZEN_NAME_PATTERN.match(name):
        raise AccountError(
            "a citizen name is 1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise AccountError(f"a password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")
    return password


def new_password() -> str:
    """A password an operator can hand to a citizen (about 96 bits)."""
    return secrets.token_urlsafe(12)


def add_citizen(
    session: Session,
    name: str,
    *,
    password: str | None = None,
    display_name: str = "",
    oidc_issuer: str | None = None,
    oidc_subject: str | None = None,
) -> CitizenView:
    """Create an account; a citizen without a password can only sign in through OpenID Connect."""
    check_name(name)
    if (oidc_issuer is None) != (oidc_subject is None):
        raise AccountError("an OpenID Connect link needs both the issuer and the subject")
    password_hash = _hasher.hash(check_password(password)) if password is not None else None
    if find_by_name(session, name) is not None:
        raise AccountError(f"a citizen named {name!r} exists already")
    # The data subject of the consent records first; the account is how that subject signs in.
    citizen_id = create_citizen(session, f"citizen-{uuid.uuid4()}")
    row = CitizenAccount(
        id=citizen_id,
        name=name,
        display_name=display_name[:200],
        password_hash=password_hash,
        oidc_issuer=oidc_issuer,
        oidc_subject=oidc_subject,
        created_at=utcnow(),
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        _forget_citizen(session, citizen_id)
        if find_by_name(session, name) is not None:
            raise AccountError(f"a citizen named {name!r} exists already") from None
        raise AccountError("that OpenID Connect subject is linked to another citizen already") from None
    return _view(row)


def _forget_citizen(session: Session, citizen_id: str) -> None:
    """Remove the subject made for an account that could not be created (a concurrent duplicate)."""
    row = session.get(Citizen, citizen_id)
    if row is not None:
        session.delete(row)
        session.commit()


def find_by_name(session: Session, name: str) -> CitizenView | None:
    row = session.exec(select(CitizenAccount).where(CitizenAccount.name == name)).first()
    return _view(row) if row is not None else None


def get_citizen(session: Session, citizen_id: str) -> CitizenView | None:
    row = session.get(CitizenAccount, citizen_id)
    return _view(row) if row is not None else None


def list_citizens(session: Session) -> list[CitizenView]:
    return [_view(row) for row in session.exec(select(CitizenAccount).order_by(CitizenAccount.name)).all()]


def verify_password(session: Session, name: str, password: str) -> CitizenView | None:
    """The citizen whose name and password these are, else None (same cost either way)."""
    row = (
        session.exec(select(CitizenAccount).where(CitizenAccount.name == name)).first()
        if len(name) <= 64
        else None
    )
    stored = row.password_hash if row is not None else None
    try:
        _hasher.verify(stored or _DUMMY_HASH, password[:MAX_PASSWORD_LENGTH])
    except (VerificationError, InvalidHashError):
        return None
    if row is None or stored is None:
        return None
    if _hasher.check_needs_rehash(stored):  # parameters were raised since this hash was made
        row.password_hash = _hasher.hash(password)
        session.add(row)
        session.commit()
    return _view(row)


def set_password(session: Session, name: str, password: str) -> CitizenView:
    row = session.exec(select(CitizenAccount).where(CitizenAccount.name == check_name(name))).first()
    if row is None:
        raise AccountError(f"no citizen named {name!r}")
    row.password_hash = _hasher.hash(check_password(password))
    session.add(row)
    session.commit()
    return _view(row)


def link_oidc(session: Session, name: str, issuer: str, subject: str) -> CitizenView:
    row = session.exec(select(CitizenAccount).where(CitizenAccount.name == check_name(name))).first()
    if row is None:
        raise AccountError(f"no citizen named {name!r}")
    row.oidc_issuer, row.oidc_subject = issuer, subject
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise AccountError("that OpenID Connect subject is linked to another citizen already") from None
    return _view(row)


def citizen_for_oidc(session: Session, issuer: str, subject: str, *, display_name: str = "") -> CitizenView:
    """The account linked to (issuer, subject); a new one, named after a hash of the link, when none is."""
    row = session.exec(
        select(CitizenAccount).where(
            CitizenAccount.oidc_issuer == issuer, CitizenAccount.oidc_subject == subject
        )
    ).first()
    if row is not None:
        return _view(row)
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:16]
    try:
        return add_citizen(
            session,
            f"oidc-{digest}",
            display_name=display_name,
            oidc_issuer=issuer,
            oidc_subject=subject,
        )
    except AccountError:  # a concurrent first sign-in of the same subject created it
        row = session.exec(
            select(CitizenAccount).where(
                CitizenAccount.oidc_issuer == issuer, CitizenAccount.oidc_subject == subject
            )
        ).first()
        if row is None:
            raise
        return _view(row)
