"""What the "Agreements" pages show: signed agreements, whether each signature verifies, the evidence.

A signature is checked with the key this connector trusts for its signer: our
own public key (``keys/public-key.jwk``) when we signed, the key pinned in the
trust list for the counter-party otherwise — never a key the agreement or the
signature names itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from catalog.queryspec import QuerySpec
from connector.pages.render import path_segment
from connector.pages.words import dsp_offer_words
from contracts.agreements import AgreementRecord, query_agreements
from contracts.evidence import export_bundle
from contracts.signing import SignatureError, verify_agreement_signature
from identity.errors import KeyFileError
from identity.keys import normalised_public_jwk, public_jwk
from identity.trustlist import get_member
from runtime.participant import PUBLIC_KEY_FILE
from runtime.service import ServiceCore

PAGE_SIZE = 20
MAX_PAGE = 10_000


def signatures_text(record: AgreementRecord) -> str:
    """``signed by provider and consumer``, ``signed by the provider only``..."""
    signed = record.signed_by
    if signed == ["provider", "consumer"]:
        return "signed by provider and consumer"
    if signed:
        return f"signed by the {signed[0]} only"
    return "not signed"


def agreement_url(agreement_id: str) -> str:
    return f"/ui/agreements/{path_segment(agreement_id)}"


@dataclass(frozen=True)
class AgreementSummary:
    id: str
    url: str
    dataset: str
    provider: str
    consumer: str
    signed_at: int
    signatures: str
    negotiation_id: str


def summary(record: AgreementRecord) -> AgreementSummary:
    return AgreementSummary(
        id=record.id,
        url=agreement_url(record.id),
        dataset=record.asset_id,
        provider=record.provider_did,
        consumer=record.consumer_did,
        signed_at=record.signed_at,
        signatures=signatures_text(record),
        negotiation_id=record.negotiation_id,
    )


def page_number(text: str) -> int:
    return min(max(int(text), 1), MAX_PAGE) if text.isdigit() and len(text) < 7 else 1


def agreement_rows(session: Session, page: int) -> tuple[list[AgreementSummary], bool]:
    """One page of agreements, newest first, and whether another page follows."""
    spec = QuerySpec(offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE + 1, sort_order="DESC")
    records = query_agreements(session, spec)
    return [summary(r) for r in records[:PAGE_SIZE]], len(records) > PAGE_SIZE


# ---------------------------------------------------------------- one agreement


def own_public_jwk(core: ServiceCore) -> dict[str, str]:
    """Our public key, from ``keys/public-key.jwk`` (or, where that file is missing, our private key)."""
    path = core.settings.data_dir / PUBLIC_KEY_FILE
    try:
        return normalised_public_jwk(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyFileError):
        return public_jwk(core.key.public_key())


def party_keys(session: Session, core: ServiceCore, record: AgreementRecord) -> dict[str, dict[str, str]]:
    """The keys this connector trusts for the agreement's parties: ours, and the pinned peer's."""
    keys = {core.settings.did: own_public_jwk(core)}
    for did in (record.provider_did, record.consumer_did):
        if did not in keys:
            member = get_member(session, did)
            if member is not None:
                keys[did] = member.public_jwk
    return keys


@dataclass(frozen=True)
class SignatureCheck:
    role: str
    did: str
    present: bool
    verifies: bool
    text: str


def check_signature(
    record: AgreementRecord,
    role: str,
    did: str,
    signature: str | None,
    keys: dict[str, dict[str, str]],
    own_did: str,
) -> SignatureCheck:
    if not signature:
        why = " (it did not counter-sign: an EDC connector does not)" if role == "consumer" else ""
        return SignatureCheck(role, did, False, False, f"No signature from the {role}{why}.")
    key = keys.get(did)
    if key is None:
        return SignatureCheck(
            role, did, True, False, f"Cannot be checked: {did} is not in this connector's trust list."
        )
    whose = "this connector's own key" if did == own_did else "the key pinned for it in the trust list"
    try:
        verify_agreement_signature(record.agreement, signature, key, expected_kid_did=did)
    except SignatureError as exc:
        return SignatureCheck(role, did, True, False, f"Does not verify with {whose}: {exc}")
    return SignatureCheck(role, did, True, True, f"Verifies with {whose}.")


@dataclass(frozen=True)
class AgreementDetail:
    summary: AgreementSummary
    our_role: str
    target: str
    timestamp: str
    rules: tuple[str, ...]
    checks: tuple[SignatureCheck, SignatureCheck]
    negotiation_stored: bool


def agreement_detail(
    session: Session, core: ServiceCore, record: AgreementRecord, negotiation_stored: bool
) -> AgreementDetail:
    keys = party_keys(session, core, record)
    own = core.settings.did
    checks = (
        check_signature(record, "provider", record.provider_did, record.provider_signature, keys, own),
        check_signature(record, "consumer", record.consumer_did, record.consumer_signature, keys, own),
    )
    agreement = record.agreement
    return AgreementDetail(
        summary=summary(record),
        our_role="provider" if record.provider_did == own else "consumer",
        target=str(agreement.get("target", record.asset_id)),
        timestamp=str(agreement.get("timestamp", "not given")),
        rules=tuple(dsp_offer_words(agreement)),
        checks=checks,
        negotiation_stored=negotiation_stored,
    )


def evidence(session: Session, core: ServiceCore, record: AgreementRecord) -> dict[str, Any]:
    """The evidence bundle (``contracts.evidence``); EvidenceError when a signer's key is unknown."""
    return export_bundle(record, party_keys(session, core, record))


def evidence_filename(agreement_id: str) -> str:
    """``agreement-urn-uuid-….json``: only characters safe in a Content-Disposition filename."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", agreement_id).strip("-.")[:120]
    return f"agreement-{safe or 'evidence'}.json"
