"""``/management/v3/policydefinitions``, with ``/{id}/validate`` and ``/{id}/explain``.

The store writes each definition's compiled rules in its transaction; once it
has committed, this replica's policy engine applies the change at once
(other replicas within a second, from the engine version).
"""

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
from connector.management.policy_explain import explain_request, explanation_body, validation_body
from policies.definitions import (
    create_policy_definition,
    delete_policy_definition,
    get_policy_definition,
    policy_definition_from_expanded,
    policy_definition_to_expanded,
    policy_problems,
    query_policy_definitions,
    replace_policy_definition,
    stored_policy_node,
)
from runtime.dependencies import db_session, service_core
from runtime.requests import read_json


def _not_found(definition_id: str) -> NotFoundError:
    return NotFoundError(f"Object of type PolicyDefinition with ID={definition_id} was not found")


def policies_router() -> APIRouter:
    router = APIRouter(
        prefix="/management/v3/policydefinitions", tags=["policies"], dependencies=[Depends(require_api_key)]
    )

    @router.post("")
    async def create(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        record = create_policy_definition(
            session, policy_definition_from_expanded(await expanded_body(request))
        )
        service_core(request).policy_engine.compile(record)
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
            raise _not_found(definition_id)
        return compacted(policy_definition_to_expanded(record))

    @router.post("/{definition_id}/validate")
    def validate(definition_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        """Is the stored definition usable: does it parse, are its clashes resolved, does it compile?"""
        node = stored_policy_node(session, definition_id)
        if node is None:
            raise _not_found(definition_id)
        return JSONResponse(validation_body(policy_problems(definition_id, node)))

    @router.post("/{definition_id}/explain")
    async def explain(
        definition_id: str, request: Request, session: Session = Depends(db_session)
    ) -> JSONResponse:
        """Given a participant and a context: the decision, and which rules and constraints hold and why."""
        if stored_policy_node(session, definition_id) is None:
            raise _not_found(definition_id)
        context, action = explain_request(await read_json(request))
        engine = service_core(request).policy_engine
        explanation = engine.explain(definition_id, context, action)
        if explanation is None:  # stored by another replica a moment ago
            engine.refresh()
            explanation = engine.explain(definition_id, context, action)
        if explanation is None:
            raise _not_found(definition_id)
        return JSONResponse(explanation_body(explanation))

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
        service_core(request).policy_engine.compile(record)
        return no_content()

    @router.delete("/{definition_id}")
    def remove(definition_id: str, request: Request, session: Session = Depends(db_session)) -> Response:
        delete_policy_definition(session, definition_id)
        service_core(request).policy_engine.remove(definition_id)
        return no_content()

    return router
