"""Usage operands at negotiation time: decided later, at every access (the decision procedure and the
compiled conditions agree).

A negotiation cannot know the purpose the consumer will declare, how often it
will access the data, or how long after the agreement: a permission's
constraint on them holds for now, a prohibition's does not apply yet. Every
other operand (who, which memberships, the date) is decided as usual.
"""

from __future__ import annotations

from typing import Any

import pytest

from policies.compiler import compile_policy
from policies.decision import RequestContext, decide
from policies.odrl import Policy
from tests.catalog_helpers import constraint, rule
from tests.test_policy_decision import NOW, TRANSIT, UTILITY, policy


def _negotiating(participant: str = TRANSIT) -> RequestContext:
    return RequestContext(participant_id=participant, now=NOW, stage="negotiation")


def _compiled_admits(p: Policy, context: RequestContext) -> bool:
    """What the policy engine's compiled conditions say (a permission holds, no prohibition does)."""
    compiled = compile_policy("p", p, "1")
    holds = compiled.rule_conditions
    prohibited = any(holds[id(r)](context) for r in p.prohibitions)
    permitted = not p.permissions or any(holds[id(r)](context) for r in p.permissions)
    return permitted and not prohibited


CASES: list[tuple[str, Policy, str, bool]] = [
    ("purpose permission", policy([rule(constraint("purpose", "eq", "research"))]), TRANSIT, True),
    ("count permission", policy([rule(constraint("count", "lteq", 3))]), TRANSIT, True),
    ("elapsedTime permission", policy([rule(constraint("elapsedTime", "lteq", "P30D"))]), TRANSIT, True),
    (
        "purpose prohibition",
        policy([rule()], [rule(constraint("purpose", "eq", "marketing"))], "prohibit"),
        TRANSIT,
        True,
    ),
    (
        "identity still decided",
        policy([rule(constraint("purpose", "eq", "research"), constraint("participantId", "eq", TRANSIT))]),
        UTILITY,
        False,
    ),
    (
        "date still decided",
        policy([rule(constraint("dateTime", "lt", "2026-01-01T00:00:00Z"))]),
        TRANSIT,
        False,
    ),
]


@pytest.mark.parametrize(("name", "p", "participant", "expected"), CASES, ids=[c[0] for c in CASES])
def test_usage_operands_are_deferred_at_negotiation(
    name: str, p: Policy, participant: str, expected: bool
) -> None:
    context = _negotiating(participant)
    assert decide(p, context).allowed is expected
    assert _compiled_admits(p, context) is expected


def test_at_use_the_same_constraints_are_decided() -> None:
    research = policy([rule(constraint("purpose", "eq", "research"))])
    used: dict[str, Any] = {"participant_id": TRANSIT, "now": NOW}
    assert not decide(research, RequestContext(**used, purpose="marketing")).allowed
    assert decide(research, RequestContext(**used, purpose="research")).allowed
    no_marketing = policy([rule()], [rule(constraint("purpose", "eq", "marketing"))], "prohibit")
    assert not decide(no_marketing, RequestContext(**used, purpose="marketing")).allowed
    twice = policy([rule(constraint("count", "lteq", 2))])
    assert not decide(twice, RequestContext(**used, access_count=3)).allowed
    assert "count 3" in decide(twice, RequestContext(**used, access_count=3)).explanation
