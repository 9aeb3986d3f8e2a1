"""Policy definitions: named ODRL policies an operator uploads (EDC ``PolicyDefinition``)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.errors import ConflictError, InvalidInputError, NotFoundError
from catalog.jsonld import EDC_NS, first_node, node_type
from catalog.models import ContractDefinition, PolicyDefinition
from catalog.queryspec import POLICY_FIELDS, QuerySpec
from policies.odrl import Policy, PolicyError, parse_policy

POLICY_DEFINITION_TYPE = EDC_NS + "PolicyDefinition"


@dataclass(frozen=True)
class PolicyDefinitionRecord:
    id: str
    policy_node: dict[str, Any]
    policy: Policy
    private_properties: dict[str, Any]
    created_at: int


def _policy_from_node(node: dict[str, Any]) -> Policy:
    try:
        return parse_policy(node)
    except PolicyError as exc:
        raise InvalidInputError(str(exc), exc.path, exc.invalid_value) from None


def policy_definition_from_expanded(
    node: dict[str, Any], *, require_id: bool = False
) -> PolicyDefinitionRecord:
    types = node_type(node)
    if types and POLICY_DEFINITION_TYPE not in types:
        raise InvalidInputError(f"@type must be PolicyDefinition, not {types[0]}", "@type", types[0])
    definition_id = node.get("@id")
    if definition_id is None:
        if require_id:
            raise InvalidInputError("@id is mandatory", "@id")
        definition_id = str(uuid.uuid4())
    if not isinstance(definition_id, str) or not definition_id.strip() or len(definition_id) > 256:
        raise InvalidInputError("@id must be 1 to 256 characters", "@id", definition_id)
    policy_node = first_node(node, EDC_NS + "policy")
    if policy_node is None:
        raise InvalidInputError("policy is mandatory", EDC_NS + "policy")
    policy_node = {k: v for k, v in policy_node.items() if k != "@id"}
    policy = _policy_from_node(policy_node)
    private = first_node(node, EDC_NS + "privateProperties") or {}
    return PolicyDefinitionRecord(definition_id, policy_node, policy, private, now_millis())


@lru_cache(maxsize=4096)
def _parsed(stored_policy: str) -> Policy:
    # Policies are read on every catalog request; the parsed form is immutable, so
    # one parse per distinct stored text serves all of them.
    return _policy_from_node(json.loads(stored_policy))


def _record(row: PolicyDefinition) -> PolicyDefinitionRecord:
    node = json.loads(row.policy)
    return PolicyDefinitionRecord(
        row.id, node, _parsed(row.policy), json.loads(row.private_properties), row.created_at
    )


def create_policy_definition(session: Session, record: PolicyDefinitionRecord) -> PolicyDefinitionRecord:
    if session.get(PolicyDefinition, record.id) is not None:
        raise ConflictError(f"PolicyDefinition with ID {record.id} already exists")
    session.add(
        PolicyDefinition(
            id=record.id,
            policy=json.dumps(record.policy_node),
            private_properties=json.dumps(record.private_properties),
            created_at=record.created_at,
        )
    )
    session.commit()
    return record


def replace_policy_definition(session: Session, record: PolicyDefinitionRecord) -> None:
    row = session.get(PolicyDefinition, record.id)
    if row is None:
        raise NotFoundError(f"Object of type PolicyDefinition with ID={record.id} was not found")
    row.policy = json.dumps(record.policy_node)
    row.private_properties = json.dumps(record.private_properties)
    session.add(row)
    session.commit()


def delete_policy_definition(session: Session, definition_id: str) -> None:
    row = session.get(PolicyDefinition, definition_id)
    if row is None:
        raise NotFoundError(f"Object of type PolicyDefinition with ID={definition_id} was not found")
    referenced = session.scalars(
        select(ContractDefinition.id).where(  # type: ignore[call-overload]
            (ContractDefinition.access_policy_id == definition_id)
            | (ContractDefinition.contract_policy_id == definition_id)
        )
    ).first()
    if referenced is not None:
        raise ConflictError(
            f"PolicyDefinition {definition_id} cannot be deleted as it is referenced by contract definition {referenced}"
        )
    session.delete(row)
    session.commit()


def get_policy_definition(session: Session, definition_id: str) -> PolicyDefinitionRecord | None:
    row = session.get(PolicyDefinition, definition_id)
    return _record(row) if row is not None else None


def query_policy_definitions(session: Session, spec: QuerySpec) -> list[PolicyDefinitionRecord]:
    statement = (
        select(PolicyDefinition)
        .where(*POLICY_FIELDS.conditions(spec.criteria))
        .order_by(*POLICY_FIELDS.order(spec))
        .offset(spec.offset)
        .limit(spec.limit)
    )
    return [_record(row) for row in session.scalars(statement)]


def policy_definition_to_expanded(record: PolicyDefinitionRecord) -> dict[str, Any]:
    node: dict[str, Any] = {
        "@id": record.id,
        "@type": [POLICY_DEFINITION_TYPE],
        EDC_NS + "policy": [record.policy_node],
        EDC_NS + "createdAt": [{"@value": record.created_at}],
    }
    if record.private_properties:
        node[EDC_NS + "privateProperties"] = [record.private_properties]
    return node
