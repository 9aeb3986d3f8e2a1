"""ODRL 2.2 policies: a small typed model, read from expanded JSON-LD, validated.

Validation names the first thing it does not understand (an unknown left
operand, operator or logical constraint), so an operator learns at upload,
not at the first refused request.

The policy-level ``conflict`` term (ODRL 2.2 §2.7.1) says what happens when a
permission and a prohibition govern the same action: ``perm`` — a permission
that holds wins; ``prohibit`` — a prohibition that holds wins; ``invalid``,
the default when the term is absent — the policy is void. ``clashes`` finds
such pairs; ``check_conflicts`` refuses a policy whose clashes nothing
resolves, which the Management API does at upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from catalog.jsonld import EDC_NS, ODRL_NS, TESSERA_NS, node_type, values

SET_TYPE = ODRL_NS + "Set"
OPERATORS = frozenset(
    {"eq", "neq", "lt", "lteq", "gt", "gteq", "isAnyOf", "isAllOf", "isNoneOf", "isPartOf", "hasPart"}
)
LOGICAL = {ODRL_NS + "and": "and", ODRL_NS + "or": "or", ODRL_NS + "xone": "xone"}
# Left operands we can evaluate, by IRI. Identity and membership are Tessera's (also
# accepted in the EDC namespace, which is where bare names land with EDC's @vocab).
LEFT_OPERANDS = {
    ODRL_NS + "purpose": "purpose",
    ODRL_NS + "dateTime": "dateTime",
    ODRL_NS + "elapsedTime": "elapsedTime",
    ODRL_NS + "count": "count",
    ODRL_NS + "spatial": "spatial",
    TESSERA_NS + "participantId": "participantId",
    EDC_NS + "participantId": "participantId",
    TESSERA_NS + "membership": "membership",
    EDC_NS + "membership": "membership",
}
RuleKind = Literal["permission", "prohibition", "obligation"]
ConflictStrategy = Literal["perm", "prohibit", "invalid"]
CONFLICT_STRATEGIES: tuple[ConflictStrategy, ...] = ("perm", "prohibit", "invalid")


class PolicyError(ValueError):
    def __init__(self, message: str, path: str, invalid_value: Any = None) -> None:
        super().__init__(message)
        self.path = path
        self.invalid_value = invalid_value


@dataclass(frozen=True)
class Atomic:
    left: str  # canonical name, e.g. "purpose"
    operator: str  # e.g. "isAnyOf"
    right: tuple[Any, ...]

    def describe(self) -> str:
        shown = self.right[0] if len(self.right) == 1 else list(self.right)
        return f"{self.left} {self.operator} {shown!r}"


@dataclass(frozen=True)
class Logical:
    kind: Literal["and", "or", "xone"]
    parts: tuple[Constraint, ...]

    def describe(self) -> str:
        return f"{self.kind}(" + ", ".join(p.describe() for p in self.parts) + ")"


Constraint = Atomic | Logical


@dataclass(frozen=True)
class Rule:
    kind: RuleKind
    action: str
    constraints: tuple[Constraint, ...]
    duties: tuple[Rule, ...] = ()


def rule_label(rule: Rule, index: int) -> str:
    """How explanations name a rule: ``permission 1 (use)`` (1-based, in upload order)."""
    return f"{rule.kind} {index + 1} ({rule.action})"


@dataclass(frozen=True)
class Clash:
    """A permission and a prohibition on the same action (indexes into the policy's rules)."""

    permission: int
    prohibition: int
    action: str


@dataclass(frozen=True)
class Policy:
    permissions: tuple[Rule, ...]
    prohibitions: tuple[Rule, ...]
    obligations: tuple[Rule, ...]
    conflict: ConflictStrategy | None = None  # None: the term is absent, which ODRL reads as invalid

    @cached_property
    def clashes(self) -> tuple[Clash, ...]:
        return tuple(
            Clash(i, j, permission.action)
            for i, permission in enumerate(self.permissions)
            for j, prohibition in enumerate(self.prohibitions)
            if permission.action == prohibition.action
        )

    @cached_property
    def void_because(self) -> str | None:
        """Why the policy is void (clashing rules and no strategy resolving them), or None."""
        clashes = self.clashes
        if not clashes or self.conflict in ("perm", "prohibit"):
            return None
        first = clashes[0]
        pair = (
            f"{rule_label(self.permissions[first.permission], first.permission)} and "
            f"{rule_label(self.prohibitions[first.prohibition], first.prohibition)}"
        )
        more = f" (and {len(clashes) - 1} more such pairs)" if len(clashes) > 1 else ""
        if self.conflict == "invalid":
            return f"{pair} clash on action {first.action!r}{more} and the conflict strategy is invalid"
        return (
            f"{pair} clash on action {first.action!r}{more} and the policy names no conflict strategy "
            "(set conflict to perm or prohibit)"
        )

    @property
    def left_operands(self) -> frozenset[str]:
        found: set[str] = set()

        def walk(constraint: Constraint) -> None:
            if isinstance(constraint, Atomic):
                found.add(constraint.left)
            else:
                for part in constraint.parts:
                    walk(part)

        for rule in (*self.permissions, *self.prohibitions, *self.obligations):
            for constraint in rule.constraints:
                walk(constraint)
        return frozenset(found)


def _local(iri_or_value: Any, namespace: str = ODRL_NS) -> str | None:
    if isinstance(iri_or_value, dict):
        iri_or_value = iri_or_value.get("@id", iri_or_value.get("@value"))
    if not isinstance(iri_or_value, str):
        return None
    return iri_or_value[len(namespace) :] if iri_or_value.startswith(namespace) else iri_or_value


def _left_operand(node: dict[str, Any], path: str) -> str:
    items = values(node, ODRL_NS + "leftOperand")
    if len(items) != 1:
        raise PolicyError("a constraint needs exactly one leftOperand", path)
    item = items[0]
    raw = item.get("@id", item.get("@value")) if isinstance(item, dict) else item
    if isinstance(raw, str):
        if raw in LEFT_OPERANDS:
            return LEFT_OPERANDS[raw]
        if raw in set(LEFT_OPERANDS.values()):  # a plain name where no vocabulary applied
            return raw
    raise PolicyError(
        f"leftOperand {raw!r} is not supported (supported: {', '.join(sorted(set(LEFT_OPERANDS.values())))})",
        path + "/leftOperand",
        raw,
    )


def _operator(node: dict[str, Any], path: str) -> str:
    items = values(node, ODRL_NS + "operator")
    if len(items) != 1:
        raise PolicyError("a constraint needs exactly one operator", path)
    name = _local(items[0])
    if name not in OPERATORS:
        raise PolicyError(
            f"operator {name!r} is not supported (supported: {', '.join(sorted(OPERATORS))})",
            path + "/operator",
            name,
        )
    return name


def _right_operand(node: dict[str, Any], path: str) -> tuple[Any, ...]:
    items = values(node, ODRL_NS + "rightOperand")
    if not items:
        raise PolicyError("a constraint needs a rightOperand", path + "/rightOperand")
    right: list[Any] = []
    for item in items:
        item_values = item["@list"] if isinstance(item, dict) and "@list" in item else [item]
        for value in item_values:
            raw = value.get("@value", value.get("@id")) if isinstance(value, dict) else value
            if not isinstance(raw, str | int | float | bool):
                raise PolicyError("rightOperand values must be text, numbers, booleans or IRIs", path, raw)
            right.append(raw)
    return tuple(right)


def _constraint(node: Any, path: str) -> Constraint:
    if not isinstance(node, dict):
        raise PolicyError("a constraint must be an object", path)
    logical = [(iri, kind) for iri, kind in LOGICAL.items() if iri in node]
    if logical:
        if len(logical) > 1 or ODRL_NS + "leftOperand" in node:
            raise PolicyError("a logical constraint has exactly one of and, or, xone and nothing else", path)
        iri, kind = logical[0]
        members = values(node, iri)
        if members and isinstance(members[0], dict) and "@list" in members[0]:
            members = members[0]["@list"]
        if not members:
            raise PolicyError(f"'{kind}' needs at least one constraint", path)
        parts = tuple(_constraint(m, f"{path}/{kind}/{i}") for i, m in enumerate(members))
        return Logical(kind, parts)  # type: ignore[arg-type]
    for key in node:
        if key.startswith(ODRL_NS) and key[len(ODRL_NS) :] in ("andSequence",):
            raise PolicyError("andSequence is not supported", path, "andSequence")
    return Atomic(_left_operand(node, path), _operator(node, path), _right_operand(node, path))


def _rule(node: Any, kind: RuleKind, path: str) -> Rule:
    if not isinstance(node, dict):
        raise PolicyError(f"a {kind} must be an object", path)
    actions = values(node, ODRL_NS + "action")
    if len(actions) != 1:
        raise PolicyError(f"a {kind} needs exactly one action", path + "/action")
    action = _local(actions[0])
    if isinstance(actions[0], dict) and ODRL_NS + "refinement" in actions[0]:
        raise PolicyError("action refinements are not supported", path + "/action")
    if not action:
        raise PolicyError(f"the {kind}'s action is not an IRI or name", path + "/action", actions[0])
    constraints = tuple(
        _constraint(c, f"{path}/constraint/{i}") for i, c in enumerate(values(node, ODRL_NS + "constraint"))
    )
    duties = tuple(
        _rule(d, "obligation", f"{path}/duty/{i}") for i, d in enumerate(values(node, ODRL_NS + "duty"))
    )
    return Rule(kind, action, constraints, duties)


def _conflict(node: dict[str, Any]) -> ConflictStrategy | None:
    items = values(node, ODRL_NS + "conflict")
    if not items:
        return None
    if len(items) != 1:
        raise PolicyError("a policy has at most one conflict strategy", "policy/conflict")
    name = _local(items[0])
    if isinstance(name, str) and name.startswith("odrl:"):
        name = name[len("odrl:") :]
    for strategy in CONFLICT_STRATEGIES:
        if name == strategy:
            return strategy
    raise PolicyError(
        f"conflict {name!r} is not supported (supported: {', '.join(CONFLICT_STRATEGIES)})",
        "policy/conflict",
        name,
    )


def check_conflicts(policy: Policy) -> None:
    """Refuse a policy whose permission and prohibition clash with nothing to resolve it."""
    reason = policy.void_because
    if reason is not None:
        raise PolicyError(reason, "policy/conflict", policy.conflict)


def parse_policy(node: Any, *, require_set: bool = True) -> Policy:
    """Read an expanded ODRL policy; PolicyError names the first problem.

    Clashing rules are not refused here (a stored or received policy must stay
    readable: it is void, and ``decide`` denies); ``check_conflicts`` refuses them.
    """
    if not isinstance(node, dict):
        raise PolicyError("the policy must be an object", "policy")
    types = node_type(node)
    if require_set and types != [SET_TYPE]:
        shown = types[0] if types else None
        raise PolicyError(f"policy @type must be odrl:Set, not {shown!r}", "policy/@type", shown)
    return Policy(
        permissions=tuple(
            _rule(r, "permission", f"policy/permission/{i}")
            for i, r in enumerate(values(node, ODRL_NS + "permission"))
        ),
        prohibitions=tuple(
            _rule(r, "prohibition", f"policy/prohibition/{i}")
            for i, r in enumerate(values(node, ODRL_NS + "prohibition"))
        ),
        obligations=tuple(
            _rule(r, "obligation", f"policy/obligation/{i}")
            for i, r in enumerate(values(node, ODRL_NS + "obligation"))
        ),
        conflict=_conflict(node),
    )
