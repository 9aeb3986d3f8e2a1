"""Compile an ODRL policy into Casbin rows and Python conditions.

A policy becomes a few rows ``p, <policy id>, <action>, <rule ref>, <effect>,
<revision>, <layout>`` (``CASBIN_MODEL``) and, per
rule ref, a callable ``RequestContext -> bool`` with the same semantics as
``policies.decision.check_constraint`` (right operands parsed once, here).
The matcher calls the callable through a registered function; no ``eval()``.

How rows encode the decision procedure (``policies.decision.admission``),
under Casbin's effect "some allow and no deny":

- each permission is an ``allow`` row: its constraints hold;
- each prohibition is a ``deny`` row: its constraints hold and, under the
  ``perm`` strategy, no permission on its action holds;
- a policy without permissions gets one ``allow`` row for every action
  (action ``""``, which no ODRL action can be), so only a prohibition denies;
- a void policy (clashing rules, no strategy) is one ``deny`` row for every action.

Rule refs are ``<policy id>#<kind>/<index>@<revision>``: unique across
policies and across revisions of one policy, so a replica swapping a policy
never pairs a row with the condition of another revision.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policies.decision import (
    DEFERRED_OPERANDS,
    RequestContext,
    Truth,
    combine,
    duration_seconds,
    parse_time,
    resolve_unknown,
)
from policies.odrl import Atomic, Constraint, Policy, Rule

# Request: (policy id, action, context). Rows: (policy id, action, rule ref, effect, revision, layout).
# No "#" anywhere in this text: Casbin reads it as the start of a comment, even inside a line.
# The matcher is one call: the row matches when its policy id is the request's, its action is the
# request's or "" (any action), and its rule's condition holds (PolicyEngine._holds). Written as
# Casbin operators, the same test cost pycasbin's expression evaluator ~15 µs more per decision.
CASBIN_MODEL = """
[request_definition]
r = pol, act, ctx

[policy_definition]
p = pol, act, rule, eft, rev, lay

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = holds(p.pol, p.act, p.rule, r.pol, r.act, r.ctx)
"""
MATCHER_FUNCTION = "holds"
# The layout of the rows compile_policy makes; change it whenever they change. Rows of an older layout
# are recompiled at start-up; a replica meeting rows of another layout (a rolling upgrade) compiles the
# definition itself rather than trusting them.
LAYOUT = "1"

Condition = Callable[[RequestContext], bool]
# A constraint's truth for a request: None when unknown (its operand deferred or missing).
TriCondition = Callable[[RequestContext], Truth]
ANY_ACTION = ""  # the action field of rows that apply to every action
ALLOW, DENY = "allow", "deny"
MAX_VALUE = 512  # casbin_rule's v0..v5 columns
MISSING: Any = object()

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lteq": operator.le,
    "gt": operator.gt,
    "gteq": operator.ge,
}


class CompileError(ValueError):
    """A policy the compiler cannot express (never expected for a policy that parsed)."""


@dataclass(frozen=True)
class CompiledPolicy:
    policy_id: str
    policy: Policy | None  # None: the stored definition cannot be read (it denies everything)
    revision: str
    rows: tuple[list[str], ...]  # Casbin rule values (without the ptype "p")
    conditions: dict[str, Condition]  # rule ref -> condition, for the matcher
    rule_conditions: dict[int, Condition]  # id(rule) -> its own condition, for the admission reasons
    problem: str | None = None  # why a policy denies everything, when policy is None


def _left(name: str) -> Callable[[RequestContext], Any]:
    """The request's value of a left operand, or MISSING (as decision._left_value)."""
    get = _value_of(name)
    if name not in DEFERRED_OPERANDS:
        return get
    return lambda c: MISSING if c.defers else get(c)


def _value_of(name: str) -> Callable[[RequestContext], Any]:
    if name == "participantId":
        return lambda c: c.participant_id
    if name == "membership":
        return lambda c: c.memberships
    if name == "purpose":
        return lambda c: c.purpose if c.purpose else MISSING
    if name == "dateTime":
        return lambda c: c.now
    if name == "elapsedTime":
        return lambda c: MISSING if c.agreed_at is None else (c.now - c.agreed_at).total_seconds()
    if name == "count":
        return lambda c: MISSING if c.access_count is None else c.access_count
    if name == "spatial":
        return lambda c: c.location if c.location else MISSING
    raise CompileError(f"left operand {name!r} cannot be compiled")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)


def _ordering(constraint: Atomic, get: Callable[[RequestContext], Any]) -> TriCondition:
    compare = _ORDER[constraint.operator]
    op, name = constraint.operator, constraint.left
    right_set = frozenset(constraint.right)
    right: Any = constraint.right[0] if len(constraint.right) == 1 else MISSING
    if right is not MISSING and name == "dateTime":
        right = parse_time(right) or MISSING
    elif right is not MISSING and name == "elapsedTime":
        seconds = duration_seconds(right)
        right = MISSING if seconds is None else seconds
    typed = name in ("dateTime", "elapsedTime")

    def check(context: RequestContext) -> Truth:
        left = get(context)
        if left is MISSING:
            return None
        if isinstance(left, frozenset):  # a set: equality only
            return (left == right_set) if op == "eq" else (left != right_set) if op == "neq" else False
        if right is MISSING:
            return False
        if not typed and not (
            (_is_number(left) and _is_number(right)) or (isinstance(left, str) and isinstance(right, str))
        ):
            return False
        return compare(left, right)

    return check


