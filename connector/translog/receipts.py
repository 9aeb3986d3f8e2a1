"""Signed transfer statements and receipts: each party's signature over the same facts.

The provider signs what it served when a transfer starts and when it completes (a
*statement*); the consumer signs the very same facts back (a *receipt*). The facts are a
small JSON object (``FACT_FIELDS``); a signature is a detached compact JWS (EdDSA, Ed25519)
over its RFC 8785 form, with the protected header
``{"alg": "EdDSA", "kid": "<did>#key-1", "typ": "tessera-transfer-facts+jws"}``. The log
entry ``transfer.receipt`` holds the facts next to the counter-party's signature, so anyone
holding the signer's public key re-derives the signed bytes from the entry alone
(``tessera audit verify`` does).

Verification reads the header before any key is used (EdDSA only, no keys named by the
sender) and uses the pinned key of the party the facts say signed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws as jose_jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from connector.translog import entries as e
from contracts.signing import REFUSED_HEADER_MEMBERS, SignatureError, agreement_key_id, read_header
from identity.errors import KeyFileError
from identity.keys import public_key_from_jwk
from identity.tokens import ISSUED_ALGORITHM

FACTS_TYPE = "tessera-transfer-facts+jws"
STATEMENTS = ("started", "completed")
TRANSFER_RECEIPT = "transfer.receipt"

# What both parties sign: the same object, whoever signs it.
FACT_FIELDS: dict[str, e.Validator] = {
    "statement": e.one_of(*STATEMENTS),
    "agreementId": e.identifier,
    "dataset": e.identifier,
    "provider": e.identifier,
    "consumer": e.identifier,
    "providerPid": e.identifier,
    "consumerPid": e.identifier,
    "bytes": e.count,
    "payloadSha256": e.sha256_hex,
    "records": e.count,
}
FACTS_REQUIRED = frozenset(FACT_FIELDS)

# The log entry: the facts, our local transfer id and side, who signed, and the signature.
e.register_kind(
    TRANSFER_RECEIPT,
    {
        **FACT_FIELDS,
        "transferId": e.identifier,
        "role": e.ROLE,
        "counterParty": e.identifier,
        "signedBy": e.identifier,
        "signature": e.jws,
    },
    FACTS_REQUIRED | {"transferId", "role", "counterParty", "signedBy", "signature"},
)


def check_facts(facts: Any) -> dict[str, Any]:
    """``facts`` when it is exactly a facts object; EntryError naming the problem otherwise."""
    if not isinstance(facts, dict):
        raise e.EntryError("the facts must be a JSON object")
    e.check_fields(facts, FACT_FIELDS, FACTS_REQUIRED)
    return dict(facts)


def facts_of_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The signed facts inside a ``transfer.receipt`` entry."""
    return {name: entry.get(name) for name in FACT_FIELDS}


def sign_facts(facts: Mapping[str, Any], key: Ed25519PrivateKey, did: str) -> str:
    header = {"alg": ISSUED_ALGORITHM, "kid": agreement_key_id(did), "typ": FACTS_TYPE}
    compact = jose_jws.serialize_compact(
        header, rfc8785.dumps(dict(facts)), OKPKey.import_key(key), algorithms=[ISSUED_ALGORITHM]
    )
    detached: str = jose_jws.detach_content(compact)
    return detached


def verify_facts(facts: Mapping[str, Any], signature: str, signer: str, public_jwk: dict[str, Any]) -> None:
    """Check that ``signature`` is ``signer``'s over ``facts``; SignatureError saying why not."""
    header = read_header(signature)
    if header.get("alg") != ISSUED_ALGORITHM:
        raise SignatureError(f"algorithm {header.get('alg')!r} is not allowed (EdDSA only)", "algorithm")
    if any(name in header for name in REFUSED_HEADER_MEMBERS):
        raise SignatureError("the signature's header names keys or extensions we do not accept")
    if header.get("typ") != FACTS_TYPE:
        raise SignatureError(f"the signature's typ is {header.get('typ')!r}, not {FACTS_TYPE!r}")
    if header.get("kid") != agreement_key_id(signer):
        raise SignatureError(f"the signature's kid {header.get('kid')!r} is not {signer}'s key", "kid")
    try:
        key = public_key_from_jwk(public_jwk)
    except KeyFileError as exc:
        raise SignatureError(f"the public key of {signer} is not usable: {exc}", "key") from None
    part = signature.rsplit(".", 1)[1]
    try:
        if len(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) != 64:
            raise SignatureError("the signature part is not a 64-byte Ed25519 signature")
    except (ValueError, binascii.Error):
        raise SignatureError("the signature part is not base64url") from None
    try:
        jose_jws.deserialize_compact(
            signature,
            OKPKey.import_key(key),
            algorithms=[ISSUED_ALGORITHM],
            payload=rfc8785.dumps(dict(facts)),
        )
    except JoseError:
        raise SignatureError(
            f"{signer}'s signature does not match these facts: the facts or the signature were changed",
            "mismatch",
        ) from None
