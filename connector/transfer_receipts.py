"""Receipts across parties: the provider's signed statements, countersigned by the consumer.

When the provider logs a transfer STARTED or COMPLETED, it queues the facts of that step
(``transfer_evidence``). The transfer worker then signs them with the participant key and
sends them to the consumer's ``POST /log/receipts`` (peer-authenticated). The consumer
checks that the facts name a transfer it has with that provider and that the signature is
the provider's (its pinned key), logs the statement (``transfer.receipt``, signed by the
provider) and answers with its own signature over the same facts: its receipt. The
provider checks that receipt with the consumer's pinned key and logs it the same way. So
for every step each side's log holds the other's signature over the same facts.

Anything that does not verify is refused (400 with a JSON body) and logged as a refusal
by the side that refused it; the provider then gives up on that statement. Unreachable
consumers are retried by the worker's poll, at most ``MAX_ATTEMPTS`` times.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.queryspec import table_of
from connector import transfer_evidence as evidence
from connector.dataplane.sink import read_sink
from connector.transfer_models import TransferRow
from connector.translog import entries as e
from connector.translog.receipts import TRANSFER_RECEIPT, check_facts, sign_facts, verify_facts
from connector.translog.store import append_entry
from contracts.signing import SignatureError
from identity.peer_auth import Peer, authenticated_peer
from identity.trustlist import get_member
from runtime.dependencies import db_session, service_core
from runtime.logging import get_logger
from runtime.requests import BodyError, read_json
from runtime.service import ServiceCore
from runtime.settings import DSP_PATH

RECEIPTS_PATH = "/log/receipts"
_T = table_of(TransferRow).c
MAX_ATTEMPTS = 8
MAX_BODY_BYTES = 16 * 1024

log = get_logger("tessera.receipts")


class ReceiptRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _log_receipt(
    session: Session, row: TransferRow, facts: dict[str, Any], signer: str, signature: str
) -> None:
    fields = {
        **facts,
        "transferId": row.id,
        "role": row.role,
        "counterParty": row.counter_party_did,
        "signedBy": signer,
        "signature": signature,
    }
    append_entry(session, TRANSFER_RECEIPT, fields)


def _verify_party(session: Session, did: str, facts: dict[str, Any], signature: Any) -> None:
    member = get_member(session, did)
    if member is None:
        raise ReceiptRefused("receipt.unknown-party", f"{did} is not a member of this data space")
    if not isinstance(signature, str):
        raise ReceiptRefused("receipt.signature", "the signature must be a compact JWS string")
    try:
        verify_facts(facts, signature, did, member.public_jwk)
    except SignatureError as exc:
        raise ReceiptRefused("receipt.signature", str(exc)) from None


# ---------------------------------------------------------------- the consumer's side


def countersign(session: Session, core: ServiceCore, peer: Peer, body: Any) -> str:
    """Check and log a provider's signed statement; our receipt (signature over the same facts)."""
    if not isinstance(body, dict) or set(body) != {"facts", "signature"}:
        raise ReceiptRefused("receipt.malformed", 'send {"facts": {...}, "signature": "<JWS>"}')
    try:
        facts = check_facts(body["facts"])
    except e.EntryError as exc:
        raise ReceiptRefused("receipt.malformed", f"the facts are not acceptable: {exc}") from None
    if facts["provider"] != peer.did or facts["consumer"] != core.settings.did:
        raise ReceiptRefused("receipt.parties", "the facts must name you as provider and us as consumer")
    row = session.scalars(
        select(TransferRow).where(
            _T.role == "consumer",
            _T.consumer_pid == facts["consumerPid"],
            _T.counter_party_did == peer.did,
        )
    ).first()
    if row is None:
        raise ReceiptRefused("receipt.unknown-transfer", f"no transfer {facts['consumerPid']} with you")
    if (row.provider_pid not in (None, facts["providerPid"])) or (row.agreement_id, row.asset_id) != (
        facts["agreementId"],
        facts["dataset"],
    ):
        raise ReceiptRefused(
            "receipt.mismatch", "the facts do not match our transfer (pids, agreement or dataset)"
        )
    _verify_party(session, peer.did, facts, body["signature"])
    _check_own_sink(core, row, facts)
    _log_receipt(session, row, facts, peer.did, body["signature"])
    ours = sign_facts(facts, core.key, core.settings.did)
    session.commit()
    return ours


def _check_own_sink(core: ServiceCore, row: TransferRow, facts: dict[str, Any]) -> None:
    """A push into our own sink: what arrived must be what the provider states it sent."""
    if facts["statement"] != "completed" or not row.data_destination:
        return
    endpoint = json.loads(row.data_destination).get("endpoint")
    prefix = f"{core.settings.public_url.rstrip('/')}/sink/"
    if not isinstance(endpoint, str) or not endpoint.startswith(prefix):
        return  # pushed elsewhere: only the provider's word
    record = read_sink(core.settings.data_dir, endpoint.removeprefix(prefix))
    if record is None or record.received_sha256 is None:
        return
    if (record.received_bytes, record.received_sha256) != (facts["bytes"], facts["payloadSha256"]):
        raise ReceiptRefused(
            "receipt.mismatch",
            f"our sink received {record.received_bytes} bytes with SHA-256 {record.received_sha256}, "
            f"not the {facts['bytes']} bytes with SHA-256 {facts['payloadSha256']} you state",
        )


