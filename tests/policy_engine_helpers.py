"""Random ODRL policies and request contexts, written as the Management API stores them (expanded JSON-LD).

The values are drawn so that every operator meets matching and mismatching
operands, missing operands (no purpose, no agreement), unparsable right
operands and clashing rules under every conflict strategy: the policy
engine must decide exactly as ``policies.decision.decide`` on all of them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from catalog.jsonld import ODRL_NS
from policies.decision import RequestContext
from policies.definitions import PolicyDefinitionRecord
from policies.odrl import OPERATORS, parse_policy

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PARTICIPANTS = ("did:web:transit.example.org", "did:web:utility.example.org", "did:web:bikes.example.org")
MEMBERSHIPS = ("transport-operator", "utility", "public-authority", "research")
PURPOSES = ("traffic-planning", "marketing", "research")
ACTIONS = ("use", "distribute")
RIGHT_VALUES: dict[str, tuple[Any, ...]] = {
    "purpose": (*PURPOSES, 5),
    "membership": MEMBERSHIPS,
    "participantId": PARTICIPANTS,
    "dateTime": ("2026-01-01T00:00:00Z", "2026-06-01T12:00:00+00:00", "2027-01-01", "2026-05-31", "tomorrow"),
    "elapsedTime": ("PT1H", "P1D", "P1W", 3600, "bogus"),
    "count": (0, 3, 5, "3"),
    "spatial": ("north", "south"),
}


def atomic(rng: random.Random) -> dict[str, Any]:
    left = rng.choice(sorted(RIGHT_VALUES))
    right = [rng.choice(RIGHT_VALUES[left]) for _ in range(rng.choice((1, 1, 2, 3)))]
    return {
        ODRL_NS + "leftOperand": [{"@value": left}],
        ODRL_NS + "operator": [{"@id": ODRL_NS + rng.choice(sorted(OPERATORS))}],
        ODRL_NS + "rightOperand": [{"@value": v} for v in right],
    }


def constraint(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    if depth < 2 and rng.random() < 0.2:
        kind = rng.choice(("and", "or", "xone"))
        parts = [constraint(rng, depth + 1) for _ in range(rng.randint(1, 3))]
        return {ODRL_NS + kind: [{"@list": parts}]}
    return atomic(rng)


def rule(rng: random.Random) -> dict[str, Any]:
    node: dict[str, Any] = {ODRL_NS + "action": [{"@id": ODRL_NS + rng.choice(ACTIONS)}]}
    constraints = [constraint(rng) for _ in range(rng.choice((0, 1, 1, 2, 3)))]
    if constraints:
        node[ODRL_NS + "constraint"] = constraints
    return node


def policy_node(rng: random.Random) -> dict[str, Any]:
    node: dict[str, Any] = {
        "@type": [ODRL_NS + "Set"],
        ODRL_NS + "permission": [rule(rng) for _ in range(rng.choice((0, 1, 1, 2, 3)))],
    }
    prohibitions = [rule(rng) for _ in range(rng.choice((0, 0, 1, 2)))]
    if prohibitions:
        node[ODRL_NS + "prohibition"] = prohibitions
    conflict = rng.choice((None, None, "perm", "prohibit", "invalid"))
    if conflict is not None:
        node[ODRL_NS + "conflict"] = [{"@id": ODRL_NS + conflict}]
    return node


def random_record(rng: random.Random, policy_id: str) -> PolicyDefinitionRecord:
    node = policy_node(rng)
    return PolicyDefinitionRecord(policy_id, node, parse_policy(node), {}, 0)


def random_context(rng: random.Random) -> RequestContext:
    return RequestContext(
        participant_id=rng.choice(PARTICIPANTS),
        memberships=frozenset(m for m in MEMBERSHIPS if rng.random() < 0.4),
        purpose=rng.choice((None, "", *PURPOSES)),
        now=rng.choice((NOW, NOW - timedelta(days=200), NOW + timedelta(days=365))),
        agreed_at=rng.choice((None, NOW - timedelta(hours=2), NOW - timedelta(days=3))),
        access_count=rng.choice((None, 0, 3, 10)),
        location=rng.choice((None, "north", "south")),
        stage=rng.choice(("catalog", "negotiation", "usage", "usage")),
    )
