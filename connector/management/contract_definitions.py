"""``/management/v3/contractdefinitions``."""

from __future__ import annotations

from fastapi import APIRouter

from catalog.contract_definitions import (
    ContractDefinitionRecord,
    contract_definition_from_expanded,
    contract_definition_to_expanded,
    create_contract_definition,
    get_contract_definition,
    query_contract_definitions,
    replace_contract_definition,
)
from connector.management.crud import Resource, crud_router
from connector.management.references import delete_unreferenced_contract_definition

CONTRACT_DEFINITIONS: Resource[ContractDefinitionRecord] = Resource(
    path="/management/v3/contractdefinitions",
    type_name="ContractDefinition",
    from_expanded=contract_definition_from_expanded,
    to_expanded=contract_definition_to_expanded,
    create=create_contract_definition,
    replace=replace_contract_definition,
    delete=delete_unreferenced_contract_definition,
    get=get_contract_definition,
    query=query_contract_definitions,
    record_id=lambda record: record.id,
    created_at=lambda record: record.created_at,
)


def contract_definitions_router() -> APIRouter:
    return crud_router(CONTRACT_DEFINITIONS, tag="contract definitions")
