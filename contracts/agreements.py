"""Contract agreements: storing them with their signatures, finding them, showing them as EDC does.

An agreement is stored as the Agreement object that was signed (its JSON),
with the provider's signature and, once the consumer has counter-signed in
its ContractAgreementVerificationMessage, the consumer's. An EDC peer does
not sign: its side stays ``None``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from catalog.errors import ConflictError, InvalidInputError, NotFoundError
from catalog.jsonld import EDC_RESPONSE_CONTEXT
from catalog.queryspec import FixedFields, QuerySpec, table_of
from contracts.edc_form import agreement_policy_to_edc
from contracts.models import AgreementRow

_agreement = table_of(AgreementRow).c
AGREEMENT_FIELDS = FixedFields(
    "ContractAgreement",
    {
        "id": _agreement.id,
        "@id": _agreement.id,
        "assetId": _agreement.asset_id,
        "providerId": _agreement.provider_did,
        "consumerId": _agreement.consumer_did,
        "signedAt": _agreement.signed_at,  # epoch milliseconds, as stored
        "contractSigningDate": _agreement.signed_at // 1000,  # epoch seconds, as EDC shows it
        "negotiationId": _agreement.negotiation_id,
    },
    _agreement.signed_at,
)


@dataclass(frozen=True)
class AgreementRecord:
    """One agreement. ``id`` is the Agreement's ``@id``; ``signed_at`` is in epoch milliseconds, like
    every timestamp Tessera stores (EDC's ``contractSigningDate``, in seconds, is derived from it);
    the signatures are detached compact JWS (see ``contracts.signing``)."""

    id: str
    negotiation_id: str
    provider_did: str
    consumer_did: str
    asset_id: str
    agreement: dict[str, Any]
    signed_at: int
    provider_signature: str | None
    consumer_signature: str | None

    @property
    def signed_by(self) -> list[str]:
        """Who has signed: ``["provider", "consumer"]``, ``["provider"]`` (an EDC consumer)..."""
        signed = [("provider", self.provider_signature), ("consumer", self.consumer_signature)]
        return [role for role, signature in signed if signature]


def _record(row: AgreementRow) -> AgreementRecord:
    return AgreementRecord(
        id=row.id,
        negotiation_id=row.negotiation_id,
        provider_did=row.provider_did,
        consumer_did=row.consumer_did,
        asset_id=row.asset_id,
        agreement=json.loads(row.agreement),
        signed_at=row.signed_at,
        provider_signature=row.provider_signature,
        consumer_signature=row.consumer_signature,
    )


def store_agreement(
    session: Session, record: AgreementRecord, *, commit: bool = True, if_absent: bool = False
) -> AgreementRecord:
    """Insert ``record``; ConflictError when an agreement with its id exists already (``if_absent``:
    then nothing happens, unless another replica stores it at the same moment).

    With ``commit=False`` it joins the caller's transaction (flushed, committed by the caller), so
    that the agreement and what the caller records with it are saved together or not at all.
    """
    agreement_id = record.agreement.get("@id")
    if agreement_id is not None and agreement_id != record.id:
        raise InvalidInputError(
            f"the agreement's @id is {agreement_id!r}, but it is stored as {record.id!r}", "@id", agreement_id
        )
    if session.get(AgreementRow, record.id) is not None:
        if if_absent:
            return record
        raise ConflictError(f"ContractAgreement with ID {record.id} already exists")
    session.add(
        AgreementRow(
            id=record.id,
            negotiation_id=record.negotiation_id,
            provider_did=record.provider_did,
            consumer_did=record.consumer_did,
            asset_id=record.asset_id,
            agreement=json.dumps(record.agreement),
            signed_at=record.signed_at,
            provider_signature=record.provider_signature,
            consumer_signature=record.consumer_signature,
        )
    )
    try:
        session.commit() if commit else session.flush()
    except IntegrityError:  # another replica stored the same id in between
        session.rollback()
        raise ConflictError(f"ContractAgreement with ID {record.id} already exists") from None
    return record


def set_consumer_signature(session: Session, agreement_id: str, jws: str, *, commit: bool = True) -> None:
    """Record the consumer's counter-signature. Storing the same one again is a no-op; a
    different one is refused (Ed25519 signatures are deterministic: same key, same agreement,
    same signature), so evidence once recorded is never replaced. ``commit=False``: the caller's
    transaction saves it."""
    row = session.get(AgreementRow, agreement_id)
    if row is None:
        raise NotFoundError(f"Object of type ContractAgreement with ID={agreement_id} was not found")
    if row.consumer_signature == jws:
        return
    if row.consumer_signature is not None:
        raise ConflictError(f"ContractAgreement {agreement_id} already has a different consumer signature")
    row.consumer_signature = jws
    session.add(row)
    if commit:
        session.commit()


def get_agreement(session: Session, agreement_id: str) -> AgreementRecord | None:
    row = session.get(AgreementRow, agreement_id)
    return _record(row) if row is not None else None


def agreement_for_negotiation(session: Session, negotiation_id: str) -> AgreementRecord | None:
    statement = (
        select(AgreementRow)
        .where(_agreement.negotiation_id == negotiation_id)
        .order_by(_agreement.signed_at.desc(), _agreement.id)
        .limit(1)
    )
    row = session.scalars(statement).first()
    return _record(row) if row is not None else None


def query_agreements(session: Session, spec: QuerySpec) -> list[AgreementRecord]:
    """Agreements matching ``spec`` (fields: ``AGREEMENT_FIELDS``; QuerySpecError for others)."""
    statement = AGREEMENT_FIELDS.statement(AgreementRow, spec)
    return [_record(row) for row in session.scalars(statement)]


def agreement_to_edc(record: AgreementRecord) -> dict[str, Any]:
    """The EDC Management API v3 ``ContractAgreement`` (compacted), plus Tessera's signature members."""
    return {
        "@context": dict(EDC_RESPONSE_CONTEXT),
        "@type": "ContractAgreement",
        "@id": record.id,
        "assetId": record.asset_id,
        "providerId": record.provider_did,
        "consumerId": record.consumer_did,
        "contractSigningDate": record.signed_at // 1000,  # EDC: epoch seconds
        "policy": agreement_policy_to_edc(record.agreement),
        "providerSignature": record.provider_signature,
        "consumerSignature": record.consumer_signature,
        "signedBy": record.signed_by,
    }
