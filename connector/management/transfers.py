"""``/management/v3/transferprocesses`` (EDC v3 shapes).

Create with an EDC ``TransferRequest`` (``counterPartyAddress``, ``contractId``,
``transferType``, ``dataDestination``, ``callbackAddresses``, and Tessera's
``purpose``: the purpose the consumer declares, which the provider's usage
control checks at every access). Query, get, ``/state``, and the operator's
steps ``/terminate``, ``/suspend``, ``/resume``, ``/complete`` and, for a
provider whose contract definition says ``transferApproval: manual``, ``/start``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session
from starlette.background import BackgroundTask

from catalog.jsonld import (
    EDC_NS,
    EDC_RESPONSE_CONTEXT,
    expand_management_input,
    first_node,
    first_value,
    values,
)
from catalog.queryspec import FixedFields, table_of
from catalog.vocabulary import DSP_PROTOCOL
from connector.dataplane.sink import create_sink_destination
from connector.dsp import transfer_messages as wire
from connector.management.auth import require_api_key
from connector.management.common import declared_purpose, expanded_body, id_response, query_spec_body
from connector.management.errors import ManagementApiError
from connector.transfer_models import TransferRow
from connector.transfers import (
    ACTIONS,
    HTTP_ENDPOINT_TYPE,
    TransferError,
    consumer_request,
    get_transfer,
    operator_action,
    pending_of,
)
from contracts.agreements import get_agreement
from runtime.dependencies import db_session, service_core
from runtime.requests import read_json
from runtime.service import ServiceCore

_ROWS = table_of(TransferRow).c
TRANSFER_FIELDS = FixedFields(
    "TransferProcess",
    {
        "id": _ROWS.id,
        "@id": _ROWS.id,
        "state": _ROWS.state,
        "type": _ROWS.role,
        "counterPartyId": _ROWS.counter_party_did,
        "counterPartyAddress": _ROWS.counter_party_address,
        "assetId": _ROWS.asset_id,
        "contractId": _ROWS.agreement_id,
        "transferType": _ROWS.transfer_type,
        "createdAt": _ROWS.created_at,
        "stateTimestamp": _ROWS.updated_at,
        "providerPid": _ROWS.provider_pid,
        "consumerPid": _ROWS.consumer_pid,
    },
    _ROWS.created_at,
)
# Endpoint properties that are credentials: shown as present, never their values.
_SECRET_PROPERTIES = {"authorization", "authCode", "refreshToken", "password", "secret"}


def _shown_destination(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    address: dict[str, Any] = json.loads(text)
    shown = dict(address)
    if isinstance(address.get("endpointProperties"), list):
        shown["endpointProperties"] = [
            {**p, "value": "***"} if isinstance(p, dict) and p.get("name") in _SECRET_PROPERTIES else p
            for p in address["endpointProperties"]
        ]
    return shown


def transfer_to_edc(row: TransferRow) -> dict[str, Any]:
    correlation = row.provider_pid if row.role == "consumer" else row.consumer_pid
    out: dict[str, Any] = {
        "@type": "TransferProcess",
        "@id": row.id,
        "correlationId": correlation,
        "type": row.role.upper(),
        "protocol": DSP_PROTOCOL,
        "state": row.state,
        "stateTimestamp": row.updated_at,
        "createdAt": row.created_at,
        "assetId": row.asset_id,
        "contractId": row.agreement_id,
        "counterPartyId": row.counter_party_did,
        "counterPartyAddress": row.counter_party_address,
        "transferType": row.transfer_type,
        "callbackAddresses": json.loads(row.callback_addresses) if row.callback_addresses else [],
        "providerPid": row.provider_pid,
        "consumerPid": row.consumer_pid,
        "approval": row.approval,
        "accessCount": row.access_count,
        "bytesTransferred": row.bytes_transferred,
        "privateProperties": {},
        "@context": EDC_RESPONSE_CONTEXT,
    }
    if row.purpose is not None:
        out["purpose"] = row.purpose
    destination = _shown_destination(row.data_destination)
    if destination is not None:
        out["dataDestination"] = destination
    if row.error_detail:
        out["errorDetail"] = row.error_detail
    pending = pending_of(row)
    if pending is not None:
        out["pendingMessage"] = {
            "type": pending.message.value,
            "attempts": row.attempts,
            "nextAttemptAt": row.next_attempt_at,
        }
    return out


def _text(node: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = first_value(node, EDC_NS + name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ManagementApiError(
            400, "ValidationFailure", f"{name} is mandatory (a string)", EDC_NS + name, value
        )
    return value


def _destination(node: dict[str, Any] | None) -> dict[str, Any] | None:
    """A push destination in DSP form, from EDC's DataAddress (``type``, ``baseUrl``, ``authKey``/``authCode``)
    or a DSP one (``endpoint``, ``endpointProperties``). A pull's ``HttpProxy`` destination means none."""
    if node is None:
        return None
    kind = first_value(node, EDC_NS + "type")
    if kind == "HttpProxy":
        return None
    endpoint = first_value(node, EDC_NS + "baseUrl") or first_value(node, EDC_NS + "endpoint")
    if not isinstance(endpoint, str):
        raise ManagementApiError(
            400,
            "ValidationFailure",
            "dataDestination needs baseUrl (where to push)",
            EDC_NS + "dataDestination",
        )
    properties: dict[str, str] = {}
    auth_key, auth_code = first_value(node, EDC_NS + "authKey"), first_value(node, EDC_NS + "authCode")
    if isinstance(auth_code, str):
        if auth_key in (None, "Authorization", "authorization"):
            scheme, _, rest = auth_code.partition(" ")
            bearer = scheme.lower() == "bearer" and rest
            properties["authorization"] = rest if bearer else auth_code
            properties["authType"] = "bearer" if bearer else "raw"
        else:
            properties["authKey"] = str(auth_key)
            properties["authCode"] = auth_code
    for item in values(node, EDC_NS + "endpointProperties"):
        name = first_value(item, EDC_NS + "name") if isinstance(item, dict) else None
        value = first_value(item, EDC_NS + "value") if isinstance(item, dict) else None
        if isinstance(name, str) and isinstance(value, str):
            properties[name] = value
    return wire.data_address(HTTP_ENDPOINT_TYPE, endpoint, properties)


