"""The policy decision point on policies as operators upload them (EDC PolicyDefinition bodies).

Each policy is read the way the Management API reads it: JSON-LD expansion of
the body, then the ODRL parser; ``decide`` then judges a request context.
Set operators follow the W3C ODRL 2.2 recommendation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from catalog.jsonld import EDC_NS, ODRL_NS, expand_management_input, first_node
from policies.decision import RequestContext, decide
from policies.odrl import Policy, PolicyError, check_conflicts, parse_policy
from tests.catalog_helpers import constraint, policy_body, rule

TRANSIT = "did:web:transit.example.org"
UTILITY = "did:web:utility.example.org"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def policy(
    permissions: Sequence[dict[str, Any]] = (),
    prohibitions: Sequence[dict[str, Any]] = (),
    conflict: str | dict[str, str] | None = None,  # a name or {"@id": "odrl:perm"}
) -> Policy:
    """A policy as the Management API stores it, from the body the Tractus-X SDK would send."""
    node = expand_management_input(policy_body("p", permissions, prohibitions, conflict))
    policy_node = first_node(node, EDC_NS + "policy")
    return parse_policy(policy_node)


def one(left: str, operator: str, right: Any) -> Policy:
    return policy([rule(constraint(left, operator, right))])


def request(*memberships: str, participant: str = TRANSIT, **more: Any) -> RequestContext:
    return RequestContext(participant_id=participant, memberships=frozenset(memberships), now=NOW, **more)


def admits(p: Policy, context: RequestContext) -> bool:
    return decide(p, context).allowed


# ---------------------------------------------------------------- set operators (W3C semantics)


SET_CASES = [
    # isAnyOf: the sets share a value
    ("isAnyOf", ["a", "b"], {"a"}, True),
    ("isAnyOf", ["a", "b"], {"b", "c"}, True),
    ("isAnyOf", ["a", "b"], {"c"}, False),
    ("isAnyOf", ["a", "b"], set(), False),
    # isAllOf: the left holds every right value; NOT set equality
    ("isAllOf", ["a", "b"], {"a", "b", "c"}, True),
    ("isAllOf", ["a", "b"], {"a", "b"}, True),
    ("isAllOf", ["a", "b"], {"a"}, False),
    ("isAllOf", ["a", "b"], {"a", "c"}, False),
    # isNoneOf: no shared value
    ("isNoneOf", ["a", "b"], {"c"}, True),
    ("isNoneOf", ["a", "b"], set(), True),
    ("isNoneOf", ["a", "b"], {"c", "b"}, False),
    # isPartOf: every left value is among the right ones (left ⊆ right), not the reverse
    ("isPartOf", ["a", "b"], {"a"}, True),
    ("isPartOf", ["a", "b"], {"a", "b"}, True),
    ("isPartOf", ["a", "b"], {"a", "b", "c"}, False),
    ("isPartOf", ["a", "b"], {"c"}, False),
    # hasPart: the left contains every right value (right ⊆ left)
    ("hasPart", ["a", "b"], {"a", "b", "c"}, True),
    ("hasPart", ["a", "b"], {"a"}, False),
    # eq / neq on a set: set equality
    ("eq", ["a", "b"], {"b", "a"}, True),
    ("eq", ["a", "b"], {"a", "b", "c"}, False),
    ("eq", "a", {"a"}, True),
    ("neq", ["a", "b"], {"a", "b", "c"}, True),
    ("neq", ["a", "b"], {"a", "b"}, False),
]


@pytest.mark.parametrize(("operator", "right", "memberships", "expected"), SET_CASES)
def test_set_operators_on_memberships(
    operator: str, right: Any, memberships: set[str], expected: bool
) -> None:
    decision = decide(one("membership", operator, right), request(*memberships))
    assert decision.allowed is expected, decision.explanation


def test_ordering_a_set_fails_closed() -> None:
    decision = decide(one("membership", "lt", "b"), request("a"))
    assert not decision.allowed
    assert "is a set and cannot be ordered" in decision.explanation


def test_participant_id_eq_and_neq() -> None:
    assert admits(one("participantId", "eq", TRANSIT), request())
    assert not admits(one("participantId", "eq", TRANSIT), request(participant=UTILITY))
    assert admits(one("participantId", "neq", TRANSIT), request(participant=UTILITY))
    assert not admits(one("participantId", "neq", TRANSIT), request())
    assert admits(one("participantId", "isAnyOf", [UTILITY, TRANSIT]), request())


# ---------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("operator", "right", "expected"),
    [
        ("lt", "2027-01-01T00:00:00Z", True),
        ("lt", "2026-01-01T00:00:00Z", False),
        ("gt", "2026-01-01T00:00:00Z", True),
        ("gt", "2026-06-01T12:00:01+00:00", False),
        ("gt", "2026-06-01T13:00:00+02:00", True),  # 11:00 UTC: the offset counts
        ("lteq", "2026-06-01T12:00:00Z", True),
        ("gteq", "2026-06-01T12:00:00Z", True),
        ("lt", "2026-06-01T12:00:00Z", False),
        ("gt", "2026-05-31", True),  # a date is its midnight, UTC
        ("eq", "2026-06-01T12:00:00Z", True),
    ],
)
def test_date_time_comparisons(operator: str, right: str, expected: bool) -> None:
    decision = decide(one("dateTime", operator, right), request())
    assert decision.allowed is expected, decision.explanation


def test_a_date_time_that_is_no_date_fails_closed() -> None:
    decision = decide(one("dateTime", "lt", "tomorrow"), request())
    assert not decision.allowed
    assert "'tomorrow' cannot be compared with dateTime" in decision.explanation


# ---------------------------------------------------------------- logical constraints


def _logical(kind: str, *parts: dict[str, Any]) -> Policy:
    return policy([{"action": "use", "constraint": [{kind: list(parts)}]}])


TRANSPORT = constraint("membership", "isAnyOf", ["transport-operator"])
NOT_UTILITY = constraint("membership", "isNoneOf", ["utility"])
IS_TRANSIT = constraint("participantId", "eq", TRANSIT)


@pytest.mark.parametrize(
    ("kind", "memberships", "participant", "expected"),
    [
        ("and", {"transport-operator"}, TRANSIT, True),
        ("and", {"transport-operator"}, UTILITY, False),
        ("or", {"utility"}, TRANSIT, True),
        ("or", {"utility"}, UTILITY, False),
        ("xone", {"transport-operator"}, UTILITY, True),  # exactly one holds
        ("xone", {"utility"}, TRANSIT, True),
        ("xone", {"transport-operator"}, TRANSIT, False),  # both hold
        ("xone", {"utility"}, UTILITY, False),  # neither holds
    ],
)
def test_and_or_xone(kind: str, memberships: set[str], participant: str, expected: bool) -> None:
    decision = decide(_logical(kind, TRANSPORT, IS_TRANSIT), request(*memberships, participant=participant))
    assert decision.allowed is expected, decision.explanation


def test_constraints_of_one_rule_all_apply_and_nest() -> None:
    nested = policy(
        [
            {
                "action": "use",
                "constraint": [
                    NOT_UTILITY,
                    {"or": [TRANSPORT, constraint("membership", "isAnyOf", ["rail"])]},
                ],
            }
        ]
    )
    assert admits(nested, request("rail"))
    assert admits(nested, request("transport-operator"))
    assert not admits(nested, request("transport-operator", "utility"))
    assert not admits(nested, request("bus-fan"))


# ---------------------------------------------------------------- rules, prohibitions, explanations


def test_an_empty_policy_admits_everyone() -> None:
    decision = decide(policy(), request())
    assert decision.allowed
    assert "no permission rules" in decision.explanation
    assert admits(policy([rule()]), request()), "a permission without constraints admits too"


def test_a_prohibition_that_holds_wins_over_permissions_under_prohibit() -> None:
    p = policy([rule()], [rule(constraint("membership", "isAnyOf", ["utility"]))], conflict="prohibit")
    assert p.conflict == "prohibit"
    assert admits(p, request("transport-operator"))
    decision = decide(p, request("utility", "transport-operator"))
    assert not decision.allowed
    assert decision.explanation == "denied by prohibition 1 (use): membership isAnyOf 'utility'"
    # Even when a permission names the requester outright.
    named = policy([rule(IS_TRANSIT)], [rule(IS_TRANSIT)], conflict="prohibit")
    assert not admits(named, request())


def test_a_permission_that_holds_wins_over_a_prohibition_under_perm() -> None:
    utility = constraint("membership", "isAnyOf", ["utility"])
    p = policy([rule(TRANSPORT)], [rule(utility)], conflict="perm")
    both = decide(p, request("utility", "transport-operator"))
    assert both.allowed
    assert both.reasons == (
        "admitted by permission 1 (use)",
        "prohibition 1 (use) holds but permission 1 (use) overrides it (conflict strategy perm)",
    )
    # The prohibition still denies where no permission on its action holds.
    only_utility = decide(p, request("utility"))
    assert not only_utility.allowed
    assert only_utility.explanation == "denied by prohibition 1 (use): membership isAnyOf 'utility'"
    assert not admits(p, request("bus-fan"))


def test_a_permission_on_another_action_does_not_override_a_prohibition() -> None:
    p = policy([rule(action="distribute"), rule()], [rule(action="distribute")], conflict="perm")
    assert decide(p, request(), actions=("distribute",)).allowed
    q = policy([rule(action="distribute")], [rule()], conflict="perm")  # no clash: nothing to resolve
    assert q.clashes == ()
    assert not admits(q, request())


@pytest.mark.parametrize("conflict", [None, "invalid"])
def test_clashing_rules_without_a_strategy_make_the_policy_void(conflict: str | None) -> None:
    """ODRL 2.2: without a conflict strategy (or with invalid) clashing rules void the policy."""
    p = policy([rule(IS_TRANSIT)], [rule(constraint("membership", "isAnyOf", ["utility"]))], conflict)
    assert [(c.permission, c.prohibition, c.action) for c in p.clashes] == [(0, 0, "use")]
    assert p.void_because is not None
    assert "permission 1 (use) and prohibition 1 (use)" in p.void_because
    decision = decide(p, request())  # the permission holds, the prohibition does not: still void
    assert not decision.allowed
    assert decision.explanation.startswith("the policy is void: permission 1 (use) and prohibition 1 (use)")
    with pytest.raises(PolicyError, match=r"permission 1 \(use\) and prohibition 1 \(use\)"):
        check_conflicts(p)
    # Rules on different actions do not clash.
    check_conflicts(policy([rule()], [rule(action="distribute")]))


@pytest.mark.parametrize(
    ("written", "expected"),
    [("perm", "perm"), ("prohibit", "prohibit"), ("invalid", "invalid"), ({"@id": "odrl:perm"}, "perm")],
)
def test_the_conflict_term_is_read(written: Any, expected: str) -> None:
    assert policy([rule()], conflict=written).conflict == expected
    assert policy([rule()]).conflict is None


def test_an_unknown_conflict_strategy_is_refused_by_name() -> None:
    with pytest.raises(PolicyError, match="'whatever'"):
        policy([rule()], conflict="whatever")


def test_one_permission_that_holds_is_enough_and_is_named() -> None:
    p = policy([rule(TRANSPORT), rule(constraint("membership", "isAnyOf", ["utility"]))])
    decision = decide(p, request("utility"))
    assert decision.allowed
    assert decision.explanation == "admitted by permission 2 (use)"


def test_a_refusal_names_the_rule_and_the_constraint() -> None:
    decision = decide(one("membership", "isAnyOf", ["transport-operator"]), request("utility"))
    assert not decision.allowed
    assert decision.reasons == (
        "denied because permission 1 (use): membership ['utility'] is not in {'transport-operator'}",
    )
    assert "membership ['utility'] is not in {'transport-operator'}" in decision.explanation

    both = decide(policy([rule(TRANSPORT), rule(IS_TRANSIT)]), request("utility", participant=UTILITY))
    assert len(both.reasons) == 2
    assert both.reasons[0].startswith("denied because permission 1 (use): membership")
    assert both.reasons[1].startswith("denied because permission 2 (use): participantId")
    assert repr(UTILITY) in both.reasons[1]

    logical = decide(_logical("and", TRANSPORT, IS_TRANSIT), request(participant=UTILITY))
    assert "and fails (" in logical.explanation
    assert "membership [] is not in {'transport-operator'}" in logical.explanation


def test_an_operand_the_request_cannot_supply_fails_closed() -> None:
    decision = decide(one("purpose", "eq", "research"), request())
    assert not decision.allowed
    assert "no purpose was declared" in decision.explanation
    assert admits(one("purpose", "eq", "research"), request(purpose="research"))
    assert not admits(one("purpose", "eq", "research"), request(purpose="marketing"))


def test_only_rules_for_the_requested_action_count() -> None:
    p = policy([rule(action="distribute")])
    decision = decide(p, request())
    assert not decision.allowed
    assert decision.explanation == "no permission covers the action use"
    assert decide(p, request(), actions=("distribute",)).allowed


def test_the_edc_sdk_form_decides_alike() -> None:
    """odrl:-prefixed terms under EDC's vocabulary, as the Tractus-X SDK writes them."""
    body = {
        "@context": {"@vocab": EDC_NS, "odrl": ODRL_NS},
        "@type": "PolicyDefinition",
        "@id": "p",
        "policy": {
            "@type": "odrl:Set",
            "odrl:permission": [
                {
                    "odrl:action": {"@id": "odrl:use"},
                    "odrl:constraint": {
                        "odrl:leftOperand": "membership",
                        "odrl:operator": {"@id": "odrl:isAllOf"},
                        "odrl:rightOperand": ["a", "b"],
                    },
                }
            ],
        },
    }
    sdk = parse_policy(first_node(expand_management_input(body), EDC_NS + "policy"))
    assert sdk == one("membership", "isAllOf", ["a", "b"])
    assert admits(sdk, request("a", "b", "c"))
    assert not admits(sdk, request("a"))


