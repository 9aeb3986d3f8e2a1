"""A DSP Agreement (compacted in the DSP 2025-1 context) in the form EDC's Management API writes.

EDC clients read a ContractAgreement's ``policy`` as EDC compacts it with its
response context (``@vocab`` EDC, prefix ``odrl``): ``@type: odrl:Agreement``,
``odrl:permission`` / ``odrl:prohibition`` / ``odrl:obligation`` (always
present; a single rule unwrapped, none as ``[]``), ``odrl:target``,
``odrl:assigner`` and ``odrl:assignee`` as ``{"@id": ...}``, actions,
operators and ODRL left operands as ``{"@id": "odrl:..."}``.

The conversion is by hand, without JSON-LD processing: the DSP form is fixed
(the DSP context), and the conversion must not depend on context resolution.
Members it does not know are kept as they are.
"""

from __future__ import annotations

from typing import Any

from catalog.vocabulary import ODRL_NS
from contracts.signing import signed_content

RULE_KINDS = ("permission", "prohibition", "obligation")
LOGICAL_OPERATORS = ("and", "or", "xone", "andSequence")
# ODRL 2.2's left operands (https://www.w3.org/TR/odrl-vocab/#constraintLeftOperandCommon).
ODRL_LEFT_OPERANDS = frozenset(
    {
        "absolutePosition",
        "absoluteSize",
        "absoluteSpatialPosition",
        "absoluteTemporalPosition",
        "count",
        "dateTime",
        "delayPeriod",
        "deliveryChannel",
        "device",
        "elapsedTime",
        "event",
        "fileFormat",
        "industry",
        "language",
        "media",
        "meteredTime",
        "payAmount",
        "percentage",
        "product",
        "purpose",
        "recipient",
        "relativePosition",
        "relativeSize",
        "relativeSpatialPosition",
        "relativeTemporalPosition",
        "resolution",
        "spatial",
        "spatialCoordinates",
        "system",
        "systemDevice",
        "timeInterval",
        "unitOfCount",
        "version",
        "virtualLocation",
    }
)
_POLICY_MEMBERS = {"target", "assigner", "assignee", "profile"}
_DROPPED = {"@context", "timestamp"}  # the signing date is the agreement's contractSigningDate


def _odrl_term(value: Any) -> Any:
    """An ODRL term (bare or full IRI) as EDC writes a vocabulary reference."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        name = value[len(ODRL_NS) :] if value.startswith(ODRL_NS) else value
        if name.startswith("odrl:"):
            return {"@id": name}
        if ":" in name:
            return {"@id": name}  # an IRI of another vocabulary
        return {"@id": f"odrl:{name}"}
    return value


def _left_operand(value: Any) -> Any:
    if isinstance(value, str) and value in ODRL_LEFT_OPERANDS:
        return {"@id": f"odrl:{value}"}
    if isinstance(value, str) and value.startswith(ODRL_NS):
        return {"@id": "odrl:" + value[len(ODRL_NS) :]}
    return {"@id": value} if isinstance(value, str) else value


def _unwrap(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else items


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def constraint_to_edc(constraint: Any) -> Any:
    if not isinstance(constraint, dict):
        return constraint
    out: dict[str, Any] = {}
    for key, value in constraint.items():
        if key in LOGICAL_OPERATORS:
            out[f"odrl:{key}"] = [constraint_to_edc(part) for part in _as_list(value)]
        elif key == "leftOperand":
            out["odrl:leftOperand"] = _left_operand(value)
        elif key == "operator":
            out["odrl:operator"] = _odrl_term(value)
        elif key in ("rightOperand", "rightOperandReference", "unit", "dataType", "status"):
            out[f"odrl:{key}"] = value
        else:
            out[key] = value
    return out


def rule_to_edc(rule: Any) -> Any:
    if not isinstance(rule, dict):
        return rule
    out: dict[str, Any] = {}
    for key, value in rule.items():
        if key == "action":
            out["odrl:action"] = _odrl_term(value)
        elif key == "constraint":
            out["odrl:constraint"] = _unwrap([constraint_to_edc(c) for c in _as_list(value)])
        elif key == "duty":
            out["odrl:duty"] = _unwrap([rule_to_edc(d) for d in _as_list(value)])
        elif key in _POLICY_MEMBERS:
            out[f"odrl:{key}"] = {"@id": value} if isinstance(value, str) else value
        else:
            out[key] = value
    return out


def agreement_policy_to_edc(agreement: dict[str, Any]) -> dict[str, Any]:
    """The ``policy`` of an EDC ContractAgreement for a DSP ``agreement`` object."""
    content = signed_content(agreement)
    policy: dict[str, Any] = {"@id": content.get("@id"), "@type": "odrl:Agreement"}
    for kind in RULE_KINDS:
        rules = [rule_to_edc(rule) for rule in _as_list(content.get(kind, []))]
        policy[f"odrl:{kind}"] = rules[0] if len(rules) == 1 else rules
    for key, value in content.items():
        if key in ("@id", "@type", *RULE_KINDS) or key in _DROPPED:
            continue
        if key in _POLICY_MEMBERS:
            policy[f"odrl:{key}"] = {"@id": value} if isinstance(value, str) else value
        else:
            policy[key] = value
    return policy