def _as_set(value: Any) -> frozenset[Any]:
    if isinstance(value, frozenset | set | list | tuple):
        return frozenset(value)
    return frozenset((value,))


def _set_operator(constraint: Atomic, get: Callable[[RequestContext], Any]) -> TriCondition:
    right = frozenset(constraint.right)
    test: Callable[[frozenset[Any]], bool] = {
        "isAnyOf": lambda left: not right.isdisjoint(left),
        "isNoneOf": lambda left: right.isdisjoint(left),
        "isAllOf": right.issubset,
        "hasPart": right.issubset,
        "isPartOf": lambda left: left <= right,
    }[constraint.operator]

    def check(context: RequestContext) -> Truth:
        left = get(context)
        return None if left is MISSING else test(_as_set(left))

    return check


def compile_constraint(constraint: Constraint) -> TriCondition:
    if isinstance(constraint, Atomic):
        get = _left(constraint.left)
        if constraint.operator in _ORDER:
            return _ordering(constraint, get)
        return _set_operator(constraint, get)
    parts = tuple(compile_constraint(part) for part in constraint.parts)
    kind = constraint.kind
    return lambda context: combine(kind, [part(context) for part in parts])


def compile_rule(rule: Rule) -> Condition:
    """The rule's condition: its constraints' conjunction, an unknown read as the rule's kind requires."""
    parts = tuple(compile_constraint(c) for c in rule.constraints)
    if not parts:
        return _always
    kind = rule.kind
    single = parts[0] if len(parts) == 1 else None

    def holds(context: RequestContext) -> bool:
        truth = single(context) if single is not None else combine("and", [part(context) for part in parts])
        return resolve_unknown(kind, context) if truth is None else truth

    return holds


def _always(_context: RequestContext) -> bool:
    return True


def _prohibition_condition(
    policy: Policy, prohibition: Rule, own: Condition, rules: dict[int, Condition]
) -> Condition:
    if policy.conflict != "perm":
        return own
    winners = tuple(rules[id(p)] for p in policy.permissions if p.action == prohibition.action)
    if not winners:
        return own
    return lambda context: own(context) and not any(w(context) for w in winners)


def rule_ref(policy_id: str, kind: str, revision: str) -> str:
    return f"{policy_id}#{kind}@{revision}"


def compile_policy(policy_id: str, policy: Policy, revision: str) -> CompiledPolicy:
    """The Casbin rows and conditions of one policy at one revision."""
    if not policy_id:
        raise CompileError("a policy id cannot be empty")
    rules = {id(r): compile_rule(r) for r in (*policy.permissions, *policy.prohibitions)}
    rows: list[list[str]] = []
    conditions: dict[str, Condition] = {}

    def row(kind: str, action: str, effect: str, condition: Condition) -> None:
        ref = rule_ref(policy_id, kind, revision)
        for value in (policy_id, action, ref):
            if len(value) > MAX_VALUE:
                raise CompileError(
                    f"{value[:40]!r}… is longer than the {MAX_VALUE} characters a rule field holds"
                )
        rows.append([policy_id, action, ref, effect, revision, LAYOUT])
        conditions[ref] = condition

    if policy.void_because is not None:
        row("void", ANY_ACTION, DENY, _always)
        return CompiledPolicy(policy_id, policy, revision, tuple(rows), conditions, rules)
    for index, permission in enumerate(policy.permissions):
        row(f"permission/{index}", _action(permission), ALLOW, rules[id(permission)])
    for index, prohibition in enumerate(policy.prohibitions):
        own = rules[id(prohibition)]
        condition = _prohibition_condition(policy, prohibition, own, rules)
        row(f"prohibition/{index}", _action(prohibition), DENY, condition)
    if not policy.permissions:
        row("any", ANY_ACTION, ALLOW, _always)
    return CompiledPolicy(policy_id, policy, revision, tuple(rows), conditions, rules)


def compile_unreadable(policy_id: str, revision: str, problem: str = "cannot be read") -> CompiledPolicy:
    """A stored definition that no longer parses denies everything: fail closed."""
    ref = rule_ref(policy_id, "unreadable", revision)
    row = [policy_id, ANY_ACTION, ref, DENY, revision, LAYOUT]
    return CompiledPolicy(policy_id, None, revision, (row,), {ref: _always}, {}, problem)


def _action(rule: Rule) -> str:
    if rule.action == ANY_ACTION:
        raise CompileError(f"the {rule.kind}'s action is empty")
    return rule.action
