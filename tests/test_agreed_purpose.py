"""Which purposes an agreement binds its consumer to (what consent is asked for), read from its signed terms."""

from __future__ import annotations

from typing import Any

import pytest

from connector.agreed_purpose import PurposeNotBound, agreed_purposes, consent_purpose
from contracts.agreements import AgreementRecord


def agreement(*permissions: dict[str, Any]) -> AgreementRecord:
    terms = {
        "@id": "urn:uuid:a1",
        "@type": "Agreement",
        "target": "card-trips",
        "permission": list(permissions),
    }
    return AgreementRecord(
        id="urn:uuid:a1", negotiation_id="n1", provider_did="did:web:transit.example",
        consumer_did="did:web:city.example", asset_id="card-trips", agreement=terms, signed_at=0,
        provider_signature=None, consumer_signature=None,
    )  # fmt: skip


def purpose(operator: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": "purpose", "operator": operator, "rightOperand": right}


def test_eq_and_is_any_of_bind_their_purposes() -> None:
    terms = agreement(
        {"action": "use", "constraint": [purpose("eq", "traffic-planning")]},
        {"action": "use", "constraint": [purpose("isAnyOf", ["research", "statistics"])]},
    )
    assert agreed_purposes(terms) == frozenset({"traffic-planning", "research", "statistics"})
    assert consent_purpose(terms, "research") == "research"


def test_two_purpose_constraints_on_one_permission_bind_what_both_admit() -> None:
    terms = agreement(
        {"action": "use", "constraint": [purpose("isAnyOf", ["a", "b"]), purpose("isAnyOf", ["b", "c"])]}
    )
    assert agreed_purposes(terms) == frozenset({"b"})


@pytest.mark.parametrize(
    "permissions",
    [
        [{"action": "use"}],  # any purpose
        [{"action": "use", "constraint": [purpose("eq", "traffic-planning")]}, {"action": "use"}],
        [{"action": "use", "constraint": [purpose("neq", "marketing")]}],  # everything but one
        [{"action": "use", "constraint": [{"or": [purpose("eq", "a"), purpose("eq", "b")]}]}],
    ],
)
def test_an_agreement_that_does_not_bind_the_purpose_releases_nothing(
    permissions: list[dict[str, Any]],
) -> None:
    with pytest.raises(PurposeNotBound, match="does not restrict the purpose"):
        consent_purpose(agreement(*permissions), "traffic-planning")


def test_a_declared_purpose_the_agreement_does_not_bind_or_none_is_refused() -> None:
    terms = agreement({"action": "use", "constraint": [purpose("eq", "traffic-planning")]})
    with pytest.raises(PurposeNotBound, match="'marketing' is not one agreement"):
        consent_purpose(terms, "marketing")
    with pytest.raises(PurposeNotBound, match="declared no purpose"):
        consent_purpose(terms, None)


# ---------------------------------------------------------------- usage control on the agreed terms


def test_usage_control_decides_the_agreements_own_terms() -> None:
    """When the provider has changed the policy since, the signed terms are decided: rules are read,
    not dropped (an agreement read with the DSP context alone loses them and denies everything)."""
    from datetime import UTC, datetime

    from connector.usage import decide_agreed_terms
    from policies.decision import RequestContext

    terms = agreement(
        {
            "action": "use",
            "constraint": [
                purpose("eq", "traffic-planning"),
                {"leftOperand": "count", "operator": "lteq", "rightOperand": 2},
            ],
        }
    )
    now = datetime(2026, 11, 21, tzinfo=UTC)

    def use(declared: str | None, count: int) -> bool:
        context = RequestContext(
            participant_id="did:web:city.example",
            purpose=declared,
            now=now,
            access_count=count,
            agreed_at=now,
        )
        return decide_agreed_terms(terms, context).allowed

    assert use("traffic-planning", 1)
    assert use("traffic-planning", 2)
    assert not use("traffic-planning", 3)
    assert not use("marketing", 1)
    assert not use(None, 1)
    broken = AgreementRecord(**{**terms.__dict__, "agreement": {"permission": [{"action": {"@list": 5}}]}})
    refused = decide_agreed_terms(broken, RequestContext(participant_id="x", purpose="traffic-planning"))
    assert not refused.allowed
    assert "cannot be evaluated" in refused.explanation
