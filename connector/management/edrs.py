"""``/management/v3/edrs``: Tractus-X's EDR API (negotiate-and-transfer, and the EDR cache).

- ``POST /edrs`` takes a ContractRequest (as ``/contractnegotiations`` does,
  plus Tessera's optional ``purpose``), negotiates, and on FINALIZED starts
  a pull transfer by itself; it answers the negotiation's IdResponse.
- ``POST /edrs/request`` queries EDR entries with a QuerySpec (fields
  ``transferProcessId``, ``assetId``, ``agreementId``,
  ``contractNegotiationId``, ``providerId``, ``createdAt``).
- ``GET /edrs/{transferProcessId}/dataaddress`` shows the data address;
  ``auto_refresh`` (default true, as in Tractus-X) first refreshes a token
  that is expired or about to be.
- ``POST /edrs/{transferProcessId}/refresh`` refreshes now;
  ``DELETE /edrs/{transferProcessId}`` forgets the EDR.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session
from starlette.background import BackgroundTask

from catalog.jsonld import EDC_NS, first_node, first_value, values
from catalog.vocabulary import DSP_PROTOCOL
from connector.edr_negotiations import start_edr_negotiation
from connector.edrs import EdrError, RefreshMode, data_address, query_entries, remove
from connector.management.auth import require_api_key
from connector.management.common import declared_purpose, expanded_body, id_response, query_spec_body
from connector.management.errors import ManagementApiError

# The ContractRequest's offer is read exactly as /contractnegotiations reads it.
from connector.management.negotiations import _offer_from_expanded
from connector.negotiations import NegotiationError
from runtime.dependencies import db_session, service_core

_PROTOCOLS = (None, DSP_PROTOCOL, "dataspace-protocol-http")


def _refused(status: int, reason: str) -> ManagementApiError:
    kind = {404: "ObjectNotFound", 409: "ObjectConflict"}.get(
        status, "InvalidRequest" if status < 500 else "BadGateway"
    )
    return ManagementApiError(status, kind, reason)


def _string(node: dict[str, Any], name: str, *, required: bool, limit: int = 2048) -> str | None:
    value = declared_purpose(node) if name == "purpose" else first_value(node, EDC_NS + name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ManagementApiError(
            400,
            "ValidationFailure",
            f"{name} is {'mandatory' if required else 'optional'}: a string of 1 to {limit} characters",
            EDC_NS + name,
            value,
        )
    return value


def _callbacks(node: dict[str, Any]) -> list[dict[str, Any]] | None:
    found = values(node, EDC_NS + "callbackAddresses")
    if any(not isinstance(item, dict) for item in found):
        raise ManagementApiError(
            400, "ValidationFailure", "callbackAddresses must be objects", EDC_NS + "callbackAddresses"
        )
    return [item for item in found if isinstance(item, dict)] or None


def _auto_refresh(request: Request) -> bool:
    raw = request.query_params.get("auto_refresh", "true").strip().lower()
    if raw not in ("true", "false"):
        raise ManagementApiError(
            400, "InvalidRequest", "auto_refresh must be true or false", "auto_refresh", raw
        )
    return raw == "true"


def edrs_router() -> APIRouter:
    router = APIRouter(prefix="/management/v3/edrs", tags=["edrs"], dependencies=[Depends(require_api_key)])

    @router.post("")
    async def negotiate(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        node = await expanded_body(request)
        protocol = first_value(node, EDC_NS + "protocol")
        if protocol not in _PROTOCOLS:
            raise ManagementApiError(
                400, "ValidationFailure", f"protocol must be {DSP_PROTOCOL}", EDC_NS + "protocol", protocol
            )
        address = _string(node, "counterPartyAddress", required=True)
        offer = _offer_from_expanded(first_node(node, EDC_NS + "policy"))
        counter_party = first_value(node, EDC_NS + "counterPartyId") or offer.get("assigner")
        if not isinstance(counter_party, str) or not counter_party:
            raise ManagementApiError(
                400,
                "ValidationFailure",
                "counterPartyId is mandatory (or the offer's assigner)",
                EDC_NS + "counterPartyId",
            )
        purpose = _string(node, "purpose", required=False, limit=512)
        callbacks = _callbacks(node)
        core = service_core(request)
        try:
            row = await run_in_threadpool(
                lambda: start_edr_negotiation(
                    session,
                    core,
                    counter_party=counter_party,
                    address=str(address),
                    offer=offer,
                    purpose=purpose,
                    callback_addresses=callbacks,
                )
            )
        except NegotiationError as exc:
            session.rollback()
            raise _refused(exc.status, exc.reason) from None
        response = id_response(row.id, row.created_at)
        response.background = BackgroundTask(request.app.state.negotiation_worker.kick, row.id)
        return response

    @router.post("/request")
    async def query(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        spec = await query_spec_body(request)
        return JSONResponse(await run_in_threadpool(query_entries, session, spec))

    @router.get("/{transfer_id}/dataaddress")
    async def get_data_address(transfer_id: str, request: Request) -> JSONResponse:
        refresh: RefreshMode = "when-due" if _auto_refresh(request) else "never"
        try:
            return JSONResponse(await data_address(service_core(request), transfer_id, refresh=refresh))
        except EdrError as exc:
            raise _refused(exc.status, exc.reason) from None

    @router.post("/{transfer_id}/refresh")
    async def refresh_now(transfer_id: str, request: Request) -> JSONResponse:
        try:
            return JSONResponse(await data_address(service_core(request), transfer_id, refresh="now"))
        except EdrError as exc:
            raise _refused(exc.status, exc.reason) from None

    @router.delete("/{transfer_id}")
    async def delete(transfer_id: str, session: Session = Depends(db_session)) -> Response:
        try:
            await run_in_threadpool(remove, session, transfer_id)
        except EdrError as exc:
            session.rollback()
            raise _refused(exc.status, exc.reason) from None
        return Response(status_code=204)

    return router
