"""``/management/v3/catalog/request`` and ``/catalog/dataset/request``: a member's catalog over DSP.

As in EDC, the provider's DSP answer is passed through unchanged; a failure
is a 502 whose message carries the remote error.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlmodel import Session

from catalog.jsonld import EDC_NS, first_node, first_value
from catalog.queryspec import query_spec_from_expanded
from connector.management.auth import require_api_key
from connector.management.common import expanded_body
from connector.management.errors import ManagementApiError
from connector.remote_catalog import (
    DSP_PROTOCOL,
    RemoteCatalogError,
    RemoteResponse,
    UnknownCounterPartyError,
    fetch_catalog,
    fetch_dataset,
    resolve_counter_party,
)
from identity.trustlist import MemberView
from runtime.dependencies import db_session, service_core


def _member(session: Session, node: dict[str, Any]) -> MemberView:
    counter_party = first_value(node, EDC_NS + "counterPartyId")
    address = first_value(node, EDC_NS + "counterPartyAddress")
    protocol = first_value(node, EDC_NS + "protocol")
    if not isinstance(counter_party, str) or not counter_party:
        raise ManagementApiError(
            400, "ValidationFailure", "counterPartyId is mandatory", EDC_NS + "counterPartyId"
        )
    if protocol not in (None, DSP_PROTOCOL):
        raise ManagementApiError(
            400, "ValidationFailure", f"protocol must be {DSP_PROTOCOL}", EDC_NS + "protocol", protocol
        )
    try:
        return resolve_counter_party(session, counter_party, address if isinstance(address, str) else None)
    except UnknownCounterPartyError as exc:
        raise ManagementApiError(
            400, "InvalidRequest", str(exc), EDC_NS + "counterPartyId", counter_party
        ) from None


def _passthrough(remote: RemoteResponse) -> Response:
    headers = {"Link": remote.link} if remote.link else None
    return Response(remote.body, media_type="application/json", headers=headers)


def _bad_gateway(exc: RemoteCatalogError) -> ManagementApiError:
    detail = f": {json.dumps(exc.remote_body)[:1000]}" if exc.remote_body is not None else ""
    return ManagementApiError(502, "BadGateway", f"{exc}{detail}")


def catalog_router() -> APIRouter:
    router = APIRouter(
        prefix="/management/v3/catalog", tags=["catalog"], dependencies=[Depends(require_api_key)]
    )

    @router.post("/request")
    async def catalog(request: Request, session: Session = Depends(db_session)) -> Response:
        node = await expanded_body(request)
        member = await run_in_threadpool(_member, session, node)
        spec = query_spec_from_expanded(first_node(node, EDC_NS + "querySpec"))
        try:
            return _passthrough(await fetch_catalog(service_core(request).peer_client, member, spec))
        except RemoteCatalogError as exc:
            raise _bad_gateway(exc) from None

    @router.post("/dataset/request")
    async def dataset(request: Request, session: Session = Depends(db_session)) -> Response:
        node = await expanded_body(request)
        dataset_id = node.get("@id")
        if not isinstance(dataset_id, str) or not dataset_id:
            raise ManagementApiError(400, "ValidationFailure", "@id (the dataset id) is mandatory", "@id")
        member = await run_in_threadpool(_member, session, node)
        try:
            return _passthrough(await fetch_dataset(service_core(request).peer_client, member, dataset_id))
        except RemoteCatalogError as exc:
            raise _bad_gateway(exc) from None

    return router
