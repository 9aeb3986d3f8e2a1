"""Signatures on contract agreements: detached JWS over the RFC 8785 form of the Agreement.

What is signed is the DSP ``agreement`` object (``@id``, ``@type``,
``target``, ``assigner``, ``assignee``, ``timestamp``, the ODRL rules...)
exactly as it travels in the ContractAgreementMessage, minus any signature
members (``SIGNATURE_MEMBERS``), written in the JSON Canonicalization Scheme
(RFC 8785): one byte sequence per JSON value, whatever the key order or
spacing of the copy at hand.

A signature is a compact JWS with detached content (RFC 7515 appendix F,
``header..signature``): the payload is the canonical form, which either
party recomputes from its own copy of the agreement. The protected header is
``{"alg": "EdDSA", "kid": "<did>#key-1", "typ": "tessera-agreement+jws"}``.

Verification reads the header before any key is used: only EdDSA (Ed25519)
passes, so ``alg: none`` and HMAC forgeries never reach a verifier.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Literal

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws as jose_jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from catalog.vocabulary import TESSERA_NS
from identity.did import KEY_FRAGMENT
from identity.errors import KeyFileError
from identity.keys import public_key_from_jwk
from identity.tokens import ALLOWED_ALGORITHMS, ISSUED_ALGORITHM

SIGNATURE_TYPE = "tessera-agreement+jws"
# The extension member that carries a signature on DSP messages (see docs/agreements.md).
SIGNATURE_MEMBER = TESSERA_NS + "signature"
# Top-level members of an agreement that are never part of what is signed.
SIGNATURE_MEMBERS = frozenset(
    {SIGNATURE_MEMBER, "tessera:signature", "signature", "providerSignature", "consumerSignature", "proof"}
)
# Header members we refuse: keys named by the sender (we verify with pinned keys only),
# critical extensions we do not implement, and RFC 7797's unencoded payloads.
REFUSED_HEADER_MEMBERS = ("crit", "b64", "jwk", "jku", "x5u", "x5c")
MAX_JWS_LENGTH = 4096
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")

Reason = Literal["malformed", "algorithm", "kid", "key", "canonical", "mismatch"]


class SignatureError(Exception):
    """A signature cannot be made or does not verify; the message says what failed.

    ``reason`` names the check: malformed, algorithm, kid, key, canonical or mismatch.
    """

    def __init__(self, message: str, reason: Reason = "malformed") -> None:
        super().__init__(message)
        self.reason: Reason = reason


def agreement_key_id(did: str) -> str:
    """The ``kid`` a participant signs agreements with: its DID document's key, ``<did>#key-1``."""
    return f"{did}#{KEY_FRAGMENT}"


def signed_content(agreement: dict[str, Any]) -> dict[str, Any]:
    """The agreement without its signature members: what a signature covers."""
    return {key: value for key, value in agreement.items() if key not in SIGNATURE_MEMBERS}


def canonical_form(agreement: dict[str, Any]) -> bytes:
    """The RFC 8785 (JCS) bytes of ``agreement``, signature members left out."""
    if not isinstance(agreement, dict):
        raise SignatureError("the agreement must be a JSON object", "canonical")
    try:
        return rfc8785.dumps(signed_content(agreement))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise SignatureError(
            f"the agreement cannot be written in canonical JSON (RFC 8785): {exc}", "canonical"
        ) from None


def _b64url_json(segment: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, TypeError, binascii.Error):
        return None


def read_header(signature: str) -> dict[str, Any]:
    """The protected header of a detached agreement JWS, after checking its shape only."""
    if not isinstance(signature, str) or not signature:
        raise SignatureError("the signature is missing or not a string")
    if len(signature) > MAX_JWS_LENGTH:
        raise SignatureError(f"the signature is longer than {MAX_JWS_LENGTH} characters")
    parts = signature.split(".")
    if len(parts) != 3 or not all(_B64URL.match(part) for part in parts):
        raise SignatureError("the signature is not a compact JWS (three base64url parts separated by dots)")
    if parts[1]:
        raise SignatureError("the signature is not a detached JWS: its payload part must be empty")
    header = _b64url_json(parts[0])
    if not isinstance(header, dict):
        raise SignatureError("the signature's protected header is not a base64url JSON object")
    return header


