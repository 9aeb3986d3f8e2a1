"""What the "Assets and offers" pages show: the connector's assets, their offers and audience."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from catalog.assets import AssetRecord, query_assets
from catalog.contract_definitions import ContractDefinitionRecord, all_contract_definitions
from catalog.dcat import (
    CONSENT_PURPOSE,
    DESCRIPTION,
    EDC_DESCRIPTION,
    EDC_NAME,
    FREQUENCY,
    KEYWORD,
    LICENSE,
    MEDIA_TYPE,
    PERSONAL,
    PUBLISHER,
    SPATIAL,
    SUBJECT_FIELD,
    TEMPORAL,
    THEME,
    TITLE,
)
from catalog.jsonld import DCAT_NS, DCT_NS, EDC_NS, TESSERA_NS
from catalog.queryspec import A_ID, QuerySpec, selector_condition
from connector.offering import Offering
from connector.pages.data_address import PublicDataAddress, public_data_address
from connector.pages.words import policy_words, selector_words
from identity.trustlist import list_members
from policies.decision import RequestContext
from policies.definitions import get_policy_definition
from policies.engine import PolicyEngine

PAGE_SIZE = 50
FIELD_LABELS = {
    TITLE: "Title",
    EDC_NAME: "Name",
    DESCRIPTION: "Description",
    EDC_DESCRIPTION: "Description",
    KEYWORD: "Keywords",
    THEME: "Themes",
    PUBLISHER: "Publisher",
    LICENSE: "Licence",
    MEDIA_TYPE: "Media type",
    FREQUENCY: "Update frequency",
    TEMPORAL: "Time covered",
    SPATIAL: "Place covered",
    PERSONAL: "Personal data",
    SUBJECT_FIELD: "Subject field",
    CONSENT_PURPOSE: "Consent purpose",
}
_HIDDEN_PROPERTIES = {EDC_NS + "id"}
_PREFIXES = ((DCT_NS, "dct:"), (DCAT_NS, "dcat:"), (TESSERA_NS, "tessera:"), (EDC_NS, ""))


@dataclass(frozen=True)
class AssetRow:
    id: str
    title: str | None
    publisher: str | None
    license: str | None
    personal: bool
    created_at: int
    offered_by: int


@dataclass(frozen=True)
class PolicyView:
    id: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class DefinitionView:
    id: str
    selector: str
    access: PolicyView
    contract: PolicyView
    negotiation_approval: str
    transfer_approval: str


@dataclass(frozen=True)
class AudienceRow:
    did: str
    memberships: tuple[str, ...]
    sees: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class AssetDetail:
    asset: AssetRecord
    fields: tuple[tuple[str, tuple[str, ...]], ...]
    address: PublicDataAddress
    definitions: tuple[DefinitionView, ...]
    audience: tuple[AudienceRow, ...]


def _selecting(
    session: Session, definitions: Sequence[ContractDefinitionRecord], asset_ids: Sequence[str]
) -> dict[str, list[ContractDefinitionRecord]]:
    """For each asset, the contract definitions whose selector picks it."""
    found: dict[str, list[ContractDefinitionRecord]] = {asset_id: [] for asset_id in asset_ids}
    if not asset_ids:
        return found
    for definition in definitions:
        condition = selector_condition([definition.assets_selector])
        for asset_id in session.scalars(select(A_ID).where(A_ID.in_(asset_ids), condition)):
            found[asset_id].append(definition)
    return found


def asset_rows(session: Session, page: int) -> tuple[list[AssetRow], bool]:
    """One page of the connector's assets, newest first, and whether another page follows."""
    records = query_assets(
        session, QuerySpec(offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE + 1, sort_order="DESC")
    )
    has_more = len(records) > PAGE_SIZE
    records = records[:PAGE_SIZE]
    selecting = _selecting(session, all_contract_definitions(session), [r.id for r in records])
    rows = [
        AssetRow(
            r.id,
            r.metadata.title,
            r.metadata.publisher,
            r.metadata.license,
            r.metadata.personal,
            r.created_at,
            len(selecting[r.id]),
        )
        for r in records
    ]
    return rows, has_more


def _label(key: str) -> str:
    if key in FIELD_LABELS:
        return FIELD_LABELS[key]
    for namespace, prefix in _PREFIXES:
        if key.startswith(namespace):
            return prefix + key[len(namespace) :]
    return key


def _text(item: Any) -> str:
    if isinstance(item, dict):
        if "@value" in item:
            return str(item["@value"])
        if "@id" in item and len(item) == 1:
            return str(item["@id"])
        parts = [
            f"{_label(k)} {', '.join(_text(v) for v in _items(v))}"
            for k, v in item.items()
            if not k.startswith("@")
        ]
        return "; ".join(parts)
    return str(item)


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def metadata_fields(asset: AssetRecord) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The asset's public properties as (label, values), DCAT terms first in a fixed order."""
    known = [k for k in FIELD_LABELS if k in asset.properties]
    others = sorted(k for k in asset.properties if k not in FIELD_LABELS and k not in _HIDDEN_PROPERTIES)
    fields = []
    for key in (*known, *others):
        texts = tuple(_text(v) for v in _items(asset.properties[key]))
        if key == PERSONAL:
            texts = ("yes — personal data",) if asset.metadata.personal else ("no",)
        fields.append((_label(key), texts))
    return tuple(fields)


def _policy_view(session: Session, policy_id: str) -> PolicyView:
    record = get_policy_definition(session, policy_id)
    if record is None:
        return PolicyView(policy_id, ("This policy definition does not exist: the offer is withdrawn.",))
    return PolicyView(policy_id, tuple(policy_words(record.policy)))


def _audience(
    session: Session, asset_id: str, definitions: Sequence[ContractDefinitionRecord], engine: PolicyEngine
) -> tuple[AudienceRow, ...]:
    selecting = {d.id for d in definitions}
    rows = []
    for member in list_members(session):
        context = RequestContext(
            participant_id=member.did, memberships=frozenset(member.memberships), stage="catalog"
        )
        offering = Offering(session, context, engine)
        reasons = tuple(
            f"{outcome.contract_definition.id}: {outcome.decision.explanation}"
            for outcome in offering.outcomes
            if outcome.contract_definition.id in selecting
        ) or ("No contract definition offers this asset.",)
        rows.append(
            AudienceRow(member.did, member.memberships, offering.dataset(asset_id) is not None, reasons)
        )
    return tuple(rows)


def asset_detail(session: Session, asset: AssetRecord, engine: PolicyEngine) -> AssetDetail:
    definitions = _selecting(session, all_contract_definitions(session), [asset.id])[asset.id]
    views = tuple(
        DefinitionView(
            d.id,
            selector_words(d.assets_selector),
            _policy_view(session, d.access_policy_id),
            _policy_view(session, d.contract_policy_id),
            d.negotiation_approval,
            d.transfer_approval,
        )
        for d in definitions
    )
    return AssetDetail(
        asset,
        metadata_fields(asset),
        public_data_address(asset.data_address),
        views,
        _audience(session, asset.id, definitions, engine),
    )
