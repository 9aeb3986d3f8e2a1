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

Decision points (``RequestContext.stage``): at ``catalog`` and ``negotiation``
only who asks and when are known; constraints on ``purpose``, ``elapsedTime``,
``count`` and ``spatial`` are deferred to ``usage`` (each data access), where
every operand is evaluated. A constraint whose operand is deferred or missing
is *unknown*; rules read it so that nothing is let through on a guess: before
usage a permission with an unknown constraint holds and a prohibition does not
(both are checked again at each access); at usage an unknown constraint fails
a permission and makes a prohibition apply (fail closed: a purpose that was not
declared cannot escape a prohibition on purposes).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from policies.odrl import Atomic, Constraint, Policy, Rule, rule_label

Stage = Literal["catalog", "negotiation", "usage"]
# Left operands known only when data is accessed under an agreement.
DEFERRED_OPERANDS = frozenset({"purpose", "elapsedTime", "count", "spatial"})


@dataclass(frozen=True)
class RequestContext:
    """What is known about a request when a policy is evaluated, and at which decision point."""

    participant_id: str
    memberships: frozenset[str] = frozenset()
    purpose: str | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    agreed_at: datetime | None = None
    access_count: int | None = None
    location: str | None = None
    stage: Stage = "usage"

    @property
    def defers(self) -> bool:
        """Whether usage-time operands are deferred (catalog, negotiation) rather than required."""
        return self.stage != "usage"


def resolve_unknown(kind: str, context: RequestContext) -> bool:
    """How a rule of ``kind`` reads an unknown constraint (see the module's docstring)."""
    return context.defers if kind == "permission" else not context.defers


class Decision:
    """Whether a request is admitted, and why (not): the admitting rule, or each failed rule and constraint.

    The reasons of a refusal can be given as a function (``explain``), called once, when they are
    first read: wording every failed constraint costs as much as the decision itself, and callers
    that only filter (catalog listings) never read it. The function must depend on nothing that
    changes after the decision (it is given the request's context, which is fixed).
    """

    __slots__ = ("_explain", "_reasons", "allowed")

    def __init__(
        self,
        allowed: bool,
        reasons: tuple[str, ...] | None = None,
        *,
        explain: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        if (reasons is None) == (explain is None):
            raise TypeError("a Decision takes its reasons or a function that explains it, not both")
        self.allowed = allowed
        self._reasons = reasons
        self._explain = explain

    @property
    def reasons(self) -> tuple[str, ...]:
        if self._reasons is None:
            assert self._explain is not None
            self._reasons = self._explain()  # two threads may both compute it: the same tuple
            self._explain = None
        return self._reasons

    @property
    def explanation(self) -> str:
        return "; ".join(self.reasons)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return self.allowed == other.allowed and self.reasons == other.reasons

    def __hash__(self) -> int:
        return hash((self.allowed, self.reasons))

    def __repr__(self) -> str:
        return f"Decision(allowed={self.allowed!r}, reasons={self.reasons!r})"


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
    if name in DEFERRED_OPERANDS and context.defers:
        return None, f"{name} is checked at each data access"
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


Truth = bool | None  # None: unknown (the operand is deferred or missing)


def _check_atomic(constraint: Atomic, context: RequestContext) -> tuple[Truth, str | None]:
    """(True, None) when the constraint holds; otherwise its truth and why it does not hold."""
    left, missing = _left_value(constraint, context)
    if missing is not None:
        return None, f"{constraint.describe()} is unknown: {missing}"
    reason = _check_known(constraint, left)
    return reason is None, reason


def _check_known(constraint: Atomic, left: Any) -> str | None:
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


def combine(kind: str, truths: list[Truth]) -> Truth:
    """Three-valued (Kleene) ``and``, ``or`` and ``xone``."""
    true = sum(1 for t in truths if t is True)
    unknown = any(t is None for t in truths)
    if kind == "and":
        return False if False in truths else None if unknown else True
    if kind == "or":
        return True if true else None if unknown else False
    if true >= 2:  # xone
        return False
    return None if unknown else true == 1


def evaluate_constraint(constraint: Constraint, context: RequestContext) -> tuple[Truth, str | None]:
    """The constraint's truth for this request, and why it does not hold (None when it does)."""
    if isinstance(constraint, Atomic):
        return _check_atomic(constraint, context)
    results = [evaluate_constraint(part, context) for part in constraint.parts]
    truth = combine(constraint.kind, [t for t, _ in results])
    if truth is True:
        return True, None
    passed = sum(1 for t, _ in results if t is True)
    detail = "; ".join(r for _, r in results if r) or f"{passed} alternatives hold"
    return truth, f"{constraint.kind} {'fails' if truth is False else 'is unknown'} ({detail})"


def rule_truth(rule: Rule, context: RequestContext) -> Truth:
    return combine("and", [evaluate_constraint(c, context)[0] for c in rule.constraints])


def rule_holds(rule: Rule, context: RequestContext) -> bool:
    """Whether the rule applies to this request, an unknown constraint read as its kind requires."""
    truth = rule_truth(rule, context)
    return resolve_unknown(rule.kind, context) if truth is None else truth


def check_constraint(constraint: Constraint, context: RequestContext, kind: str = "permission") -> str | None:
    """None when the constraint counts as holding in a rule of ``kind``; otherwise why it does not."""
    truth, reason = evaluate_constraint(constraint, context)
    if truth is True or (truth is None and resolve_unknown(kind, context)):
        return None
    return reason


def _rule_failures(rule: Rule, context: RequestContext) -> list[str]:
    return [f for f in (check_constraint(c, context, rule.kind) for c in rule.constraints) if f is not None]


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
        if prohibition.action in wanted and rule_holds(prohibition, context):
            conditions = ", ".join(c.describe() for c in prohibition.constraints) or "unconditionally"
            unknown = [
                r for c in prohibition.constraints for t, r in [evaluate_constraint(c, context)] if t is None
            ]
            because = f" (it cannot be ruled out: {'; '.join(r for r in unknown if r)})" if unknown else ""
            return (f"denied by {rule_label(prohibition, index)}: {conditions}{because}",)
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
    admitted = admission(policy, wanted, lambda rule: rule_holds(rule, context))
    if admitted is not None:
        return Decision(True, admitted)
    return Decision(False, explain=lambda: refusal(policy, context, wanted))


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
        for index, rule in enumerate(rules):
            constraints = tuple(
                ConstraintCheck(c.describe(), failure is None, failure)
                for c, failure in ((c, check_constraint(c, context, rule.kind)) for c in rule.constraints)
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
