"""Management API bodies expand the same through the shared context cache as through a fresh,
cache-free pyld run, whatever came before them (pyld edits cached contexts on ``@import``)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pyld import jsonld

from catalog.jsonld import (
    EDC_MANAGEMENT_CONTEXT_URL,
    EDC_NS,
    ODRL_CONTEXT_URL,
    JsonLdInputError,
    expand_management_input,
    jsonld_options,
)

OFFER = {
    "@type": "odrl:Offer",
    "@id": "offer-1",
    "assigner": "did:web:example.org",
    "target": "asset-1",
    "odrl:permission": [
        {
            "odrl:action": {"@id": "odrl:use"},
            "odrl:constraint": [
                {
                    "odrl:leftOperand": {"@id": "odrl:purpose"},
                    "odrl:operator": {"@id": "odrl:eq"},
                    "odrl:rightOperand": "traffic-planning",
                }
            ],
        }
    ],
}

BODIES: list[dict[str, Any]] = [
    {"@context": [EDC_MANAGEMENT_CONTEXT_URL], "@type": "ContractRequest", "policy": OFFER,
     "counterPartyAddress": "http://127.0.0.1:1/dsp", "protocol": "dataspace-protocol-http:2025-1"},
    # An inline context that imports ODRL: pyld would merge it into its cached copy of ODRL's context.
    {"@context": {"@import": ODRL_CONTEXT_URL, "@version": 1.1, "@vocab": EDC_NS, "purpose": "odrl:purpose"},
     "@type": "PolicyDefinition", "@id": "p1", "policy": {"@type": "Set", "permission": [{"action": "use"}]}},
    {"@context": [ODRL_CONTEXT_URL, {"@vocab": EDC_NS}], "@type": "PolicyDefinition", "@id": "p2",
     "policy": {"@type": "Set", "permission": [{"action": "use", "constraint": [
         {"leftOperand": "purpose", "operator": "eq", "rightOperand": "x"}]}]}},
    {"@context": {"@vocab": EDC_NS}, "@type": "QuerySpec", "limit": 10},
    {"@context": {"@vocab": EDC_NS, "odrl": "http://www.w3.org/ns/odrl/2/"}, "@type": "ContractRequest",
     "policy": OFFER},
    # Inline contexts that differ only deep inside a term definition, or only in key order: the
    # shared cache keys inline contexts by their content and must neither confuse nor split them.
    {"@context": {"@vocab": EDC_NS, "zone": {"@id": "https://example.org/a/zone", "@type": "@id"}},
     "@type": "QuerySpec", "zone": "north"},
    {"@context": {"@vocab": EDC_NS, "zone": {"@id": "https://example.org/b/zone", "@type": "@id"}},
     "@type": "QuerySpec", "zone": "north"},
    {"@context": {"zone": {"@type": "@id", "@id": "https://example.org/b/zone"}, "@vocab": EDC_NS},
     "@type": "QuerySpec", "zone": "north"},
]  # fmt: skip


def _reference_expansion(body: dict[str, Any]) -> list[Any]:
    """pyld on its own: contexts loaded afresh for this one document, nothing shared."""
    document = copy.deepcopy(body)
    context = document["@context"]
    if isinstance(context, dict) and "@vocab" not in context:
        document["@context"] = {**context, "@vocab": EDC_NS}
    result: list[Any] = jsonld.expand(document, jsonld_options())
    return result


@pytest.mark.parametrize("rounds", [1, 3])
def test_cached_expansion_matches_a_fresh_one_in_any_order(rounds: int) -> None:
    order = BODIES * rounds
    order += list(reversed(order))
    for body in order:
        assert [expand_management_input(copy.deepcopy(body))] == _reference_expansion(body)


def test_import_of_an_unknown_context_is_refused_before_pyld_sees_it() -> None:
    body = {"@context": {"@import": "https://evil.example/ctx.jsonld"}, "@type": "QuerySpec"}
    with pytest.raises(JsonLdInputError, match=r"evil\.example"):
        expand_management_input(body)


@pytest.mark.parametrize(
    "context",
    [
        {"@vocab": EDC_NS},  # bare, EDC's default vocabulary
        [EDC_MANAGEMENT_CONTEXT_URL],  # EDC's management context makes "purpose" ODRL's term
        {"@vocab": EDC_NS, "tessera": "https://w3id.org/tessera/v1/ns/"},
    ],
)
def test_a_declared_purpose_is_read_however_the_context_spells_it(context: Any) -> None:
    from connector.management.common import declared_purpose

    key = "tessera:purpose" if isinstance(context, dict) and "tessera" in context else "purpose"
    body = {"@context": context, "@type": "TransferRequest", "contractId": "a1", key: "traffic-planning"}
    assert declared_purpose(expand_management_input(body)) == "traffic-planning"
    assert (
        declared_purpose(expand_management_input({"@context": context, "@type": "TransferRequest"})) is None
    )
