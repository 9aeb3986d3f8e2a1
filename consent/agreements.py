"""Organisations (controllers) and their versioned data agreements.

A data agreement belongs to one controller and one purpose. Each revision is
immutable: its content (the terms below plus the agreement id, version and
controller) is stored in RFC 8785 form with its SHA-256. Revising with
``material=True`` (the default) means consent given for older revisions no
longer counts; ``material=False`` (a typo in the notice) keeps it.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from consent.errors import Conflict, NotFound
from consent.hashing import canonical_json, content_hash, new_pseudonym_key
from consent.ledger import next_seq, now_millis, record_change
from consent.models import AgreementRevision, DataAgreement, Organisation

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
Token = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Did = Annotated[str, StringConstraints(pattern=r"^did:[a-z0-9]+:[^\s]{1,500}$", max_length=512)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")
    did: Did
    name: Text


class Notice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[str, StringConstraints(min_length=1, max_length=10_000, strip_whitespace=True)]
    version: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")]
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "en"


class AgreementTerms(BaseModel):
    """What a controller registers or revises (the API's request body)."""

    model_config = ConfigDict(extra="forbid")

    name: Token
    controller_name: Text
    purpose: Token
    purpose_description: Annotated[
        str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)
    ]
    recipients: list[Recipient] = Field(min_length=1, max_length=50)
    data_categories: list[Token] = Field(min_length=1, max_length=50)
    datasets: list[Token] = Field(default_factory=list, max_length=100)  # empty: any of the controller's
    lawful_basis: Literal["dpv:Consent", "dpv:ExplicitConsent"] = "dpv:Consent"
    retention: Annotated[str, StringConstraints(pattern=r"^P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?$")]
    consent_duration_days: int | None = Field(default=None, ge=1, le=3650)
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    notice: Notice

    @field_validator("recipients")
    @classmethod
    def _distinct_recipients(cls, value: list[Recipient]) -> list[Recipient]:
        if len({r.did for r in value}) != len(value):
            raise ValueError("each recipient may appear once")
        return value

    @model_validator(mode="after")
    def _window(self) -> AgreementTerms:
        if self.retention == "P":
            raise ValueError("retention must be an ISO 8601 duration such as P1Y or P90D")
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


