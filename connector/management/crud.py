"""One router shape for the Management API's stored resources (EDC v3).

Assets, policy definitions and contract definitions all offer: create
(``IdResponse``), ``/request`` with a QuerySpec, get, update by PUT (id from
the body's ``@id``, or the path), and delete. ``Resource`` names what differs;
``crud_router`` is the rest, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session

from catalog.errors import NotFoundError
from catalog.queryspec import QuerySpec
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

R = TypeVar("R")


@dataclass(frozen=True)
class Resource(Generic[R]):
    path: str  # e.g. "/management/v3/assets"
    type_name: str  # e.g. "Asset", for error messages
    from_expanded: Callable[..., R]  # (expanded node, require_id=bool) -> record
    to_expanded: Callable[[R], dict[str, Any]]
    create: Callable[[Session, R], Any]
    replace: Callable[[Session, R], Any]
    delete: Callable[[Session, str], None]
    get: Callable[[Session, str], R | None]
    query: Callable[[Session, QuerySpec], list[R]]
    record_id: Callable[[R], str]
    created_at: Callable[[R], int]
    # EDC's PUT /policydefinitions/{id} may name the id in the path only.
    id_from_path: bool = False
    # Told of every change once it has committed (e.g. to recompile a policy on this replica).
    on_written: Callable[[Request, R], None] | None = None
    on_deleted: Callable[[Request, str], None] | None = None

    def not_found(self, object_id: str) -> NotFoundError:
        return NotFoundError(f"Object of type {self.type_name} with ID={object_id} was not found")


def crud_router(resource: Resource[R], *, tag: str) -> APIRouter:
    router = APIRouter(prefix=resource.path, tags=[tag], dependencies=[Depends(require_api_key)])

    # The database work of an async route runs in a worker thread, never on the event loop (which
    # serves every peer and worker of the connector meanwhile).
    def _written(request: Request, session: Session, record: R, store: Callable[[Session, R], Any]) -> None:
        store(session, record)
        if resource.on_written is not None:
            resource.on_written(request, record)

    @router.post("")
    async def create(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        record = resource.from_expanded(await expanded_body(request))
        await run_in_threadpool(_written, request, session, record, resource.create)
        return id_response(resource.record_id(record), resource.created_at(record))

    @router.post("/request")
    async def query(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        spec = await query_spec_body(request)
        found = await run_in_threadpool(resource.query, session, spec)
        return compacted_list([resource.to_expanded(r) for r in found])

    @router.get("/{object_id}")
    def get(object_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        record = resource.get(session, object_id)
        if record is None:
            raise resource.not_found(object_id)
        return compacted(resource.to_expanded(record))

    @router.put("")
    @router.put("/{object_id}")
    async def update(
        request: Request, object_id: str | None = None, session: Session = Depends(db_session)
    ) -> Response:
        node = await expanded_body(request)
        if resource.id_from_path and object_id is not None and "@id" not in node:
            node["@id"] = object_id
        record = resource.from_expanded(node, require_id=True)
        same_id(object_id, resource.record_id(record))
        await run_in_threadpool(_written, request, session, record, resource.replace)
        return no_content()

    @router.delete("/{object_id}")
    def remove(object_id: str, request: Request, session: Session = Depends(db_session)) -> Response:
        resource.delete(session, object_id)
        if resource.on_deleted is not None:
            resource.on_deleted(request, object_id)
        return no_content()

    return router
