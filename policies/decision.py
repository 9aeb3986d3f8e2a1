"""The policy decision point: does a policy admit a request, and why (not)?

One entry point, ``decide``, used wherever a policy is enforced (catalog
access today; negotiation and usage later). Semantics follow the W3C ODRL 2.2
recommendation: a prohibition whose constraints all hold denies; otherwise a
policy with no permission permits (EDC's convention for an "allow all"
policy), and a policy with permissions permits when one of them holds.

Conflicts (a permission and a prohibition on the same action) follow the
policy's ``conflict`` strategy: ``prohibit`` — the prohibition wins, as
above; ``perm`` — a permission on that action that holds overrides a
prohibition that holds; none or ``invalid`` — the policy is void and denies
everything (the Management API refuses such a policy at upload; this is the
fail-closed reading of one stored before that check, or received).

Set operators read the left operand as a set (a single value is a set of one):
``isAnyOf`` — they share a value; ``isNoneOf`` — they share none;
``isAllOf`` and ``hasPart`` — the left holds every right value; ``isPartOf`` —
every left value is among the right ones. ``eq`` on a set is set equality.
An operand the context cannot supply fails its constraint: fail closed.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from policies.odrl import Atomic, Constraint, Policy, Rule, rule_label


@dataclass(frozen=True)
class RequestContext:
    """What is known about a request when a policy is evaluated."""

    participant_id: str
    memberships: frozenset[str] = frozenset()
    purpose: str | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    agreed_at: datetime | None = None
    access_count: int | None = None
    location: str | None = None
    # Left operands decided when the data is used, not now (a negotiation: no purpose is declared and
    # nothing has been accessed yet). A permission's constraint on one of them holds for now; a
    # prohibition's does not apply yet. Usage control decides them at every access.
    deferred: frozenset[str] = frozenset()


USAGE_OPERANDS = frozenset({"purpose", "count", "elapsedTime"})
DEFERRED: Any = object()


def undeferred(context: RequestContext) -> RequestContext:
    """The context a prohibition is judged in: deferred operands are simply unknown (it does not apply)."""
    return replace(context, deferred=frozenset()) if context.deferred else context


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reasons: tuple[str, ...]

    @property
    def explanation(self) -> str:
        return "; ".join(self.reasons)


def _as_set(value: Any) -> frozenset[Any]:
    if isinstance(value, frozenset | set | list | tuple):
        return frozenset(value)
    return frozenset([value])


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration_seconds(value: Any) -> float | None:
    """ISO 8601 durations of days, hours, minutes, seconds (P1DT2H, PT30M) or plain seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value.startswith("P"):
        return None
    match = re.fullmatch(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", value)
    if match is None or value in ("P", "PT"):
        return None
    weeks, days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return (((weeks * 7 + days) * 24 + hours) * 60 + minutes) * 60 + seconds


def _left_value(constraint: Atomic, context: RequestContext) -> tuple[Any, str | None]:
    """The request's value for the left operand, or (None, why it is missing)."""
    name = constraint.left
    if name in context.deferred:
        return DEFERRED, None
    if name == "participantId":
        return context.participant_id, None
    if name == "membership":
        return context.memberships, None
    if name == "purpose":
        return (context.purpose, None) if context.purpose else (None, "no purpose was declared")
    if name == "dateTime":
        return context.now, None
    if name == "elapsedTime":
        if context.agreed_at is None:
            return None, "there is no agreement yet to measure elapsed time from"
        return (context.now - context.agreed_at).total_seconds(), None
    if name == "count":
        if context.access_count is None:
            return None, "no access count applies here"
        return context.access_count, None
    if name == "spatial":
        return (context.location, None) if context.location else (None, "no location is known")
    return None, f"{name} cannot be evaluated"


def _comparable(left: Any, right: Any, operand: str) -> tuple[Any, Any] | None:
    if operand == "dateTime":
        right_time = parse_time(right)
        return (left, right_time) if right_time else None
    if operand == "elapsedTime":
        seconds = duration_seconds(right)
        return (left, seconds) if seconds is not None else None
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left, right
    if isinstance(left, str) and isinstance(right, str):
        return left, right
    return None


_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lteq": operator.le,
    "gt": operator.gt,
    "gteq": operator.ge,
}
_SET_TESTS: dict[str, Callable[[frozenset[Any], frozenset[Any]], bool]] = {
    "isAnyOf": lambda left, right: not left.isdisjoint(right),
    "isNoneOf": lambda left, right: left.isdisjoint(right),
    "isAllOf": lambda left, right: right <= left,
    "hasPart": lambda left, right: right <= left,
    "isPartOf": lambda left, right: left <= right,
}
_SET_PHRASES = {
    "isAnyOf": "is not in",
    "isNoneOf": "is in",
    "isAllOf": "does not include all of",
    "hasPart": "does not include all of",
    "isPartOf": "is not part of",
}