# ---------------------------------------------------------------- decision points (stages)

MARKETING = constraint("purpose", "eq", "marketing")
AT_MOST_3 = constraint("count", "lteq", 3)


def test_usage_time_operands_are_deferred_before_usage_and_required_at_usage() -> None:
    terms = policy([rule(TRANSPORT, AT_MOST_3, constraint("purpose", "eq", "traffic-planning"))])
    # At negotiation only who asks is known: the membership decides, the rest waits for each access.
    assert admits(terms, request("transport-operator", stage="negotiation"))
    assert not admits(terms, request("utility", stage="negotiation"))
    assert admits(terms, request("transport-operator", stage="catalog"))
    # Values the context happens to carry are not used before usage either.
    assert admits(terms, request("transport-operator", stage="negotiation", access_count=99))
    # At usage every operand counts, and a missing one fails the permission.
    assert admits(terms, request("transport-operator", purpose="traffic-planning", access_count=3))
    assert not admits(terms, request("transport-operator", purpose="traffic-planning", access_count=4))
    denied = decide(terms, request("transport-operator", access_count=0))
    assert not denied.allowed
    assert "no purpose was declared" in denied.explanation


def test_a_prohibition_that_cannot_be_ruled_out_at_usage_denies() -> None:
    no_marketing = policy([rule()], [rule(MARKETING)], conflict="prohibit")
    assert admits(no_marketing, request(purpose="traffic-planning"))
    assert not admits(no_marketing, request(purpose="marketing"))
    # No purpose declared: the prohibition on marketing cannot be ruled out, so it applies (fail closed).
    undeclared = decide(no_marketing, request())
    assert not undeclared.allowed
    assert "prohibition 1" in undeclared.explanation
    assert "cannot be ruled out: " in undeclared.explanation
    assert "no purpose was declared" in undeclared.explanation
    # Before usage the prohibition waits for the access that declares a purpose.
    assert admits(no_marketing, request(stage="negotiation"))


@pytest.mark.parametrize(
    ("kind", "memberships", "stage", "expected"),
    [
        ("or", {"transport-operator"}, "negotiation", True),  # one part holds: unknown others do not matter
        ("or", {"utility"}, "negotiation", True),  # the other part is deferred: held until usage
        ("or", {"utility"}, "usage", False),  # ... and at usage it is missing: fails
        ("and", {"utility"}, "negotiation", False),  # one part is false: unknowns cannot save it
        ("xone", {"transport-operator"}, "negotiation", True),  # unknown whether exactly one: deferred
        ("xone", {"transport-operator"}, "usage", False),  # missing at usage: fails
    ],
)
def test_logical_constraints_with_unknown_parts(
    kind: str, memberships: set[str], stage: str, expected: bool
) -> None:
    assert admits(_logical(kind, TRANSPORT, AT_MOST_3), request(*memberships, stage=stage)) is expected
