"""``/management/v3/assets``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session

from catalog.assets import (
    asset_from_expanded,
    asset_to_expanded,
    create_asset,
    delete_asset,
    get_asset,
    query_assets,
    replace_asset,
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


def assets_router() -> APIRouter:
    router = APIRouter(
        prefix="/management/v3/assets", tags=["assets"], dependencies=[Depends(require_api_key)]
    )

    @router.post("")
    async def create(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        record = create_asset(session, asset_from_expanded(await expanded_body(request)))
        return id_response(record.id, record.created_at)

    @router.post("/request")
    async def query(request: Request, session: Session = Depends(db_session)) -> JSONResponse:
        spec = await query_spec_body(request)
        return compacted_list([asset_to_expanded(r) for r in query_assets(session, spec)])

    @router.get("/{asset_id}")
    def get(asset_id: str, session: Session = Depends(db_session)) -> JSONResponse:
        record = get_asset(session, asset_id)
        if record is None:
            raise NotFoundError(f"Object of type Asset with ID={asset_id} was not found")
        return compacted(asset_to_expanded(record))

    @router.put("")
    @router.put("/{asset_id}")
    async def update(
        request: Request, asset_id: str | None = None, session: Session = Depends(db_session)
    ) -> Response:
        record = asset_from_expanded(await expanded_body(request), require_id=True)
        same_id(asset_id, record.id)
        replace_asset(session, record)
        return no_content()

    @router.delete("/{asset_id}")
    def remove(asset_id: str, session: Session = Depends(db_session)) -> Response:
        delete_asset(session, asset_id)
        return no_content()

    return router
