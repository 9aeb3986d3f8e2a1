"""Assets: what a participant publishes, stored as expanded JSON-LD plus an index.

Creation, replacement and deletion each happen in one transaction, asset and
index rows together, so a failure never leaves half an asset behind.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from catalog.dcat import IndexedMetadata, MetadataError, validate_metadata
from catalog.errors import ConflictError, InvalidInputError, NotFoundError
from catalog.jsonld import EDC_NS, first_node, first_value, node_type
from catalog.models import Asset, AssetProperty
from catalog.queryspec import PRIVATE_KEY_PREFIX, QuerySpec, asset_conditions, asset_order

ASSET_TYPE = EDC_NS + "Asset"
CATALOG_ASSET_TYPE = EDC_NS + "CatalogAsset"
DATA_ADDRESS_TYPE = EDC_NS + "DataAddress"
ID_PROPERTY = EDC_NS + "id"
MAX_ID_LENGTH = 256
MAX_INDEXED_BYTES = 512  # keeps (key, value) index entries well inside PostgreSQL's b-tree limit


@dataclass(frozen=True)
class AssetRecord:
    id: str
    properties: dict[str, Any]
    private_properties: dict[str, Any]
    data_address: dict[str, Any]
    created_at: int

    @cached_property
    def metadata(self) -> IndexedMetadata:
        # Validated when the asset was accepted; read back only where it is shown.
        return validate_metadata(self.properties)


def now_millis() -> int:
    return int(time.time() * 1000)


def _properties_of(node: dict[str, Any], iri: str) -> dict[str, Any]:
    found = first_node(node, iri)
    if found is None:
        return {}
    return {k: v for k, v in found.items() if k not in ("@id", "@type")}


def _check_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError("@id must not be blank", "@id", value)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInputError(f"@id is longer than {MAX_ID_LENGTH} characters", "@id", value[:40] + "…")
    return value


def _check_data_address(address: dict[str, Any]) -> None:
    kind = first_value(address, EDC_NS + "type")
    if not isinstance(kind, str) or not kind.strip():
        raise InvalidInputError(
            "dataAddress.type is mandatory", EDC_NS + "dataAddress/" + EDC_NS + "type", kind
        )
    if kind == "HttpData":
        base_url = first_value(address, EDC_NS + "baseUrl")
        parts = urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(
                "an HttpData dataAddress needs baseUrl, an http(s) URL", EDC_NS + "baseUrl", base_url
            )


def asset_from_expanded(
    node: dict[str, Any], *, require_id: bool = False, created_at: int | None = None
) -> AssetRecord:
    """Validate an expanded Asset node (as the Management API receives it)."""
    types = node_type(node)
    if types and not {ASSET_TYPE, CATALOG_ASSET_TYPE} & set(types):
        raise InvalidInputError(f"@type must be Asset, not {types[0]}", "@type", types[0])
    if "@id" in node:
        asset_id = _check_id(node["@id"])
    elif require_id:
        raise InvalidInputError("@id is mandatory", "@id")
    else:
        asset_id = str(uuid.uuid4())
    if first_node(node, EDC_NS + "properties") is None and EDC_NS + "properties" not in node:
        raise InvalidInputError("properties is mandatory", EDC_NS + "properties")
    properties = _properties_of(node, EDC_NS + "properties")
    private = _properties_of(node, EDC_NS + "privateProperties")
    shared = set(properties) & set(private)
    if shared:
        raise InvalidInputError(
            "properties and privateProperties must not share keys",
            EDC_NS + "privateProperties",
            sorted(shared),
        )
    address = first_node(node, EDC_NS + "dataAddress")
    if address is None:
        raise InvalidInputError("dataAddress is mandatory", EDC_NS + "dataAddress")
    address = {k: v for k, v in address.items() if k not in ("@id",)}
    _check_data_address(address)
    properties[ID_PROPERTY] = [{"@value": asset_id}]
    try:
        validate_metadata(properties)
    except MetadataError as exc:
        raise InvalidInputError(str(exc), exc.path, exc.invalid_value) from None
    return AssetRecord(asset_id, properties, private, address, created_at or now_millis())


def _index_rows(record: AssetRecord) -> list[AssetProperty]:
    rows: list[AssetProperty] = []
    for area, props in (("", record.properties), (PRIVATE_KEY_PREFIX, record.private_properties)):
        for key, items in props.items():
            for item in items if isinstance(items, list) else [items]:
                raw = item.get("@value", item.get("@id")) if isinstance(item, dict) else item
                if raw is None or isinstance(raw, dict | list):
                    continue
                text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
                if len(text.encode()) > MAX_INDEXED_BYTES or len((area + key).encode()) > MAX_INDEXED_BYTES:
                    continue  # too long to index: such a value is matched by no criterion
                number = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
                rows.append(AssetProperty(asset_id=record.id, key=area + key, value=text, number=number))
    return rows


def _row(record: AssetRecord) -> Asset:
    meta = record.metadata
    return Asset(
        id=record.id,
        properties=json.dumps(record.properties),
        private_properties=json.dumps(record.private_properties),
        data_address=json.dumps(record.data_address),
        created_at=record.created_at,
        title=meta.title,
        description=meta.description,
        publisher=meta.publisher,
        license=meta.license,
        personal=meta.personal,
    )


def record_of(row: Asset) -> AssetRecord:
    properties = json.loads(row.properties)
    return AssetRecord(
        id=row.id,
        properties=properties,
        private_properties=json.loads(row.private_properties),
        data_address=json.loads(row.data_address),
        created_at=row.created_at,
    )


def create_asset(session: Session, record: AssetRecord) -> AssetRecord:
    if session.get(Asset, record.id) is not None:
        raise ConflictError(f"Asset with ID {record.id} already exists")
    session.add(_row(record))
    session.flush()
    session.add_all(_index_rows(record))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError(f"Asset with ID {record.id} already exists") from None
    return record


def replace_asset(session: Session, record: AssetRecord) -> AssetRecord:
    existing = session.get(Asset, record.id)
    if existing is None:
        raise NotFoundError(f"Object of type Asset with ID={record.id} was not found")
    replacement = AssetRecord(
        record.id, record.properties, record.private_properties, record.data_address, existing.created_at
    )
    session.execute(delete(AssetProperty).where(AssetProperty.asset_id == record.id))  # type: ignore[arg-type]
    session.merge(_row(replacement))
    session.add_all(_index_rows(replacement))
    session.commit()
    return replacement


def delete_asset(session: Session, asset_id: str) -> None:
    row = session.get(Asset, asset_id)
    if row is None:
        raise NotFoundError(f"Object of type Asset with ID={asset_id} was not found")
    session.execute(delete(AssetProperty).where(AssetProperty.asset_id == asset_id))  # type: ignore[arg-type]
    session.delete(row)
    session.commit()


def get_asset(session: Session, asset_id: str) -> AssetRecord | None:
    row = session.get(Asset, asset_id)
    return record_of(row) if row is not None else None


def query_assets(session: Session, spec: QuerySpec) -> list[AssetRecord]:
    statement = (
        select(Asset)
        .where(*asset_conditions(spec.criteria))
        .order_by(*asset_order(spec))
        .offset(spec.offset)
        .limit(spec.limit)
    )
    return [record_of(row) for row in session.scalars(statement)]


def asset_to_expanded(record: AssetRecord) -> dict[str, Any]:
    node: dict[str, Any] = {
        "@id": record.id,
        "@type": [ASSET_TYPE],
        EDC_NS + "properties": [record.properties],
        EDC_NS + "dataAddress": [
            {"@type": [DATA_ADDRESS_TYPE], **{k: v for k, v in record.data_address.items() if k != "@type"}}
        ],
    }
    if record.private_properties:
        node[EDC_NS + "privateProperties"] = [record.private_properties]
    return node
