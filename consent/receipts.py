"""Signed consent receipts: a compact JWS (EdDSA, the consent service's key) per change.

The payload carries the Kantara Consent Receipt v1.1 fields (``version``,
``jurisdiction``, ``consentTimestamp``, ``collectionMethod``,
``consentReceiptID``, ``language``, ``piiPrincipalId``, ``piiControllers``,
``policyUrl``, ``services`` with purposes, ``sensitive``, ``spiCat``) and
the ISO/IEC TS 27560 record links (``consentRecord``: record id, DPV state,
the agreement revision and its content hash, the event's hash in the chain).
The payload is RFC 8785 JSON, so a verifier can recompute it byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws as jose_jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from consent.hashing import canonical_json
from consent.models import ConsentEvent, ConsentRecord
from identity.did import KEY_FRAGMENT
from identity.errors import KeyFileError
from identity.keys import public_key_from_jwk
from identity.tokens import ISSUED_ALGORITHM

RECEIPT_TYPE = "consent-receipt+jws"
RECEIPT_VERSION = "KI-CR-v1.1.0"
MAX_RECEIPT_LENGTH = 16_384


class ReceiptError(Exception):
    """A receipt that is malformed, not ours, or whose signature does not verify."""


@dataclass(frozen=True)
class ReceiptSigner:
    """The consent service's identity for signing receipts."""

    did: str
    key: Ed25519PrivateKey
    jurisdiction: str = "EU"
    policy_url: str = ""

    @property
    def key_id(self) -> str:
        return f"{self.did}#{KEY_FRAGMENT}"


def receipt_claims(
    signer: ReceiptSigner,
    event: ConsentEvent,
    record: ConsentRecord,
    revision: dict[str, Any],
    revision_hash: str,
) -> dict[str, Any]:
    """The receipt's payload for ``event`` of ``record`` under the agreement ``revision``."""
    notice = revision["notice"]
    recipient = next((r for r in revision["recipients"] if r["did"] == record.recipient_did), None)
    return {
        "iss": signer.did,
        "iat": event.at // 1000,
        "jti": f"{record.id}:{event.seq}",
        "version": RECEIPT_VERSION,
        "jurisdiction": signer.jurisdiction,
        "consentTimestamp": event.at // 1000,
        "collectionMethod": event.method,
        "consentReceiptID": f"{record.id}:{event.seq}",
        "publicKey": signer.key_id,
        "language": notice["language"],
        "piiPrincipalId": record.citizen_id,
        "piiControllers": [
            {"piiController": revision["controller_name"], "did": revision["controller"], "onBehalf": False}
        ],
        "policyUrl": signer.policy_url
        or f"urn:tessera:agreement:{revision['agreement_id']}:{revision['version']}",
        "services": [
            {
                "service": revision["name"],
                "purposes": [
                    {
                        "purpose": revision["purpose_description"],
                        "purposeCategory": [revision["purpose"]],
                        "consentType": "EXPLICIT",
                        "piiCategory": list(revision["data_categories"]),
                        "primaryPurpose": True,
                        "termination": revision["retention"],
                        "thirdPartyDisclosure": True,
                        "thirdPartyName": recipient["name"] if recipient else record.recipient_did,
                        "thirdPartyDid": record.recipient_did,
                    }
                ],
            }
        ],
        "sensitive": False,
        "spiCat": [],
        "consentRecord": {
            "id": record.id,
            "state": event.state,
            "time": event.at,
            "actor": event.actor,
            "method": event.method,
            "expiresAt": event.expires_at,
            "agreement": revision["agreement_id"],
            "agreementVersion": revision["version"],
            "agreementHash": revision_hash,
            "noticeVersion": notice["version"],
            "lawfulBasis": revision["lawful_basis"],
            "eventSeq": event.seq,
            "eventHash": event.hash,
        },
    }


def sign_receipt(claims: dict[str, Any], signer: ReceiptSigner) -> str:
    header = {"alg": ISSUED_ALGORITHM, "kid": signer.key_id, "typ": RECEIPT_TYPE}
    token: str = jose_jws.serialize_compact(
        header, canonical_json(claims), OKPKey.import_key(signer.key), algorithms=[ISSUED_ALGORITHM]
    )
    return token


def _b64json(segment: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        return None


def verify_receipt(receipt: str, public_jwk: dict[str, str]) -> dict[str, Any]:
    """The receipt's claims if ``public_jwk`` signed it; ReceiptError otherwise."""
    if not isinstance(receipt, str) or len(receipt) > MAX_RECEIPT_LENGTH or receipt.count(".") != 2:
        raise ReceiptError("the receipt is not a compact JWS")
    header = _b64json(receipt.split(".", 1)[0])
    if not isinstance(header, dict) or header.get("alg") not in ("EdDSA", "Ed25519"):
        raise ReceiptError("the receipt must be signed with EdDSA")
    if header.get("typ") != RECEIPT_TYPE:
        raise ReceiptError(f"the receipt's typ is not {RECEIPT_TYPE}")
    try:
        key = OKPKey.import_key(public_key_from_jwk(public_jwk))
        verified = jose_jws.deserialize_compact(receipt, key, algorithms=[str(header["alg"])])
    except (JoseError, KeyFileError, ValueError):
        raise ReceiptError("the receipt's signature does not verify") from None
    claims = json.loads(verified.payload)
    if not isinstance(claims, dict):
        raise ReceiptError("the receipt's payload is not a JSON object")
    return claims
