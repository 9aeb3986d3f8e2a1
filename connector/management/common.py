"""Helpers every Management API router uses: reading JSON-LD bodies, writing responses."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from catalog.jsonld import (
    EDC_NS,
    EDC_RESPONSE_CONTEXT,
    ODRL_NS,
    TESSERA_NS,
    compact_edc,
    expand_management_input,
    first_value,
)
from catalog.queryspec import QuerySpec, query_spec_from_expanded
from connector.management.errors import ManagementApiError
from runtime.requests import read_json


async def expanded_body(request: Request) -> dict[str, Any]:
    return expand_management_input(await read_json(request))


async def query_spec_body(request: Request) -> QuerySpec:
    """The QuerySpec of a ``/request`` call; no body at all means the default QuerySpec."""
    body = await read_json(request, optional=True)
    if body is None or body == {}:
        return QuerySpec()
    return query_spec_from_expanded(expand_management_input(body))


def id_response(object_id: str, created_at: int) -> JSONResponse:
    return JSONResponse(
        {"@type": "IdResponse", "@id": object_id, "createdAt": created_at, "@context": EDC_RESPONSE_CONTEXT}
    )


def compacted(node: dict[str, Any]) -> JSONResponse:
    return JSONResponse(compact_edc(node))


def compacted_list(nodes: list[dict[str, Any]]) -> JSONResponse:
    # Every item carries its own @context: EDC clients read items one by one.
    return JSONResponse([compact_edc(node) for node in nodes])


def no_content() -> Response:
    return Response(status_code=204)


def same_id(path_id: str | None, body_id: str) -> None:
    if path_id is not None and path_id != body_id:
        raise ManagementApiError(
            400, "InvalidRequest", f"the path names {path_id} but the body's @id is {body_id}", "@id", body_id
        )


def declared_purpose(node: dict[str, Any]) -> Any:
    """The purpose a request declares, however its context spelled it: bare under EDC's default
    vocabulary, ODRL's ``purpose`` (what EDC's management context makes of a bare ``purpose``), or
    Tessera's own term. Not validated here."""
    for namespace in (EDC_NS, ODRL_NS, TESSERA_NS):
        value = first_value(node, namespace + "purpose")
        if value is not None:
            return value
    return None
