"""What the transfer process writes into the transfer log, and what the provider will have countersigned.

``state_changed`` is called by ``connector.transfers`` inside the transaction that moves a
transfer's state (STARTED, SUSPENDED, COMPLETED, TERMINATED), on both sides, so the entry
and the state change are committed together. ``refused`` logs a transfer request or a data
access we refused (with the counter-party known: a request with a token that is not ours
is not evidence of anything and would let anyone grow our log). ``record_served`` keeps on
the provider's row what one access or push served (payload SHA-256, records, the
personal-data gate's counts), for the entries that follow.

When the provider logs STARTED or COMPLETED it also queues the facts of that step (see
``connector.translog.receipts``) in ``statements_outbox``; ``connector.transfer_receipts``
signs them, has the consumer countersign them and logs the receipt.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlmodel import Session

from connector.transfer_models import TransferRow
from connector.translog import entries as e
from connector.translog.receipts import STATEMENTS
from connector.translog.store import LeafReceipt, append_entry

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_KIND_OF_STATE = {
    "STARTED": e.TRANSFER_STARTED,
    "SUSPENDED": e.TRANSFER_SUSPENDED,
    "COMPLETED": e.TRANSFER_COMPLETED,
    "TERMINATED": e.TRANSFER_TERMINATED,
}


def _json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


def facts(row: TransferRow, statement: str, provider_did: str) -> dict[str, Any]:
    """The facts both parties sign for one step of a provider's transfer (row: the provider's)."""
    return {
        "statement": statement,
        "agreementId": row.agreement_id,
        "dataset": row.asset_id,
        "provider": provider_did,
        "consumer": row.counter_party_did,
        "providerPid": row.provider_pid or "",
        "consumerPid": row.consumer_pid or "",
        "bytes": row.bytes_transferred,
        "payloadSha256": row.payload_sha256 or EMPTY_SHA256,
        "records": row.records,
    }


def state_changed(session: Session, row: TransferRow, before: str | None) -> LeafReceipt | None:
    """Log the transfer's new state, if it is one the log records and it changed."""
    kind = _KIND_OF_STATE.get(row.state)
    if kind is None or row.state == before:
        return None
    fields: dict[str, Any] = {
        "transferId": row.id,
        "agreementId": row.agreement_id,
        "dataset": row.asset_id,
        "counterParty": row.counter_party_did,
        "role": row.role,
        "format": row.transfer_type,
    }
    if row.role == "provider":
        fields["bytes"] = row.bytes_transferred
        fields["payloadSha256"] = row.payload_sha256 or EMPTY_SHA256
        fields["records"] = row.records
        decision = _json(row.policy_decision)
        if decision is not None:
            fields["policyDecision"] = decision
        consent = _json(row.consent_summary)
        if consent is not None:
            fields["consent"] = consent
    # (The consumer did not count what the provider served: those numbers reach its log in the
    # provider's signed statement, a transfer.receipt entry.)
    if kind in (e.TRANSFER_SUSPENDED, e.TRANSFER_TERMINATED):
        fields["reason"] = e.redact_text(row.error_detail or "no reason given")
    entry = append_entry(session, kind, fields)
    statement = {"STARTED": "started", "COMPLETED": "completed"}.get(row.state)
    if row.role == "provider" and statement in STATEMENTS:
        queued = json.loads(row.statements_outbox or "[]")
        queued.append(facts(row, statement, ""))  # the provider (us) is filled in when signing
        row.statements_outbox = json.dumps(queued)
    return entry


def refused(
    session: Session,
    *,
    counter_party: str,
    role: str,
    reason: str,
    code: str,
    transfer_id: str | None = None,
    agreement_id: str | None = None,
    dataset: str | None = None,
    policy_explanation: str | None = None,
) -> LeafReceipt:
    """A transfer request, a data access or a countersignature we refused, and why."""
    fields: dict[str, Any] = {
        "subject": "transfer",
        "counterParty": counter_party,
        "role": role,
        "by": "us",
        "code": re.sub(r"[^\w.:-]", "_", code)[:100],
        "reason": e.redact_text(reason or "no reason given"),
    }
    optional = {"transferId": transfer_id, "agreementId": agreement_id, "dataset": dataset}
    details: dict[str, Any] = {k: v for k, v in optional.items() if v}
    if policy_explanation is not None:
        details["policyDecision"] = {"allowed": False, "explanation": e.redact_text(policy_explanation)}
    try:
        return append_entry(session, e.REFUSAL, {**fields, **details})
    except e.EntryError:
        # An id the log cannot hold (the requester chose it) must not hide the refusal itself.
        return append_entry(session, e.REFUSAL, fields)


def decision_json(allowed: bool, explanation: str | None) -> str:
    decision: dict[str, Any] = {"allowed": allowed}
    if explanation:
        decision["explanation"] = e.redact_text(explanation)
    return json.dumps(decision)


def merge_consent(current: str | None, decisions: dict[str, int], released: int, withheld: int) -> str:
    """Add one stream's gate counters to the transfer's consent summary (ids, records released/withheld)."""
    summary = _json(current) or {"decisionIds": [], "released": 0, "withheld": 0}
    ids = [i for i in summary["decisionIds"] if isinstance(i, str)]
    for decision_id in decisions:
        if decision_id not in ids and len(ids) < e.MAX_LIST:
            ids.append(decision_id[: e.MAX_ID])
    return json.dumps(
        {
            "decisionIds": ids,
            "released": int(summary["released"]) + released,
            "withheld": int(summary["withheld"]) + withheld,
        }
    )
