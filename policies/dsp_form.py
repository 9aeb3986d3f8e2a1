"""ODRL policies in the compacted form of DSP 2025-1 messages (the DSP ODRL profile).

The stored form is expanded JSON-LD; DSP messages carry the compacted form of
the DSP context: bare ODRL terms (``permission``, ``action: "use"``,
``leftOperand: "purpose"``, ``operator: "eq"``). Left operands outside ODRL
(Tessera's identity and membership) keep their full IRIs. Right operands are
strings, objects or arrays, as the DSP schema requires.
"""

from __future__ import annotations

from typing import Any

from catalog.jsonld import ODRL_NS, TESSERA_NS
from policies.odrl import Atomic, Constraint, Policy, Rule

_TESSERA_OPERANDS = {"participantId", "membership"}


def _left(name: str) -> str:
    return TESSERA_NS + name if name in _TESSERA_OPERANDS else name


def _right(values: tuple[Any, ...], operator: str) -> Any:
    as_text = [
        v if isinstance(v, str) else ("true" if v is True else "false" if v is False else str(v))
        for v in values
    ]
    if operator in ("isAnyOf", "isAllOf", "isNoneOf", "isPartOf", "hasPart") or len(as_text) > 1:
        return as_text
    return as_text[0]


def constraint_to_dsp(constraint: Constraint) -> dict[str, Any]:
    if isinstance(constraint, Atomic):
        return {
            "leftOperand": _left(constraint.left),
            "operator": constraint.operator,
            "rightOperand": _right(constraint.right, constraint.operator),
        }
    return {constraint.kind: [constraint_to_dsp(part) for part in constraint.parts]}


def _action(action: str) -> str:
    return action[len(ODRL_NS) :] if action.startswith(ODRL_NS) else action


def rule_to_dsp(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"action": _action(rule.action)}
    if rule.constraints:
        out["constraint"] = [constraint_to_dsp(c) for c in rule.constraints]
    if rule.duties:
        out["duty"] = [rule_to_dsp(d) for d in rule.duties]
    return out


def offer_to_dsp(
    policy: Policy, offer_id: str, *, assigner: str | None = None, target: str | None = None
) -> dict[str, Any]:
    """An ``Offer`` object. Catalog offers carry no target; negotiation offers must."""
    offer: dict[str, Any] = {"@id": offer_id, "@type": "Offer"}
    if assigner:
        offer["assigner"] = assigner
    if target:
        offer["target"] = target
    permissions = [rule_to_dsp(r) for r in policy.permissions]
    prohibitions = [rule_to_dsp(r) for r in policy.prohibitions]
    obligations = [rule_to_dsp(r) for r in policy.obligations]
    if not permissions and not prohibitions:
        # A policy without rules admits every use; DSP wants at least one rule, so say so.
        permissions = [{"action": "use"}]
    if permissions:
        offer["permission"] = permissions
    if prohibitions:
        offer["prohibition"] = prohibitions
    if obligations:
        offer["obligation"] = obligations
    if policy.conflict is not None:
        # Which of clashing rules wins is part of the terms (the DSP context names the odrl: prefix).
        offer["odrl:conflict"] = {"@id": "odrl:" + policy.conflict}
    return offer
