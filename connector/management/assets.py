"""``/management/v3/assets``."""

from __future__ import annotations

from fastapi import APIRouter

from catalog.assets import (
    AssetRecord,
    asset_from_expanded,
    asset_to_expanded,
    create_asset,
    get_asset,
    query_assets,
    replace_asset,
)
from connector.management.crud import Resource, crud_router
from connector.management.references import delete_unreferenced_asset

ASSETS: Resource[AssetRecord] = Resource(
    path="/management/v3/assets",
    type_name="Asset",
    from_expanded=asset_from_expanded,
    to_expanded=asset_to_expanded,
    create=create_asset,
    replace=replace_asset,
    delete=delete_unreferenced_asset,
    get=get_asset,
    query=query_assets,
    record_id=lambda record: record.id,
    created_at=lambda record: record.created_at,
)


def assets_router() -> APIRouter:
    return crud_router(ASSETS, tag="assets")
