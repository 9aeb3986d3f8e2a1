"""Auditor accounts: created and removed by the operator, passwords kept as argon2id hashes.

An auditor signs in to the audit pages with a name and a password of its own; it never
learns the management API key and cannot use the operator's pages or API. Checking a
password for a name that does not exist costs as much as for one that does, so the
sign-in form does not tell which names exist.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from connector.auditor.models import AuditorRow

AUDITOR = AuditorRow.__table__  # type: ignore[attr-defined]
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024


class AuditorError(ValueError):
    """An auditor account cannot be created, changed or removed; the message says why."""


@dataclass(frozen=True)
class Auditor:
    name: str
    session_salt: str
    created_at: int


@cache
def hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the RFC 9106 low-memory parameters


@cache
def _decoy_hash() -> str:
    return hasher().hash(secrets.token_urlsafe(24))


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise AuditorError(
            f"{name[:80]!r} is not an auditor name: 1 to 64 characters, lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AuditorError(f"an auditor password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if password != password.strip():
        raise AuditorError("an auditor password does not start or end with white space")
    return password


def generate_password() -> str:
    """A random password (24 URL-safe characters, 144 bits)."""
    return secrets.token_urlsafe(18)


def add_auditor(engine: Engine, name: str, password: str, *, reset: bool = False) -> Auditor:
    """Create an account (or, with ``reset``, give an existing one a new password and end its sessions)."""
    check_name(name)
    password_hash = hasher().hash(check_password(password))
    auditor = Auditor(name, secrets.token_hex(16), int(time.time() * 1000))
    with engine.begin() as conn:
        if reset:
            changed = conn.execute(
                update(AUDITOR)
                .where(AUDITOR.c.name == name)
                .values(password_hash=password_hash, session_salt=auditor.session_salt)
            ).rowcount
            if changed == 0:
                raise AuditorError(f"there is no auditor {name!r} to reset")
            return auditor
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(AUDITOR).values(
                        name=name,
                        password_hash=password_hash,
                        session_salt=auditor.session_salt,
                        created_at=auditor.created_at,
                    )
                )
        except IntegrityError:
            raise AuditorError(f"auditor {name!r} exists already (give --reset for a new password)") from None
    return auditor


def list_auditors(engine: Engine) -> list[Auditor]:
    with engine.connect() as conn:
        rows = conn.execute(select(AUDITOR).order_by(AUDITOR.c.name))
        return [Auditor(r.name, r.session_salt, int(r.created_at)) for r in rows]


def remove_auditor(engine: Engine, name: str) -> None:
    """Delete the account; its sessions end with it."""
    with engine.begin() as conn:
        if conn.execute(delete(AUDITOR).where(AUDITOR.c.name == name)).rowcount == 0:
            raise AuditorError(f"there is no auditor {name[:80]!r}")


def get_auditor(engine: Engine, name: str) -> Auditor | None:
    with engine.connect() as conn:
        row = conn.execute(select(AUDITOR).where(AUDITOR.c.name == name)).first()
    return None if row is None else Auditor(row.name, row.session_salt, int(row.created_at))


def authenticate(engine: Engine, name: str, password: str) -> Auditor | None:
    """The auditor when the password is theirs; None otherwise (same work for unknown names)."""
    row = None
    if NAME_PATTERN.match(name) and len(password) <= MAX_PASSWORD:
        with engine.connect() as conn:
            row = conn.execute(select(AUDITOR).where(AUDITOR.c.name == name)).first()
    try:
        hasher().verify(row.password_hash if row is not None else _decoy_hash(), password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    return Auditor(row.name, row.session_salt, int(row.created_at))
