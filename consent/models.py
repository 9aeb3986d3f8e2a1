"""Tables of the consent record model (ISO/IEC TS 27560 as the W3C DPV guide maps it).

- ``consent_organisation``: a controller (a data-space member, by DID) and its pseudonymisation key.
- ``consent_data_agreement`` / ``consent_agreement_revision``: a controller's data agreement for one
  purpose; every revision is immutable and carries the SHA-256 of its RFC 8785 form.
- ``consent_citizen``: a data subject (an id only; accounts live in the page's tables).
- ``consent_subject_identifier``: a citizen's identifier at a controller (a transit card number...),
  stored only as an HMAC-SHA256 keyed hash.
- ``consent_record``: a citizen, an agreement and one of its recipients; the state columns are a
  cache of what the events say, written in the same transaction as each event.
- ``consent_event``: the append-only history with DPV states, chained by hash in ``seq`` order.
- ``consent_feed_head`` / ``consent_change``: one global sequence; every change that can alter a
  decision takes the next number (under the head row's lock, so numbers follow commit order) and
  is written to the change log that the decision index and the connectors' change feed read.
- ``consent_transfer_summary``: what connectors reported having released about a citizen.

Times are epoch milliseconds (UTC).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class Organisation(SQLModel, table=True):
    __tablename__ = "consent_organisation"

    did: str = Field(primary_key=True, max_length=512)
    name: str = Field(max_length=200)
    # base64url of 32 random bytes; shared with the controller's connector (see docs/consent.md).
    pseudonym_key: str = Field(max_length=64)
    registered_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class DataAgreement(SQLModel, table=True):
    __tablename__ = "consent_data_agreement"
    __table_args__ = (
        UniqueConstraint("controller_did", "name", name="uq_consent_data_agreement_name"),
        Index("ix_consent_data_agreement_purpose", "controller_did", "purpose"),
    )

    id: str = Field(primary_key=True, max_length=64)
    controller_did: str = Field(
        sa_column=Column(String(512), ForeignKey("consent_organisation.did"), nullable=False)
    )
    name: str = Field(max_length=128)  # the controller's own key for the agreement
    purpose: str = Field(max_length=256)  # fixed for the agreement's life: a new purpose is a new agreement
    latest_version: int = Field(sa_column=Column(Integer, nullable=False))
    # Consent given for a revision older than this no longer counts (the change was material).
    min_consent_version: int = Field(sa_column=Column(Integer, nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class AgreementRevision(SQLModel, table=True):
    __tablename__ = "consent_agreement_revision"

    agreement_id: str = Field(
        sa_column=Column(String(64), ForeignKey("consent_data_agreement.id"), primary_key=True)
    )
    version: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    content: str = Field(sa_column=Column(Text, nullable=False))  # RFC 8785 JSON of the revision
    content_hash: str = Field(max_length=64)  # hex SHA-256 of ``content``
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class Citizen(SQLModel, table=True):
    __tablename__ = "consent_citizen"

    id: str = Field(primary_key=True, max_length=64)
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class SubjectIdentifier(SQLModel, table=True):
    __tablename__ = "consent_subject_identifier"

    controller_did: str = Field(
        sa_column=Column(String(512), ForeignKey("consent_organisation.did"), primary_key=True)
    )
    subject_hash: str = Field(sa_column=Column(String(64), primary_key=True))  # hex HMAC-SHA256
    citizen_id: str = Field(
        sa_column=Column(String(64), ForeignKey("consent_citizen.id"), nullable=False, index=True)
    )
    label: str = Field(max_length=64)  # what kind of identifier, e.g. "card_id"
    hint: str = Field(max_length=8)  # the last characters, so a citizen recognises it
    registered_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class ConsentRecord(SQLModel, table=True):
    __tablename__ = "consent_record"
    __table_args__ = (
        UniqueConstraint("citizen_id", "agreement_id", "recipient_did", name="uq_consent_record_subject"),
        Index("ix_consent_record_agreement", "agreement_id", "recipient_did"),
    )

    id: str = Field(primary_key=True, max_length=64)
    citizen_id: str = Field(sa_column=Column(String(64), ForeignKey("consent_citizen.id"), nullable=False))
    agreement_id: str = Field(
        sa_column=Column(String(64), ForeignKey("consent_data_agreement.id"), nullable=False)
    )
    recipient_did: str = Field(max_length=512)
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The state after the last event (derived; rewritten with each event).
    state: str = Field(max_length=32)
    agreement_version: int = Field(sa_column=Column(Integer, nullable=False))
    state_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    last_seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class ConsentEvent(SQLModel, table=True):
    __tablename__ = "consent_event"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    record_id: str = Field(
        sa_column=Column(String(64), ForeignKey("consent_record.id"), nullable=False, index=True)
    )
    citizen_id: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    agreement_id: str = Field(max_length=64)
    agreement_version: int = Field(sa_column=Column(Integer, nullable=False))
    agreement_hash: str = Field(max_length=64)
    recipient_did: str = Field(max_length=512)
    state: str = Field(max_length=32)  # a DPV consent state, e.g. "ConsentGiven"
    at: int = Field(sa_column=Column(BigInteger, nullable=False))
    actor: str = Field(max_length=128)
    method: str = Field(max_length=64)
    expires_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    receipt: str | None = Field(
        default=None, sa_column=Column(Text, nullable=True)
    )  # not hashed: signs the hash


class FeedHead(SQLModel, table=True):
    __tablename__ = "consent_feed_head"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_event_hash: str = Field(max_length=64)


class ConsentChange(SQLModel, table=True):
    __tablename__ = "consent_change"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = Field(max_length=16)  # "consent" | "identifier" | "agreement"
    at: int = Field(sa_column=Column(BigInteger, nullable=False))
    controller_did: str = Field(max_length=512, index=True)
    agreement_id: str | None = Field(default=None, max_length=64)
    citizen_id: str | None = Field(default=None, max_length=64)
    recipient_did: str | None = Field(default=None, max_length=512)
    state: str | None = Field(default=None, max_length=32)
    # Subject hashes this change concerns (JSON list), so caches can drop exactly those.
    subject_hashes: str = Field(sa_column=Column(Text, nullable=False))


class TransferSummary(SQLModel, table=True):
    __tablename__ = "consent_transfer_summary"
    __table_args__ = (
        UniqueConstraint("controller_did", "transfer_id", "citizen_id", name="uq_consent_transfer_summary"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    citizen_id: str = Field(
        sa_column=Column(String(64), ForeignKey("consent_citizen.id"), nullable=False, index=True)
    )
    controller_did: str = Field(max_length=512)
    recipient_did: str = Field(max_length=512)
    purpose: str = Field(max_length=256)
    dataset: str = Field(max_length=256)
    transfer_id: str = Field(max_length=256)
    record_count: int = Field(sa_column=Column(BigInteger, nullable=False))
    transferred_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    reported_at: int = Field(sa_column=Column(BigInteger, nullable=False))
