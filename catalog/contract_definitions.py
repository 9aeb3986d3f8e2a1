"""Contract definitions: which assets are offered, under which access and contract policy."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.errors import ConflictError, InvalidInputError, NotFoundError
from catalog.jsonld import EDC_NS, first_node, first_value, node_type, values
from catalog.models import ContractDefinition, PolicyDefinition
from catalog.queryspec import (
    CONTRACT_DEFINITION_FIELDS,
    Criterion,
    QuerySpec,
    QuerySpecError,
    asset_condition,
    criterion_from_expanded,
    criterion_from_json,
)

CONTRACT_DEFINITION_TYPE = EDC_NS + "ContractDefinition"
Approval = Literal["automatic", "manual"]


@dataclass(frozen=True)
class ContractDefinitionRecord:
    id: str
    access_policy_id: str
    contract_policy_id: str
    assets_selector: tuple[Criterion, ...]
    private_properties: dict[str, Any]
    negotiation_approval: Approval
    transfer_approval: Approval
    created_at: int


def _approval(node: dict[str, Any], name: str) -> Approval:
    value = first_value(node, EDC_NS + name)
    if value is None:
        return "automatic"
    if value not in ("automatic", "manual"):
        raise InvalidInputError(f"{name} must be 'automatic' or 'manual'", EDC_NS + name, value)
    return "manual" if value == "manual" else "automatic"


def _policy_id(node: dict[str, Any], name: str) -> str:
    value = first_value(node, EDC_NS + name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{name} is mandatory", EDC_NS + name, value)
    return value


def contract_definition_from_expanded(
    node: dict[str, Any], *, require_id: bool = False
) -> ContractDefinitionRecord:
    types = node_type(node)
    if types and CONTRACT_DEFINITION_TYPE not in types:
        raise InvalidInputError(f"@type must be ContractDefinition, not {types[0]}", "@type", types[0])
    definition_id = node.get("@id")
    if definition_id is None:
        if require_id:
            raise InvalidInputError("@id is mandatory", "@id")
        definition_id = str(uuid.uuid4())
    if not isinstance(definition_id, str) or not definition_id.strip() or len(definition_id) > 256:
        raise InvalidInputError("@id must be 1 to 256 characters", "@id", definition_id)
    selector: list[Criterion] = []
    for index, item in enumerate(values(node, EDC_NS + "assetsSelector")):
        try:
            criterion = criterion_from_expanded(item, f"assetsSelector/{index}")
            asset_condition(criterion)  # refuses unknown fields and malformed paths now, not at catalog time
        except QuerySpecError as exc:
            raise InvalidInputError(str(exc), exc.path, exc.invalid_value) from None
        selector.append(criterion)
    return ContractDefinitionRecord(
        id=definition_id,
        access_policy_id=_policy_id(node, "accessPolicyId"),
        contract_policy_id=_policy_id(node, "contractPolicyId"),
        assets_selector=tuple(selector),
        private_properties=first_node(node, EDC_NS + "privateProperties") or {},
        negotiation_approval=_approval(node, "negotiationApproval"),
        transfer_approval=_approval(node, "transferApproval"),
        created_at=now_millis(),
    )


def _check_policies_exist(session: Session, record: ContractDefinitionRecord) -> None:
    for name, policy_id in (
        ("accessPolicyId", record.access_policy_id),
        ("contractPolicyId", record.contract_policy_id),
    ):
        if session.get(PolicyDefinition, policy_id) is None:
            raise InvalidInputError(
                f"{name} names policy definition {policy_id}, which does not exist", name, policy_id
            )


def _columns(record: ContractDefinitionRecord) -> dict[str, Any]:
    return {
        "access_policy_id": record.access_policy_id,
        "contract_policy_id": record.contract_policy_id,
        "assets_selector": json.dumps([c.as_json() for c in record.assets_selector]),
        "private_properties": json.dumps(record.private_properties),
        "negotiation_approval": record.negotiation_approval,
        "transfer_approval": record.transfer_approval,
    }


def record_of(row: ContractDefinition) -> ContractDefinitionRecord:
    return ContractDefinitionRecord(
        id=row.id,
        access_policy_id=row.access_policy_id,
        contract_policy_id=row.contract_policy_id,
        assets_selector=tuple(criterion_from_json(c) for c in json.loads(row.assets_selector)),
        private_properties=json.loads(row.private_properties),
        negotiation_approval="manual" if row.negotiation_approval == "manual" else "automatic",
        transfer_approval="manual" if row.transfer_approval == "manual" else "automatic",
        created_at=row.created_at,
    )


def create_contract_definition(
    session: Session, record: ContractDefinitionRecord
) -> ContractDefinitionRecord:
    if session.get(ContractDefinition, record.id) is not None:
        raise ConflictError(f"ContractDefinition with ID {record.id} already exists")
    _check_policies_exist(session, record)
    session.add(ContractDefinition(id=record.id, created_at=record.created_at, **_columns(record)))
    session.commit()
    return record


def replace_contract_definition(session: Session, record: ContractDefinitionRecord) -> None:
    row = session.get(ContractDefinition, record.id)
    if row is None:
        raise NotFoundError(f"Object of type ContractDefinition with ID={record.id} was not found")
    _check_policies_exist(session, record)
    for column, value in _columns(record).items():
        setattr(row, column, value)
    session.add(row)
    session.commit()


def delete_contract_definition(session: Session, definition_id: str) -> None:
    row = session.get(ContractDefinition, definition_id)
    if row is None:
        raise NotFoundError(f"Object of type ContractDefinition with ID={definition_id} was not found")
    session.delete(row)
    session.commit()


def get_contract_definition(session: Session, definition_id: str) -> ContractDefinitionRecord | None:
    row = session.get(ContractDefinition, definition_id)
    return record_of(row) if row is not None else None


def query_contract_definitions(session: Session, spec: QuerySpec) -> list[ContractDefinitionRecord]:
    statement = CONTRACT_DEFINITION_FIELDS.statement(ContractDefinition, spec)
    return [record_of(row) for row in session.scalars(statement)]


def all_contract_definitions(session: Session) -> list[ContractDefinitionRecord]:
    return [
        record_of(row) for row in session.scalars(select(ContractDefinition).order_by(ContractDefinition.id))
    ]


def contract_definition_to_expanded(record: ContractDefinitionRecord) -> dict[str, Any]:
    node: dict[str, Any] = {
        "@id": record.id,
        "@type": [CONTRACT_DEFINITION_TYPE],
        EDC_NS + "accessPolicyId": [{"@value": record.access_policy_id}],
        EDC_NS + "contractPolicyId": [{"@value": record.contract_policy_id}],
        EDC_NS + "assetsSelector": [
            {
                "@type": [EDC_NS + "Criterion"],
                EDC_NS + "operandLeft": [{"@value": c.left}],
                EDC_NS + "operator": [{"@value": c.operator}],
                EDC_NS + "operandRight": [{"@value": v} for v in c.right],
            }
            for c in record.assets_selector
        ],
        EDC_NS + "negotiationApproval": [{"@value": record.negotiation_approval}],
        EDC_NS + "transferApproval": [{"@value": record.transfer_approval}],
        EDC_NS + "createdAt": [{"@value": record.created_at}],
    }
    if record.private_properties:
        node[EDC_NS + "privateProperties"] = [record.private_properties]
    return node