def _local_sink(session: Session, core: ServiceCore, agreement_id: str) -> dict[str, Any]:
    """A push with no destination lands in this connector's sink directory (``<data_dir>/sink/``)."""
    record = get_agreement(session, agreement_id)
    name = record.asset_id if record is not None else "pushed"
    sink = create_sink_destination(core.settings.data_dir, core.settings.public_url, name=name)
    return wire.data_address(
        HTTP_ENDPOINT_TYPE, sink.endpoint, {"authorization": sink.secret, "authType": "bearer"}
    )


def _refused(exc: TransferError) -> ManagementApiError:
    kind = (
        "ObjectNotFound" if exc.status == 404 else "ObjectConflict" if exc.status == 409 else "InvalidRequest"
    )
    return ManagementApiError(exc.status, kind, exc.reason)


def _found(session: Session, transfer_id: str) -> TransferRow:
    row = get_transfer(session, transfer_id)
    if row is None:
        raise ManagementApiError(
            404, "ObjectNotFound", f"Object of type TransferProcess with ID={transfer_id} was not found"
        )
    return row


def transfers_router() -> APIRouter:
    router = APIRouter(prefix="/management/v3", tags=["transfers"], dependencies=[Depends(require_api_key)])

    @router.post("/transferprocesses")
    async def create(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        node = await expanded_body(request)
        protocol = first_value(node, EDC_NS + "protocol")
        if protocol not in (None, DSP_PROTOCOL, "dataspace-protocol-http"):
            raise ManagementApiError(
                400, "ValidationFailure", f"protocol must be {DSP_PROTOCOL}", EDC_NS + "protocol", protocol
            )
        address = _text(node, "counterPartyAddress", required=True)
        agreement_id = _text(node, "contractId", required=True)
        transfer_type = _text(node, "transferType", required=True)
        purpose = declared_purpose(node)
        if purpose is not None and (
            not isinstance(purpose, str) or not purpose.strip() or len(purpose) > 512
        ):
            raise ManagementApiError(
                400, "ValidationFailure", "purpose must be a non-empty string of at most 512 characters"
            )
        destination = _destination(first_node(node, EDC_NS + "dataDestination"))
        core = service_core(request)
        if destination is None and str(transfer_type).endswith("-PUSH"):
            destination = await run_in_threadpool(_local_sink, session, core, str(agreement_id))
        callbacks = [c for c in values(node, EDC_NS + "callbackAddresses") if isinstance(c, dict)]
        try:
            row = await run_in_threadpool(
                lambda: consumer_request(
                    session,
                    core,
                    address=str(address),
                    agreement_id=str(agreement_id),
                    transfer_type=str(transfer_type),
                    destination=destination,
                    purpose=purpose,
                    callback_addresses=callbacks or None,
                )
            )
        except TransferError as exc:
            session.rollback()
            raise _refused(exc) from None
        response = id_response(row.id, row.created_at)
        response.background = BackgroundTask(request.app.state.transfer_worker.kick, row.id)
        return response

    @router.post("/transferprocesses/request")
    async def query(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        spec = await query_spec_body(request)
        statement = TRANSFER_FIELDS.statement(TransferRow, spec)
        rows = await run_in_threadpool(lambda: list(session.scalars(statement)))
        return JSONResponse([transfer_to_edc(row) for row in rows])

    @router.get("/transferprocesses/{transfer_id}")
    def get(transfer_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        return JSONResponse(transfer_to_edc(_found(session, transfer_id)))

    @router.get("/transferprocesses/{transfer_id}/state")
    def state(transfer_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        row = _found(session, transfer_id)
        return JSONResponse({"@type": "TransferState", "state": row.state, "@context": EDC_RESPONSE_CONTEXT})

    @router.post("/transferprocesses/{transfer_id}/{action}")
    async def act(
        transfer_id: str, action: str, request: Request, session: Session = Depends(db_session)
    ) -> Response:
        if action not in ACTIONS:
            raise ManagementApiError(
                404, "ObjectNotFound", f"there is no action {action!r} (one of {', '.join(ACTIONS)})"
            )
        raw = await read_json(request, optional=True)
        reason = first_value(expand_management_input(raw), EDC_NS + "reason") if raw else None
        core = service_core(request)

        def found_and_acted() -> TransferRow:  # one hand-off to a worker thread for both
            row = _found(session, transfer_id)
            operator_action(session, core, row, action, reason if isinstance(reason, str) else None)
            return row

        try:
            row = await run_in_threadpool(found_and_acted)
        except TransferError as exc:
            session.rollback()
            raise _refused(exc) from None
        return Response(
            status_code=204, background=BackgroundTask(request.app.state.transfer_worker.kick, row.id)
        )

    return router
