"""``/management/v3/policydefinitions``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session

from catalog.errors import NotFoundError
from connector.management.auth import require_api_key
from connector.management.common import (
    compacted,
    compacted_list,
    expanded_body,
    id_response,
    no_content,
    query_spec_body,
    same_id,
)
from policies.definitions import (
    create_policy_definition,
    delete_policy_definition,
    get_policy_definition,
    policy_definition_from_expanded,
    policy_definition_to_expanded,
    query_policy_definitions,
    replace_policy_definition,
)
from runtime.dependencies import db_session


def policies_router() -> APIRouter:
    router = APIRouter(
        prefix="/management/v3/policydefinitions", tags=["policies"], dependencies=[Depends(require_api_key)]
    )

    @router.post("")
    async def create(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        record = create_policy_definition(
            session, policy_definition_from_expanded(await expanded_body(request))
        )
        return id_response(record.id, record.created_at)

    @router.post("/request")
    async def query(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        spec = await query_spec_body(request)
        return compacted_list(
            [policy_definition_to_expanded(r) for r in query_policy_definitions(session, spec)]
        )

    @router.get("/{definition_id}")
    def get(definition_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        record = get_policy_definition(session, definition_id)
        if record is None:
            raise NotFoundError(f"Object of type PolicyDefinition with ID={definition_id} was not found")
        return compacted(policy_definition_to_expanded(record))

    @router.put("")
    @router.put("/{definition_id}")
    async def update(
        request: Request, definition_id: str | None = None, session: Session = Depends(db_session)
    ) -> Response:
        node = await expanded_body(request)
        if definition_id is not None and "@id" not in node:
            node["@id"] = definition_id  # EDC's own route names the id in the path only
        record = policy_definition_from_expanded(node, require_id=True)
        same_id(definition_id, record.id)
        replace_policy_definition(session, record)
        return no_content()

    @router.delete("/{definition_id}")
    def remove(definition_id: str, session: Session = Depends(db_session)) -> Response:
        delete_policy_definition(session, definition_id)
        return no_content()

    return router
