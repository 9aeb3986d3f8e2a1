"""``/management/v3/contractdefinitions``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session

from catalog.contract_definitions import (
    contract_definition_from_expanded,
    contract_definition_to_expanded,
    create_contract_definition,
    delete_contract_definition,
    get_contract_definition,
    query_contract_definitions,
    replace_contract_definition,
)
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
from runtime.dependencies import db_session


def contract_definitions_router() -> APIRouter:
    router = APIRouter(
        prefix="/management/v3/contractdefinitions",
        tags=["contract definitions"],
        dependencies=[Depends(require_api_key)],
    )

    @router.post("")
    async def create(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        record = create_contract_definition(
            session, contract_definition_from_expanded(await expanded_body(request))
        )
        return id_response(record.id, record.created_at)

    @router.post("/request")
    async def query(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        spec = await query_spec_body(request)
        return compacted_list(
            [contract_definition_to_expanded(r) for r in query_contract_definitions(session, spec)]
        )

    @router.get("/{definition_id}")
    def get(definition_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        record = get_contract_definition(session, definition_id)
        if record is None:
            raise NotFoundError(f"Object of type ContractDefinition with ID={definition_id} was not found")
        return compacted(contract_definition_to_expanded(record))

    @router.put("")
    @router.put("/{definition_id}")
    async def update(
        request: Request, definition_id: str | None = None, session: Session = Depends(db_session)
    ) -> Response:
        record = contract_definition_from_expanded(await expanded_body(request), require_id=True)
        same_id(definition_id, record.id)
        replace_contract_definition(session, record)
        return no_content()

    @router.delete("/{definition_id}")
    def remove(definition_id: str, session: Session = Depends(db_session)) -> Response:
        delete_contract_definition(session, definition_id)
        return no_content()

    return router
