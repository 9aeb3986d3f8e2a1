"""Offer ids: which contract definition, asset and contract-policy version an offer stands for.

The format is EDC's — three base64 parts joined by ``:`` — so EDC consumers
handle our ids as they handle their own. The third part is a fingerprint of
the contract policy instead of a random UUID: the provider can tell, from the
id alone, whether an offer it receives is one it made and is still current.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OfferId:
    contract_definition_id: str
    asset_id: str
    policy_fingerprint: str


def policy_fingerprint(policy_node: dict[str, Any]) -> str:
    canonical = json.dumps(policy_node, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def make_offer_id(contract_definition_id: str, asset_id: str, policy_node: dict[str, Any]) -> str:
    return ":".join(_b64(p) for p in (contract_definition_id, asset_id, policy_fingerprint(policy_node)))


def parse_offer_id(offer_id: str) -> OfferId | None:
    """The parts of an offer id, or None when it is not one of ours in form."""
    parts = offer_id.split(":")
    if len(parts) != 3:
        return None
    try:
        decoded = [base64.b64decode(p, validate=True).decode() for p in parts]
    except (binascii.Error, UnicodeDecodeError):
        return None
    return OfferId(*decoded)