def signer_did(jws_text: str) -> str | None:
    """The DID the signature's ``kid`` names (``did:...#fragment``), or None."""
    try:
        header = read_header(jws_text)
    except SignatureError:
        return None
    return _did_of_kid(header.get("kid"))


def _did_of_kid(kid: Any) -> str | None:
    if not isinstance(kid, str) or "#" not in kid:
        return None
    did, _, fragment = kid.partition("#")
    if not did.startswith("did:") or not fragment or any(c.isspace() for c in kid):
        return None
    return did


def sign_agreement(agreement: dict[str, Any], key: Ed25519PrivateKey, key_id: str) -> str:
    """A detached compact JWS over the canonical form of ``agreement``; ``key_id`` is ``<did>#key-1``."""
    if _did_of_kid(key_id) is None:
        raise SignatureError(f"key id {key_id!r} is not of the form <did>#<fragment>", "kid")
    header = {"alg": ISSUED_ALGORITHM, "kid": key_id, "typ": SIGNATURE_TYPE}
    compact = jose_jws.serialize_compact(
        header, canonical_form(agreement), OKPKey.import_key(key), algorithms=[ISSUED_ALGORITHM]
    )
    detached: str = jose_jws.detach_content(compact)
    return detached


def _check_header(header: dict[str, Any], expected_kid_did: str | None) -> tuple[str, str]:
    """The algorithm and kid of a header that may be verified; SignatureError otherwise."""
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise SignatureError(
            f"algorithm {alg!r} is not allowed: agreement signatures must be EdDSA (Ed25519)", "algorithm"
        )
    refused = [name for name in REFUSED_HEADER_MEMBERS if name in header]
    if refused:
        raise SignatureError(f"the signature's header may not carry {', '.join(refused)}")
    if header.get("typ") != SIGNATURE_TYPE:
        raise SignatureError(
            f"the signature's typ is {header.get('typ')!r}, not {SIGNATURE_TYPE!r}: "
            "it is not an agreement signature"
        )
    kid = header.get("kid")
    did = _did_of_kid(kid)
    if did is None or not isinstance(kid, str):
        raise SignatureError(f"the signature's kid {kid!r} is not of the form <did>#<fragment>", "kid")
    if expected_kid_did is not None and did != expected_kid_did:
        raise SignatureError(
            f"the signature's kid {kid} names the key of {did}, not of {expected_kid_did}", "kid"
        )
    return str(alg), kid


def verify_agreement_signature(
    agreement: dict[str, Any],
    jws: str,
    public_jwk: dict[str, str],
    *,
    expected_kid_did: str | None = None,
) -> None:
    """Check that ``jws`` is a signature of ``agreement`` by ``public_jwk``; raise SignatureError if not."""
    header = read_header(jws)
    alg, kid = _check_header(header, expected_kid_did)
    try:
        key = public_key_from_jwk(public_jwk)
    except KeyFileError as exc:
        raise SignatureError(f"the public key is not usable: {exc}", "key") from None
    jwk_kid = public_jwk.get("kid") if isinstance(public_jwk, dict) else None
    if jwk_kid is not None and jwk_kid != kid:
        raise SignatureError(f"the signature names key {kid}, but the key given is {jwk_kid}", "kid")
    signature_part = jws.rsplit(".", 1)[1]
    try:
        raw_signature = base64.urlsafe_b64decode(signature_part + "=" * (-len(signature_part) % 4))
    except (ValueError, binascii.Error):
        raise SignatureError("the signature part is not base64url") from None
    if len(raw_signature) != 64:
        raise SignatureError("the signature part is not a 64-byte Ed25519 signature")
    payload = canonical_form(agreement)
    try:
        jose_jws.deserialize_compact(jws, OKPKey.import_key(key), algorithms=[alg], payload=payload)
    except JoseError:
        raise SignatureError(
            f"the signature ({kid}) does not match the agreement: the agreement or the signature was changed, "
            "or the key is not the one that signed",
            "mismatch",
        ) from None