def _millis(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def revision_content(
    agreement_id: str, version: int, controller: str, terms: AgreementTerms
) -> dict[str, Any]:
    content = terms.model_dump(mode="json")
    content["valid_from"] = _millis(terms.valid_from)
    content["valid_until"] = _millis(terms.valid_until)
    content.update({"agreement_id": agreement_id, "version": version, "controller": controller})
    return content


def ensure_organisation(session: Session, did: str, name: str | None = None) -> Organisation:
    """The controller's row, created (with a fresh pseudonymisation key) on first use."""
    organisation = session.get(Organisation, did)
    if organisation is None:
        # Several first requests of a new connector may race here: each inserts unless a row is
        # there by then, and all read back the one that won (and so the same pseudonym key).
        values = {
            "did": did,
            "name": name or did,
            "pseudonym_key": new_pseudonym_key(),
            "registered_at": now_millis(),
        }
        dialect = session.get_bind().dialect.name
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        session.execute(insert(Organisation).values(**values).on_conflict_do_nothing(index_elements=["did"]))
        organisation = session.get(Organisation, did, populate_existing=True)
        if organisation is None:  # not possible once the insert has run; never return a half-made row
            raise RuntimeError(f"the organisation {did} could not be stored")
    if name and organisation.name != name:
        organisation.name = name
        session.add(organisation)
    return organisation


def pseudonym_key_of(session: Session, controller_did: str) -> str:
    """The controller's pseudonymisation key (made on first request); committed."""
    key = ensure_organisation(session, controller_did).pseudonym_key
    session.commit()
    return key


def _add_revision(
    session: Session, agreement: DataAgreement, terms: AgreementTerms, version: int, *, material: bool
) -> AgreementRevision:
    content = revision_content(agreement.id, version, agreement.controller_did, terms)
    now = now_millis()
    revision = AgreementRevision(
        agreement_id=agreement.id,
        version=version,
        content=canonical_json(content).decode("utf-8"),
        content_hash=content_hash(content),
        created_at=now,
    )
    session.add(revision)
    seq, _ = next_seq(session)
    record_change(
        session,
        seq,
        kind="agreement",
        controller_did=agreement.controller_did,
        at=now,
        agreement_id=agreement.id,
        state="material" if material else "editorial",
    )
    return revision


def register_agreement(session: Session, controller_did: str, terms: AgreementTerms) -> AgreementRevision:
    """A new agreement (revision 1) of ``controller_did``; Conflict when the name is taken."""
    ensure_organisation(session, controller_did, terms.controller_name)
    taken = session.exec(
        select(DataAgreement).where(
            DataAgreement.controller_did == controller_did, DataAgreement.name == terms.name
        )
    ).first()
    if taken is not None:
        raise Conflict(f"an agreement named {terms.name!r} exists ({taken.id}): revise it instead")
    agreement = DataAgreement(
        id=uuid.uuid4().hex,
        controller_did=controller_did,
        name=terms.name,
        purpose=terms.purpose,
        latest_version=1,
        min_consent_version=1,
        created_at=now_millis(),
    )
    session.add(agreement)
    session.flush()
    revision = _add_revision(session, agreement, terms, 1, material=True)
    session.commit()
    return revision


def revise_agreement(
    session: Session, controller_did: str, agreement_id: str, terms: AgreementTerms, *, material: bool = True
) -> AgreementRevision:
    """A new revision; the same terms as the latest revision change nothing (returns it)."""
    agreement = own_agreement(session, controller_did, agreement_id)
    if terms.name != agreement.name:
        raise Conflict(f"an agreement's name cannot change (it is {agreement.name!r})")
    if terms.purpose != agreement.purpose:
        raise Conflict(
            f"an agreement's purpose cannot change (it is {agreement.purpose!r}): register a new agreement"
        )
    latest = latest_revision(session, agreement)
    candidate = revision_content(agreement.id, agreement.latest_version, controller_did, terms)
    if content_hash(candidate) == latest.content_hash:
        return latest
    ensure_organisation(session, controller_did, terms.controller_name)
    version = agreement.latest_version + 1
    agreement.latest_version = version
    if material:
        agreement.min_consent_version = version
    session.add(agreement)
    revision = _add_revision(session, agreement, terms, version, material=material)
    session.commit()
    return revision


def own_agreement(session: Session, controller_did: str, agreement_id: str) -> DataAgreement:
    agreement = session.get(DataAgreement, agreement_id)
    if agreement is None or agreement.controller_did != controller_did:
        raise NotFound(f"no agreement {agreement_id!r} of yours")
    return agreement


def latest_revision(session: Session, agreement: DataAgreement) -> AgreementRevision:
    revision = session.get(AgreementRevision, (agreement.id, agreement.latest_version))
    assert revision is not None, "an agreement always has its latest revision"
    return revision


def revision_dict(revision: AgreementRevision) -> dict[str, Any]:
    content: dict[str, Any] = json.loads(revision.content)
    return content


def agreements_of(session: Session, controller_did: str) -> list[DataAgreement]:
    return list(
        session.exec(
            select(DataAgreement)
            .where(DataAgreement.controller_did == controller_did)
            .order_by(col(DataAgreement.name))
        ).all()
    )


def revisions_of(session: Session, agreement_id: str) -> list[AgreementRevision]:
    return list(
        session.exec(
            select(AgreementRevision)
            .where(AgreementRevision.agreement_id == agreement_id)
            .order_by(AgreementRevision.version)  # type: ignore[arg-type]
        ).all()
    )


def agreement_view(agreement: DataAgreement, revision: AgreementRevision) -> dict[str, Any]:
    """The JSON the API answers with for one agreement at one revision."""
    return {
        "id": agreement.id,
        "name": agreement.name,
        "controller": agreement.controller_did,
        "purpose": agreement.purpose,
        "version": revision.version,
        "latest_version": agreement.latest_version,
        "min_consent_version": agreement.min_consent_version,
        "content_hash": revision.content_hash,
        "terms": revision_dict(revision),
    }
