"""Policies and asset selectors in words, for people reading the operator pages.

``use — membership is any of transport-operator`` says what
``{"action": "use", "constraint": [{"leftOperand": "membership", "operator":
"isAnyOf", "rightOperand": ["transport-operator"]}]}`` means. Offers read from
another participant's catalog (compacted DSP form) are read leniently into the
same model first, so both kinds of policy are worded alike.
"""

from __future__ import annotations

from typing import Any

from catalog.jsonld import EDC_NS, ODRL_NS, TESSERA_NS
from catalog.queryspec import Criterion
from policies.odrl import Atomic, Constraint, Logical, Policy, Rule, RuleKind

OPERATOR_WORDS = {
    "eq": "is",
    "neq": "is not",
    "lt": "is before or less than",
    "lteq": "is at most",
    "gt": "is after or more than",
    "gteq": "is at least",
    "isAnyOf": "is any of",
    "isAllOf": "includes all of",
    "isNoneOf": "is none of",
    "isPartOf": "is part of",
    "hasPart": "includes all of",
    "=": "is",
    "!=": "is not",
    "in": "is any of",
    "like": "matches",
    "ilike": "matches (any case)",
    "<": "is less than",
    "<=": "is at most",
    ">": "is more than",
    ">=": "is at least",
    "contains": "contains",
}
LOGICAL_WORDS = {"and": "all of", "or": "any of", "xone": "exactly one of"}
RULE_WORDS = {"permission": "Permission", "prohibition": "Prohibition", "obligation": "Duty"}
_PREFIXES = (ODRL_NS, TESSERA_NS, EDC_NS, "odrl:", "tessera:", "edc:")


def short_name(value: Any) -> str:
    """A term without the namespace Tessera reads it in (``odrl:use`` → ``use``)."""
    text = str(value)
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _values(right: tuple[Any, ...]) -> str:
    return ", ".join(short_name(v) for v in right)


def constraint_words(constraint: Constraint) -> str:
    if isinstance(constraint, Atomic):
        operator = OPERATOR_WORDS.get(constraint.operator, constraint.operator)
        return f"{short_name(constraint.left)} {operator} {_values(constraint.right)}"
    parts = "; ".join(constraint_words(p) for p in constraint.parts)
    return f"{LOGICAL_WORDS[constraint.kind]} ({parts})"


def rule_words(rule: Rule) -> str:
    conditions = " and ".join(constraint_words(c) for c in rule.constraints) or "no conditions"
    text = f"{short_name(rule.action)} — {conditions}"
    if rule.duties:
        text += "; duties: " + "; ".join(rule_words(d) for d in rule.duties)
    return text


def policy_words(policy: Policy) -> list[str]:
    """One line per rule, e.g. ``Permission: use — membership is any of transport-operator``."""
    lines = [
        f"{RULE_WORDS[rule.kind]}: {rule_words(rule)}"
        for rule in (*policy.permissions, *policy.prohibitions, *policy.obligations)
    ]
    return lines or ["No rules: every member, any use."]


def selector_words(selector: tuple[Criterion, ...]) -> str:
    """``assets where id is bus-stops``; an empty selector picks ``every asset``."""
    if not selector:
        return "every asset"
    return "assets where " + " and ".join(
        f"{short_name(c.left)} {OPERATOR_WORDS.get(c.operator, c.operator)} {_values(c.right)}"
        for c in selector
    )


# --- offers in compacted DSP form (another participant's catalog) ---


def as_list(value: Any) -> list[Any]:
    """A JSON-LD value that may be one item or several, as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _term(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("@id", value.get("@value", ""))
    return short_name(value)


def _dsp_constraint(node: Any) -> Constraint:
    if not isinstance(node, dict):
        return Atomic("constraint", "eq", (str(node),))
    for kind in ("and", "or", "xone"):
        for key in (kind, "odrl:" + kind, ODRL_NS + kind):
            if key in node:
                parts = tuple(_dsp_constraint(p) for p in as_list(node[key]))
                return Logical(kind, parts)
    right = tuple(_term(v) for v in as_list(node.get("rightOperand")))
    return Atomic(_term(node.get("leftOperand", "?")), _term(node.get("operator", "?")), right)


def _dsp_rule(node: Any, kind: RuleKind) -> Rule:
    if not isinstance(node, dict):
        return Rule(kind, str(node), ())
    return Rule(
        kind,
        _term(node.get("action", "?")),
        tuple(_dsp_constraint(c) for c in as_list(node.get("constraint"))),
        tuple(_dsp_rule(d, "obligation") for d in as_list(node.get("duty"))),
    )


def dsp_offer_words(offer: dict[str, Any]) -> list[str]:
    """The rules of an ``Offer`` from a DSP catalog, in words."""
    policy = Policy(
        permissions=tuple(_dsp_rule(r, "permission") for r in as_list(offer.get("permission"))),
        prohibitions=tuple(_dsp_rule(r, "prohibition") for r in as_list(offer.get("prohibition"))),
        obligations=tuple(_dsp_rule(r, "obligation") for r in as_list(offer.get("obligation"))),
    )
    return policy_words(policy)