def _shown(left: Any) -> Any:
    return sorted(left) if isinstance(left, frozenset) else left


def _check_atomic(constraint: Atomic, context: RequestContext) -> str | None:
    """None when the constraint holds; otherwise why it does not."""
    left, missing = _left_value(constraint, context)
    if missing is not None:
        return f"{constraint.describe()} fails: {missing}"
    if left is DEFERRED:
        return None
    op, right = constraint.operator, constraint.right
    compare = _ORDERINGS.get(op)
    if compare is not None:
        if isinstance(left, frozenset):
            if op not in ("eq", "neq"):
                return f"{constraint.describe()} fails: {constraint.left} is a set and cannot be ordered"
            holds = compare(left, frozenset(right))
        else:
            if len(right) != 1:
                return f"{constraint.describe()} fails: '{op}' compares with one value"
            pair = _comparable(left, right[0], constraint.left)
            if pair is None:
                return (
                    f"{constraint.describe()} fails: {right[0]!r} cannot be compared with {constraint.left}"
                )
            holds = compare(*pair)
        if holds:
            return None
        return f"{constraint.left} {_shown(left)!r} does not satisfy {op} {right[0] if len(right) == 1 else list(right)!r}"
    right_set = frozenset(right)
    if _SET_TESTS[op](_as_set(left), right_set):
        return None
    wanted = "{" + ", ".join(repr(v) for v in sorted(right_set, key=str)) + "}"
    return f"{constraint.left} {_shown(left)!r} {_SET_PHRASES[op]} {wanted}"


def check_constraint(constraint: Constraint, context: RequestContext) -> str | None:
    if isinstance(constraint, Atomic):
        return _check_atomic(constraint, context)
    failures = [check_constraint(part, context) for part in constraint.parts]
    passed = sum(1 for f in failures if f is None)
    if constraint.kind == "and" and passed == len(failures):
        return None
    if constraint.kind == "or" and passed >= 1:
        return None
    if constraint.kind == "xone" and passed == 1:
        return None
    detail = "; ".join(f for f in failures if f) or f"{passed} alternatives hold"
    return f"{constraint.kind} fails ({detail})"


def _rule_failures(rule: Rule, context: RequestContext) -> list[str]:
    return [f for f in (check_constraint(c, context) for c in rule.constraints) if f is not None]


Holds = Callable[[Rule], bool]
NO_PERMISSIONS = "the policy has no permission rules: everyone is admitted"


def _overriding(policy: Policy, prohibition: Rule, holds: Holds) -> str | None:
    """Under ``perm``, the label of the first permission on the prohibition's action that holds."""
    if policy.conflict != "perm":
        return None
    for index, permission in enumerate(policy.permissions):
        if permission.action == prohibition.action and holds(permission):
            return rule_label(permission, index)
    return None