def receipts_router() -> APIRouter:
    router = APIRouter(tags=["transfer log"])

    @router.post(RECEIPTS_PATH)
    async def receive_statement(
        request: Request, peer: Peer = Depends(authenticated_peer), session: Session = Depends(db_session)
    ) -> JSONResponse:
        """A provider's signed statement about one of our transfers; answered with our receipt."""
        core = service_core(request)
        try:
            body = await read_json(request, max_bytes=MAX_BODY_BYTES)
        except BodyError as exc:
            return JSONResponse({"error": "malformed", "message": exc.message}, status_code=exc.status)
        try:
            signature = await run_in_threadpool(countersign, session, core, peer, body)
        except ReceiptRefused as exc:
            session.rollback()
            await run_in_threadpool(_log_refused, session, peer.did, "consumer", exc, body)
            return JSONResponse({"error": exc.code, "message": exc.message}, status_code=400)
        return JSONResponse({"signature": signature})

    return router


def _log_refused(session: Session, party: str, role: str, exc: ReceiptRefused, body: Any) -> None:
    facts = body.get("facts") if isinstance(body, dict) else None
    facts = facts if isinstance(facts, dict) else {}
    agreement = facts.get("agreementId")
    evidence.refused(
        session,
        counter_party=party,
        role=role,
        reason=exc.message,
        code=exc.code,
        agreement_id=agreement if isinstance(agreement, str) else None,
    )
    session.commit()


# ---------------------------------------------------------------- the provider's side


def _receipts_url(session: Session, did: str) -> str | None:
    member = get_member(session, did)
    if member is None or not member.dsp_url.endswith(DSP_PATH):
        return None  # not a Tessera connector: no receipts endpoint
    return member.dsp_url.removesuffix(DSP_PATH) + RECEIPTS_PATH


def _next_statement(core: ServiceCore, transfer_id: str) -> tuple[dict[str, Any], str, str | None] | None:
    with Session(core.engine) as session:
        row = session.get(TransferRow, transfer_id)
        if row is None or not row.statements_outbox:
            return None
        queued = json.loads(row.statements_outbox)
        if not queued:
            return None
        item = dict(queued[0])
        if item.pop("retryAt", 0) > now_millis():
            return None
        item.pop("attempts", None)
        facts = {**item, "provider": core.settings.did}
        return facts, row.counter_party_did, _receipts_url(session, row.counter_party_did)


def _settle_statement(
    core: ServiceCore, transfer_id: str, facts: dict[str, Any], outcome: str, answer: Any
) -> None:
    """Record what came of the first queued statement: a receipt logged, a refusal, or a retry."""
    with Session(core.engine) as session:
        row = session.get(TransferRow, transfer_id, with_for_update=True)
        if row is None or not row.statements_outbox:
            return
        queued = json.loads(row.statements_outbox)
        head = queued[0]
        done = True
        if outcome == "receipt":
            signature = answer.get("signature") if isinstance(answer, dict) else None
            try:
                _verify_party(session, row.counter_party_did, facts, signature)
                assert isinstance(signature, str)
                _log_receipt(session, row, facts, row.counter_party_did, signature)
            except ReceiptRefused as exc:
                evidence.refused(
                    session,
                    counter_party=row.counter_party_did,
                    role="provider",
                    reason=f"the consumer's receipt was refused: {exc.message}",
                    code=exc.code,
                    transfer_id=row.id,
                    agreement_id=row.agreement_id,
                    dataset=row.asset_id,
                )
        elif outcome == "refused" or (head.get("attempts", 0) + 1 >= MAX_ATTEMPTS):
            why = answer if isinstance(answer, str) else "no answer"
            evidence.refused(
                session,
                counter_party=row.counter_party_did,
                role="provider",
                reason=f"the consumer did not countersign our {facts['statement']} statement: {why}",
                code="receipt.not-countersigned",
                transfer_id=row.id,
                agreement_id=row.agreement_id,
                dataset=row.asset_id,
            )
        else:
            head["attempts"] = head.get("attempts", 0) + 1
            head["retryAt"] = now_millis() + min(60_000, 1000 * 2 ** head["attempts"])
            done = False
        if done:
            queued.pop(0)
        row.statements_outbox = json.dumps(queued) if queued else None
        session.add(row)
        session.commit()


async def send_statements(core: ServiceCore, transfer_id: str) -> None:
    """Sign and send this transfer's queued statements, in order, until one has to wait."""
    while True:
        loaded = await run_in_threadpool(_next_statement, core, transfer_id)
        if loaded is None:
            return
        facts, consumer, url = loaded
        if url is None:
            await run_in_threadpool(
                _settle_statement,
                core,
                transfer_id,
                facts,
                "refused",
                "the consumer has no receipts endpoint",
            )
            continue
        body = {"facts": facts, "signature": sign_facts(facts, core.key, core.settings.did)}
        try:
            response = await core.peer_client.request(consumer, "POST", url, json=body)
        except httpx.HTTPError as exc:
            log.info("statement not delivered; will retry", transfer=transfer_id, error=type(exc).__name__)
            await run_in_threadpool(_settle_statement, core, transfer_id, facts, "retry", None)
            return
        if response.status_code == 200:
            try:
                answer = response.json()
            except ValueError:
                answer = None
            await run_in_threadpool(_settle_statement, core, transfer_id, facts, "receipt", answer)
        elif 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            said = f"HTTP {response.status_code} {response.text[:300]}"
            await run_in_threadpool(_settle_statement, core, transfer_id, facts, "refused", said)
        else:
            await run_in_threadpool(_settle_statement, core, transfer_id, facts, "retry", None)
            return
