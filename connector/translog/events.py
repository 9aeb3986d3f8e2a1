"""The log entries the negotiation service writes: an agreement finalized, a negotiation refused.

Called inside the transaction that changes the negotiation's state, so the entry and the
state change are committed together. Text that came from a counter-party or an operator
is masked (``redact_text``) before it is logged: a reason must never stop a state change.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from sqlmodel import Session

from connector.translog.entries import AGREEMENT_FINALIZED, REFUSAL, EntryError, redact_text
from connector.translog.store import LeafReceipt, append_entry
from contracts.agreements import AgreementRecord
from contracts.models import NegotiationRow
from contracts.signing import canonical_form


def agreement_finalized(session: Session, record: AgreementRecord, role: str) -> LeafReceipt:
    fields: dict[str, Any] = {
        "agreementId": record.id,
        "agreementSha256": hashlib.sha256(canonical_form(record.agreement)).hexdigest(),
        "negotiationId": record.negotiation_id,
        "provider": record.provider_did,
        "consumer": record.consumer_did,
        "dataset": record.asset_id,
        "role": role,
        "providerSignature": record.provider_signature,
        "consumerSignature": record.consumer_signature,
    }
    return append_entry(session, AGREEMENT_FINALIZED, fields)


def negotiation_refused(
    session: Session, row: NegotiationRow, *, by: str, reason: str, code: str | None = None
) -> LeafReceipt:
    """A negotiation ended without an agreement: who ended it, and why."""
    fields: dict[str, Any] = {
        "subject": "negotiation",
        "counterParty": row.counter_party_did,
        "role": row.role,
        "negotiationId": row.id,
        "by": by,
        "reason": redact_text(reason or "no reason given"),
    }
    details: dict[str, Any] = {}
    if row.asset_id:
        details["dataset"] = row.asset_id
    if code:
        details["code"] = re.sub(r"[^\w.:-]", "_", code)[:100]
    if code == "policy":
        details["policyDecision"] = {"allowed": False, "explanation": redact_text(row.error_detail or reason)}
    try:
        return append_entry(session, REFUSAL, {**fields, **details})
    except EntryError:
        # A dataset id or code the log cannot hold must not stop the negotiation from ending:
        # the refusal is logged without them.
        return append_entry(session, REFUSAL, fields)
