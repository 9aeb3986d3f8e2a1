"""Policy definitions: named ODRL policies an operator uploads (EDC ``PolicyDefinition``).

Whoever stores, replaces or deletes a definition here also stores its
compiled Casbin rules (``policies.rule_store``) in the same transaction, so
the rules can never lag the definitions; policy engines learn of the change
from the version the write bumps.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, select
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.errors import ConflictError, InvalidInputError, NotFoundError
from catalog.jsonld import EDC_NS, first_node, node_type
from catalog.models import ContractDefinition, PolicyDefinition
from catalog.queryspec import POLICY_FIELDS, QuerySpec
from policies.compiler import CompileError, compile_policy
from policies.odrl import Policy, PolicyError, check_conflicts, parse_policy, rule_label
from policies.rule_store import delete_policy_rules, write_policy_rules

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
    _check_compilable(definition_id, policy)
    private = first_node(node, EDC_NS + "privateProperties") or {}
    return PolicyDefinitionRecord(definition_id, policy_node, policy, private, now_millis())


def _check_compilable(definition_id: str, policy: Policy) -> None:
    """Clashing rules without a conflict strategy, or anything the policy engine cannot compile: 400."""
    try:
        check_conflicts(policy)
        compile_policy(definition_id, policy, "0")
    except PolicyError as exc:
        raise InvalidInputError(str(exc), exc.path, exc.invalid_value) from None
    except CompileError as exc:
        raise InvalidInputError(str(exc), "policy") from None


def policy_problems(definition_id: str, policy_node: Any) -> list[str]:
    """Everything that makes a (stored) policy unusable: parse errors, unresolved clashes, compile errors."""
    try:
        policy = parse_policy(policy_node)
    except PolicyError as exc:
        return [f"{exc.path}: {exc}"]
    problems = []
    if policy.void_because is not None:
        strategy = (
            "the conflict strategy is invalid" if policy.conflict == "invalid" else "no conflict strategy"
        )
        problems = [
            f"{rule_label(policy.permissions[c.permission], c.permission)} and "
            f"{rule_label(policy.prohibitions[c.prohibition], c.prohibition)} clash on action {c.action!r} "
            f"and {strategy} resolves it"
            for c in policy.clashes
        ]
    try:
        compile_policy(definition_id, policy, "0")
    except CompileError as exc:
        problems.append(str(exc))
    return problems


def stored_policy_node(session: Session, definition_id: str) -> dict[str, Any] | None:
    """The stored policy as it is, without parsing it (None: no such definition)."""
    row = session.get(PolicyDefinition, definition_id)
    if row is None:
        return None
    node: dict[str, Any] = json.loads(row.policy)
    return node


def stored_policies(connection: Connection, ids: list[str] | None = None) -> dict[str, Policy | None]:
    """Policy id -> its parsed policy (None where the stored text no longer parses), for the engine."""
    table = PolicyDefinition.__table__  # type: ignore[attr-defined]
    found: dict[str, Policy | None] = {}
    chunks = [None] if ids is None else [ids[i : i + 500] for i in range(0, len(ids), 500)]
    for chunk in chunks:
        statement = select(table.c.id, table.c.policy)
        if chunk is not None:
            statement = statement.where(table.c.id.in_(chunk))
        for definition_id, text in connection.execute(statement):
            try:
                found[definition_id] = _parsed(text)
            except InvalidInputError:
                found[definition_id] = None
    return found


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
    write_policy_rules(session.connection(), record.id, record.policy)  # same transaction
    session.commit()
    return record


def replace_policy_definition(session: Session, record: PolicyDefinitionRecord) -> None:
    row = session.get(PolicyDefinition, record.id)
    if row is None:
        raise NotFoundError(f"Object of type PolicyDefinition with ID={record.id} was not found")
    row.policy = json.dumps(record.policy_node)
    row.private_properties = json.dumps(record.private_properties)
    session.add(row)
    write_policy_rules(session.connection(), record.id, record.policy)  # same transaction
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
    delete_policy_rules(session.connection(), definition_id)  # same transaction
    session.commit()


def get_policy_definition(session: Session, definition_id: str) -> PolicyDefinitionRecord | None:
    row = session.get(PolicyDefinition, definition_id)
    return _record(row) if row is not None else None


def query_policy_definitions(session: Session, spec: QuerySpec) -> list[PolicyDefinitionRecord]:
    statement = POLICY_FIELDS.statement(PolicyDefinition, spec)
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
