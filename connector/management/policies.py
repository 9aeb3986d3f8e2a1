"""``/management/v3/policydefinitions``, with ``/{id}/validate`` and ``/{id}/explain``.

The store writes each definition's compiled rules in its transaction; once it
has committed, this replica's policy engine applies the change at once
(other replicas within a second, from the engine version).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import Session

from catalog.errors import NotFoundError
from connector.management.auth import require_api_key
from connector.management.crud import Resource, crud_router
from connector.management.policy_explain import explain_request, explanation_body, validation_body
from policies.definitions import (
    PolicyDefinitionRecord,
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
from policies.engine import Explanation
from runtime.dependencies import db_session, service_core
from runtime.requests import read_json


def _not_found(definition_id: str) -> NotFoundError:
    return POLICY_DEFINITIONS.not_found(definition_id)


POLICY_DEFINITIONS: Resource[PolicyDefinitionRecord] = Resource(
    path="/management/v3/policydefinitions",
    type_name="PolicyDefinition",
    from_expanded=policy_definition_from_expanded,
    to_expanded=policy_definition_to_expanded,
    create=create_policy_definition,
    replace=replace_policy_definition,
    delete=delete_policy_definition,
    get=get_policy_definition,
    query=query_policy_definitions,
    record_id=lambda record: record.id,
    created_at=lambda record: record.created_at,
    id_from_path=True,
    on_written=lambda request, record: service_core(request).policy_engine.compile(record),
    on_deleted=lambda request, definition_id: service_core(request).policy_engine.remove(definition_id),
)


def policies_router() -> APIRouter:
    # The two routes below are declared first so that "/{id}/validate" is not read as an id.
    router = APIRouter(tags=["policies"])
    authenticated = [Depends(require_api_key)]  # the CRUD routes included below bring their own

    @router.post(POLICY_DEFINITIONS.path + "/{definition_id}/validate", dependencies=authenticated)
    def validate(definition_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        """Is the stored definition usable: does it parse, are its clashes resolved, does it compile?"""
        node = stored_policy_node(session, definition_id)
        if node is None:
            raise _not_found(definition_id)
        return JSONResponse(validation_body(policy_problems(definition_id, node)))

    @router.post(POLICY_DEFINITIONS.path + "/{definition_id}/explain", dependencies=authenticated)
    async def explain(
        definition_id: str, request: Request, session: Session = Depends(db_session)
    ) -> JSONResponse:
        """Given a participant and a context: the decision, and which rules and constraints hold and why."""
        if await run_in_threadpool(stored_policy_node, session, definition_id) is None:
            raise _not_found(definition_id)
        context, action = explain_request(await read_json(request))
        engine = service_core(request).policy_engine

        def explained() -> Explanation | None:
            explanation = engine.explain(definition_id, context, action)
            if explanation is None:  # stored by another replica a moment ago
                engine.refresh()
                explanation = engine.explain(definition_id, context, action)
            return explanation

        explanation = await run_in_threadpool(explained)
        if explanation is None:
            raise _not_found(definition_id)
        return JSONResponse(explanation_body(explanation))

    router.include_router(crud_router(POLICY_DEFINITIONS, tag="policies"))
    return router
