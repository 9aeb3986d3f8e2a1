"""The policy decision point: does a policy admit a request, and why (not)?

One entry point, ``decide``, used wherever a policy is enforced (catalog
access today; negotiation and usage later). Semantics follow the W3C ODRL 2.2
recommendation: a prohibition whose constraints all hold denies; otherwise a
policy with no permission permits (EDC's convention for an "allow all"
policy), and a policy with permissions permits when one of them holds.

Set operators read the left operand as a set (a single value is a set of one):
``isAnyOf`` — they share a value; ``isNoneOf`` — they share none;
``isAllOf`` and ``hasPart`` — the left holds every right value; ``isPartOf`` —
every left value is among the right ones. ``eq`` on a set is set equality.
An operand the context cannot supply fails its constraint: fail closed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from policies.odrl import Atomic, Constraint, Policy, Rule


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


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _duration_seconds(value: Any) -> float | None:
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
        right_time = _parse_time(right)
        return (left, right_time) if right_time else None
    if operand == "elapsedTime":
        seconds = _duration_seconds(right)
        return (left, seconds) if seconds is not None else None
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left, right
    if isinstance(left, str) and isinstance(right, str):
        return left, right
    return None


def _check_atomic(constraint: Atomic, context: RequestContext) -> str | None:
    """None when the constraint holds; otherwise why it does not."""
    left, missing = _left_value(constraint, context)
    if missing is not None:
        return f"{constraint.describe()} fails: {missing}"
    op, right = constraint.operator, constraint.right
    shown_left = sorted(left) if isinstance(left, frozenset) else left
    if op in ("eq", "neq", "lt", "lteq", "gt", "gteq"):
        if isinstance(left, frozenset):
            equal = left == frozenset(right)
            holds = equal if op == "eq" else (not equal if op == "neq" else None)
            if holds is None:
                return f"{constraint.describe()} fails: {constraint.left} is a set and cannot be ordered"
        else:
            if len(right) != 1:
                return f"{constraint.describe()} fails: '{op}' compares with one value"
            pair = _comparable(left, right[0], constraint.left)
            if pair is None:
                return (
                    f"{constraint.describe()} fails: {right[0]!r} cannot be compared with {constraint.left}"
                )
            a, b = pair
            holds = {
                "eq": a == b,
                "neq": a != b,
                "lt": a < b,
                "lteq": a <= b,
                "gt": a > b,
                "gteq": a >= b,
            }[op]
        if holds:
            return None
        return f"{constraint.left} {shown_left!r} does not satisfy {op} {right[0] if len(right) == 1 else list(right)!r}"
    left_set, right_set = _as_set(left), frozenset(right)
    holds = {
        "isAnyOf": bool(left_set & right_set),
        "isNoneOf": not (left_set & right_set),
        "isAllOf": right_set <= left_set,
        "hasPart": right_set <= left_set,
        "isPartOf": left_set <= right_set,
    }[op]
    if holds:
        return None
    wanted = "{" + ", ".join(repr(v) for v in sorted(right_set, key=str)) + "}"
    phrases = {
        "isAnyOf": "is not in",
        "isNoneOf": "is in",
        "isAllOf": "does not include all of",
        "hasPart": "does not include all of",
        "isPartOf": "is not part of",
    }
    return f"{constraint.left} {shown_left!r} {phrases[op]} {wanted}"


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


def _label(rule: Rule, index: int) -> str:
    return f"{rule.kind} {index + 1} ({rule.action})"


def decide(policy: Policy, context: RequestContext, actions: Iterable[str] = ("use",)) -> Decision:
    """Evaluate ``policy`` for a request by ``context``; the reasons name the rule and constraint."""
    wanted = frozenset(actions)
    for index, prohibition in enumerate(policy.prohibitions):
        if prohibition.action in wanted and not _rule_failures(prohibition, context):
            conditions = ", ".join(c.describe() for c in prohibition.constraints) or "unconditionally"
            return Decision(False, (f"denied by {_label(prohibition, index)}: {conditions}",))
    relevant = [(i, r) for i, r in enumerate(policy.permissions) if r.action in wanted]
    if not policy.permissions:
        return Decision(True, ("the policy has no permission rules: everyone is admitted",))
    if not relevant:
        return Decision(False, (f"no permission covers the action {', '.join(sorted(wanted))}",))
    reasons: list[str] = []
    for index, permission in relevant:
        failures = _rule_failures(permission, context)
        if not failures:
            return Decision(True, (f"admitted by {_label(permission, index)}",))
        reasons.append(f"{_label(permission, index)}: " + "; ".join(failures))
    return Decision(False, tuple(f"denied because {r}" for r in reasons))
