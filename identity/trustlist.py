"""The data space's member list: who may talk to us, at which URL, with which key.

Each service keeps its own copy in its own database. A member's key is pinned
when it is added (from a JWK file or from the DID document seen at that
moment) and only changes when an operator changes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlalchemy import Column, DateTime, Text
from sqlmodel import Field, Session, SQLModel, select

from identity.did import parse_did_document
from identity.errors import DidError
from identity.keys import normalised_public_jwk

MEMBERSHIP_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Member(SQLModel, table=True):
    __tablename__ = "trust_list_member"

    did: str = Field(primary_key=True, max_length=512)
    dsp_url: str = Field(max_length=2048)
    public_jwk: str = Field(sa_column=Column(Text, nullable=False))
    source: str = Field(max_length=32)
    # Membership claims the operator vouches for (e.g. "public-authority"); policies can test them.
    memberships: str = Field(default="[]", sa_column=Column(Text, nullable=False, server_default="[]"))
    added_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


@dataclass(frozen=True)
class MemberView:
    did: str
    dsp_url: str
    public_jwk: dict[str, str]
    source: str
    added_at: datetime
    memberships: tuple[str, ...] = ()


def _view(row: Member) -> MemberView:
    return MemberView(
        did=row.did,
        dsp_url=row.dsp_url,
        public_jwk=json.loads(row.public_jwk),
        source=row.source,
        # SQLite hands timestamps back without their zone; they are stored in UTC.
        added_at=row.added_at if row.added_at.tzinfo else row.added_at.replace(tzinfo=UTC),
        memberships=tuple(json.loads(row.memberships)),
    )


def validate_dsp_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise DidError(f"DSP URL {url!r} must be an http(s) URL without query or fragment")
    return url.rstrip("/")


def validate_did(did: str) -> str:
    if not did.startswith("did:") or len(did) > 512 or any(c.isspace() for c in did):
        raise DidError(f"{did!r} is not a DID")
    return did


def validate_memberships(memberships: Iterable[str]) -> list[str]:
    cleaned = sorted({m.strip() for m in memberships})
    for membership in cleaned:
        if not MEMBERSHIP_PATTERN.match(membership):
            raise DidError(f"membership {membership!r} must be 1-64 letters, digits, '-', '_', '.' or ':'")
    return cleaned


def add_member(
    session: Session,
    did: str,
    dsp_url: str,
    jwk: object,
    source: str = "manual",
    memberships: Iterable[str] = (),
) -> MemberView:
    """Add or replace a member (the operator's word is final for its own list)."""
    row = Member(
        memberships=json.dumps(validate_memberships(memberships)),
        did=validate_did(did),
        dsp_url=validate_dsp_url(dsp_url),
        public_jwk=json.dumps(normalised_public_jwk(jwk), sort_keys=True),
        source=source,
        added_at=utcnow(),
    )
    session.merge(row)
    session.commit()
    stored = session.get(Member, row.did)
    assert stored is not None
    return _view(stored)


def add_member_from_document(
    session: Session, expected_did: str, document: object, memberships: Iterable[str] = ()
) -> MemberView:
    resolved = parse_did_document(document, expected_did)
    return add_member(
        session,
        resolved.did,
        resolved.dsp_url,
        resolved.public_jwk,
        source="did-document",
        memberships=memberships,
    )


def list_members(session: Session) -> list[MemberView]:
    return [_view(row) for row in session.exec(select(Member).order_by(Member.did)).all()]


def get_member(session: Session, did: str) -> MemberView | None:
    row = session.get(Member, did)
    return _view(row) if row else None


def remove_member(session: Session, did: str) -> bool:
    row = session.get(Member, did)
    if row is None:
        return False
    session.delete(row)
    session.commit()
    return True