def admission(policy: Policy, actions: frozenset[str], holds: Holds) -> tuple[str, ...] | None:
    """Why a request is admitted, or None when it is not; ``holds`` says whether a rule's constraints hold.

    The whole decision procedure, without the texts of refusals: ``decide`` uses
    it with the explaining checks below, the policy engine with compiled ones,
    so both admit alike and name the same rule.
    """
    if policy.void_because is not None:
        return None
    overrides: list[str] = []
    for index, prohibition in enumerate(policy.prohibitions):
        if prohibition.action in actions and holds(prohibition):
            winner = _overriding(policy, prohibition, holds)
            if winner is None:
                return None
            overrides.append(
                f"{rule_label(prohibition, index)} holds but {winner} overrides it (conflict strategy perm)"
            )
    if not policy.permissions:
        return (NO_PERMISSIONS,)
    for index, permission in enumerate(policy.permissions):
        if permission.action in actions and holds(permission):
            return (f"admitted by {rule_label(permission, index)}", *overrides)
    return None


def refusal(policy: Policy, context: RequestContext, wanted: frozenset[str]) -> tuple[str, ...]:
    """Why a request that ``admission`` does not admit is denied: each failed rule and constraint."""
    void = policy.void_because
    if void is not None:
        return (f"the policy is void: {void}",)
    for index, prohibition in enumerate(policy.prohibitions):
        if prohibition.action in wanted and not _rule_failures(prohibition, undeferred(context)):
            conditions = ", ".join(c.describe() for c in prohibition.constraints) or "unconditionally"
            return (f"denied by {rule_label(prohibition, index)}: {conditions}",)
    relevant = [(i, r) for i, r in enumerate(policy.permissions) if r.action in wanted]
    if not relevant:
        return (f"no permission covers the action {', '.join(sorted(wanted))}",)
    return tuple(
        f"denied because {rule_label(permission, index)}: " + "; ".join(_rule_failures(permission, context))
        for index, permission in relevant
    )


def decide(policy: Policy, context: RequestContext, actions: Iterable[str] = ("use",)) -> Decision:
    """Evaluate ``policy`` for a request by ``context``; the reasons name the rule and constraint."""
    wanted = frozenset(actions)
    prohibition_context = undeferred(context)

    def holds(rule: Rule) -> bool:
        judged = prohibition_context if rule.kind == "prohibition" else context
        return all(check_constraint(c, judged) is None for c in rule.constraints)

    admitted = admission(policy, wanted, holds)
    if admitted is not None:
        return Decision(True, admitted)
    return Decision(False, refusal(policy, context, wanted))


# ---------------------------------------------------------------- the operator's "why" view


@dataclass(frozen=True)
class ConstraintCheck:
    constraint: str  # e.g. "purpose isAnyOf ['traffic-planning']"
    holds: bool
    reason: str | None  # why it fails; None when it holds


@dataclass(frozen=True)
class RuleCheck:
    rule: str  # e.g. "permission 1 (use)"
    kind: str
    action: str
    applies: bool  # the rule governs the requested action
    holds: bool  # all its constraints hold
    constraints: tuple[ConstraintCheck, ...]


def rule_checks(
    policy: Policy, context: RequestContext, actions: Iterable[str] = ("use",)
) -> list[RuleCheck]:
    """Every permission and prohibition, each constraint checked, with why it fails."""
    wanted = frozenset(actions)
    checks: list[RuleCheck] = []
    for rules in (policy.permissions, policy.prohibitions):
        judged = undeferred(context) if rules is policy.prohibitions else context
        for index, rule in enumerate(rules):
            constraints = tuple(
                ConstraintCheck(c.describe(), failure is None, failure)
                for c, failure in ((c, check_constraint(c, judged)) for c in rule.constraints)
            )
            checks.append(
                RuleCheck(
                    rule_label(rule, index),
                    rule.kind,
                    rule.action,
                    rule.action in wanted,
                    all(c.holds for c in constraints),
                    constraints,
                )
            )
    return checks
