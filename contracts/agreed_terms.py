"""An agreement's own signed terms, read as an ODRL policy.

The DSP context scopes ODRL's terms to the message types that carry them; an
Agreement read on its own also needs the DSP ODRL profile, or JSON-LD
expansion silently drops every rule (and a decision on the empty policy would
deny everything — or worse, a policy without rules would admit everyone).
"""

from __future__ import annotations

from pyld import jsonld

from catalog.jsonld import DSPACE_CONTEXT_URL, jsonld_options
from contracts.agreements import AgreementRecord
from policies.odrl import Policy, PolicyError, parse_policy

ODRL_PROFILE_URL = "https://w3id.org/dspace/2025/1/odrl-profile.jsonld"
RULE_KEYS = ("permission", "prohibition", "obligation")


def agreed_policy(agreement: AgreementRecord) -> Policy:
    """The agreement's permissions, prohibitions and duties; PolicyError when they cannot be read."""
    terms = {k: v for k, v in agreement.agreement.items() if k in RULE_KEYS}
    node = {
        "@context": [DSPACE_CONTEXT_URL, ODRL_PROFILE_URL],
        "@type": "Agreement",
        "@id": agreement.id,
        **terms,
    }
    try:
        expanded = jsonld.expand(node, jsonld_options())
    except jsonld.JsonLdError as exc:
        raise PolicyError(f"the agreed terms are not valid JSON-LD: {exc}", "") from None
    if len(expanded) != 1:
        raise PolicyError("the agreed terms are not one JSON-LD node", "")
    policy = parse_policy(expanded[0], require_set=False)
    if terms and not (policy.permissions or policy.prohibitions or policy.obligations):
        raise PolicyError("the agreed terms name rules but none could be read", "")
    return policy
