"""``/management/v3/contractnegotiations`` and ``/management/v3/contractagreements`` (EDC v3 shapes).

Negotiations run by themselves by default. Where a contract definition
(``negotiationApproval: manual``) or the consumer's request (``approval:
manual``) asks for it, they wait for an operator, who moves them on with
``POST /contractnegotiations/{id}/{offer|agree|finalize|accept|request|verify|terminate}``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session
from starlette.background import BackgroundTask

from catalog.jsonld import EDC_NS, EDC_RESPONSE_CONTEXT, expand_management_input, first_node, first_value
from catalog.queryspec import FixedFields, table_of
from catalog.vocabulary import DSP_PROTOCOL, ODRL_NS
from connector.management.auth import require_api_key
from connector.management.common import expanded_body, id_response, query_spec_body
from connector.management.errors import ManagementApiError
from connector.negotiation_worker import NegotiationWorker
from connector.negotiations import (
    NegotiationError,
    Pending,
    consumer_start,
    get_negotiation,
    operator_action,
)
from contracts.agreements import agreement_to_edc, get_agreement, query_agreements
from contracts.models import NegotiationRow
from policies.dsp_form import offer_to_dsp
from policies.odrl import PolicyError, parse_policy
from runtime.dependencies import db_session, service_core
from runtime.requests import read_json

ACTIONS = ("offer", "agree", "finalize", "accept", "request", "verify", "terminate")
_ROWS = table_of(NegotiationRow).c
NEGOTIATION_FIELDS = FixedFields(
    "ContractNegotiation",
    {
        "id": _ROWS.id,
        "@id": _ROWS.id,
        "state": _ROWS.state,
        "type": _ROWS.role,
        "counterPartyId": _ROWS.counter_party_did,
        "counterPartyAddress": _ROWS.counter_party_address,
        "assetId": _ROWS.asset_id,
        "contractAgreementId": _ROWS.agreement_id,
        "createdAt": _ROWS.created_at,
        "providerPid": _ROWS.provider_pid,
        "consumerPid": _ROWS.consumer_pid,
    },
    _ROWS.created_at,
)


def negotiation_to_edc(row: NegotiationRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "@type": "ContractNegotiation",
        "@id": row.id,
        "type": row.role.upper(),
        "protocol": DSP_PROTOCOL,
        "state": row.state,
        "counterPartyId": row.counter_party_did,
        "counterPartyAddress": row.counter_party_address,
        "callbackAddresses": [],
        "createdAt": row.created_at,
        "stateTimestamp": row.updated_at,
        "assetId": row.asset_id,
        "providerPid": row.provider_pid,
        "consumerPid": row.consumer_pid,
        "approval": row.approval,
        "offer": json.loads(row.offer),
        "@context": EDC_RESPONSE_CONTEXT,
    }
    if row.agreement_id:
        out["contractAgreementId"] = row.agreement_id
    if row.error_detail:
        out["errorDetail"] = row.error_detail
    if row.pending_message:
        pending = Pending.from_json(row.pending_message)
        out["pendingMessage"] = {
            "type": pending.message.value,
            "attempts": row.attempts,
            "nextAttemptAt": row.next_attempt_at,
        }
    return out


def _offer_from_expanded(node: dict[str, Any] | None, assigner: str | None = None) -> dict[str, Any]:
    """An ODRL offer from a Management API body, in the DSP form negotiation messages carry."""
    if node is None:
        raise ManagementApiError(
            400, "ValidationFailure", "policy (the offer) is mandatory", EDC_NS + "policy"
        )
    offer_id = node.get("@id")
    target = first_value(node, ODRL_NS + "target")
    if not isinstance(offer_id, str) or not offer_id:
        raise ManagementApiError(
            400, "ValidationFailure", "the offer needs the @id it has in the catalog", "policy/@id"
        )
    try:
        policy = parse_policy(node, require_set=False)
    except PolicyError as exc:
        raise ManagementApiError(400, "ValidationFailure", str(exc), exc.path, exc.invalid_value) from None
    assigner = first_value(node, ODRL_NS + "assigner") or assigner
    return offer_to_dsp(
        policy, offer_id, assigner=assigner, target=target if isinstance(target, str) else None
    )


def _refused(exc: NegotiationError) -> ManagementApiError:
    kind = (
        "ObjectNotFound" if exc.status == 404 else "ObjectConflict" if exc.status == 409 else "InvalidRequest"
    )
    return ManagementApiError(exc.status, kind, exc.reason)


def _found(session: Session, negotiation_id: str) -> NegotiationRow:
    row = get_negotiation(session, negotiation_id)
    if row is None:
        raise ManagementApiError(
            404,
            "ObjectNotFound",
            f"Object of type ContractNegotiation with ID={negotiation_id} was not found",
        )
    return row


def negotiations_router() -> APIRouter:
    router = APIRouter(
        prefix="/management/v3", tags=["negotiations"], dependencies=[Depends(require_api_key)]
    )

    @router.post("/contractnegotiations")
    async def create(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        node = await expanded_body(request)
        counter_party = first_value(node, EDC_NS + "counterPartyId")
        address = first_value(node, EDC_NS + "counterPartyAddress")
        protocol = first_value(node, EDC_NS + "protocol")
        if protocol not in (None, DSP_PROTOCOL):
            raise ManagementApiError(
                400, "ValidationFailure", f"protocol must be {DSP_PROTOCOL}", EDC_NS + "protocol", protocol
            )
        if not isinstance(address, str):
            raise ManagementApiError(
                400, "ValidationFailure", "counterPartyAddress is mandatory", EDC_NS + "counterPartyAddress"
            )
        policy_node = first_node(node, EDC_NS + "policy")
        offer = _offer_from_expanded(policy_node)
        if not isinstance(counter_party, str):
            counter_party = offer.get(
                "assigner"
            )  # EDC clients may name the provider only as the offer's assigner
        if not isinstance(counter_party, str):
            raise ManagementApiError(
                400, "ValidationFailure", "counterPartyId is mandatory", EDC_NS + "counterPartyId"
            )
        approval = first_value(node, EDC_NS + "approval") or "automatic"
        if approval not in ("automatic", "manual"):
            raise ManagementApiError(
                400,
                "ValidationFailure",
                "approval must be automatic or manual",
                EDC_NS + "approval",
                approval,
            )
        core = service_core(request)
        session.expire_on_commit = False  # the answer reads only what this request wrote
        worker: NegotiationWorker = request.app.state.negotiation_worker
        worker.claim_on_commit(session)  # the kick after the answer sends the request at once
        try:
            row = await run_in_threadpool(
                consumer_start, session, core, counter_party, address, offer, str(approval)
            )
        except NegotiationError as exc:
            raise _refused(exc) from None
        response = id_response(row.id, row.created_at)
        response.background = BackgroundTask(worker.kick, row.id)
        return response

    @router.post("/contractnegotiations/request")
    async def query(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        spec = await query_spec_body(request)
        statement = NEGOTIATION_FIELDS.statement(NegotiationRow, spec)
        rows = await run_in_threadpool(lambda: list(session.scalars(statement)))
        return JSONResponse([negotiation_to_edc(row) for row in rows])

    @router.get("/contractnegotiations/{negotiation_id}")
    def get(negotiation_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        return JSONResponse(negotiation_to_edc(_found(session, negotiation_id)))

    @router.get("/contractnegotiations/{negotiation_id}/state")
    def state(negotiation_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        row = _found(session, negotiation_id)
        return JSONResponse(
            {"@type": "NegotiationState", "state": row.state, "@context": EDC_RESPONSE_CONTEXT}
        )

    @router.get("/contractnegotiations/{negotiation_id}/agreement")
    def agreement(negotiation_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        row = _found(session, negotiation_id)
        record = get_agreement(session, row.agreement_id) if row.agreement_id else None
        if record is None:
            raise ManagementApiError(
                404, "ObjectNotFound", f"negotiation {negotiation_id} has no agreement (yet)"
            )
        return JSONResponse(agreement_to_edc(record))

    @router.post("/contractnegotiations/{negotiation_id}/{action}")
    async def act(
        negotiation_id: str, action: str, request: Request, session: Session = Depends(db_session)
    ) -> Response:
        if action not in ACTIONS:
            raise ManagementApiError(
                404, "ObjectNotFound", f"there is no action {action!r} (one of {', '.join(ACTIONS)})"
            )
        raw = await read_json(request, optional=True)
        core = service_core(request)

        def found_and_acted() -> NegotiationRow:  # one hand-off to a worker thread for both
            row = _found(session, negotiation_id)
            body: dict[str, Any] | None = None
            if action in ("offer", "request"):
                node = expand_management_input(raw) if raw else None
                policy_node = (
                    first_node(node, EDC_NS + "policy") if node and EDC_NS + "policy" in node else node
                )
                body = _offer_from_expanded(
                    policy_node, assigner=row.counter_party_did if row.role == "consumer" else None
                )
            elif action == "terminate" and raw:
                reason = first_value(expand_management_input(raw), EDC_NS + "reason")
                body = {"reason": reason} if isinstance(reason, str) else None
            operator_action(session, core, row, action, body)
            return row

        try:
            row = await run_in_threadpool(found_and_acted)
        except NegotiationError as exc:
            session.rollback()
            raise _refused(exc) from None
        worker = request.app.state.negotiation_worker
        return Response(status_code=204, background=BackgroundTask(worker.kick, row.id))

    @router.post("/contractagreements/request")
    async def agreements(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        spec = await query_spec_body(request)
        records = await run_in_threadpool(query_agreements, session, spec)
        return JSONResponse([agreement_to_edc(record) for record in records])

    @router.get("/contractagreements/{agreement_id}")
    def get_agreement_route(agreement_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        record = get_agreement(session, agreement_id)
        if record is None:
            raise ManagementApiError(
                404,
                "ObjectNotFound",
                f"Object of type ContractAgreement with ID={agreement_id} was not found",
            )
        return JSONResponse(agreement_to_edc(record))

    @router.get("/contractagreements/{agreement_id}/negotiation")
    def agreement_negotiation(agreement_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        record = get_agreement(session, agreement_id)
        if record is None:
            raise ManagementApiError(
                404,
                "ObjectNotFound",
                f"Object of type ContractAgreement with ID={agreement_id} was not found",
            )
        return JSONResponse(negotiation_to_edc(_found(session, record.negotiation_id)))

    return router
