"""Evidence bundles: an agreement with its signatures and keys, checkable offline by anyone.

A bundle is JSON::

    {"type": "tessera-agreement-evidence/1",
     "agreement": {...the DSP Agreement object, as signed...},
     "provider": {"did": ..., "signature": "<detached JWS>", "publicKeyJwk": {...}},
     "consumer": {"did": ..., "signature": "<detached JWS>" or null, "publicKeyJwk": {...} or null}}

``verify_bundle`` needs nothing but the bundle: no network, no database. It
proves that each signature present was made over this very agreement by the
key the bundle names; whether that key is the party's is what a verifier
checks against the party's DID document or its own trust list (``pinned``,
or the key thumbprints the report shows).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from contracts.agreements import AgreementRecord
from contracts.signing import SignatureError, read_header, signer_did, verify_agreement_signature
from identity.errors import KeyFileError
from identity.keys import normalised_public_jwk

BUNDLE_TYPE = "tessera-agreement-evidence/1"
ROLES = ("provider", "consumer")
ONE_PARTY_NOTE = "signed by the provider only: the consumer (an EDC connector?) did not counter-sign"


class EvidenceError(ValueError):
    """A bundle cannot be made (e.g. a party signed, but its key is not known)."""


def export_bundle(record: AgreementRecord, keys: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The evidence bundle of ``record``; ``keys`` maps DIDs to public JWKs (ours and the pinned peer's)."""
    parties: dict[str, dict[str, Any]] = {}
    for role, did, signature in (
        ("provider", record.provider_did, record.provider_signature),
        ("consumer", record.consumer_did, record.consumer_signature),
    ):
        jwk = keys.get(did)
        if jwk is None and signature is not None:
            raise EvidenceError(f"the {role} {did} signed the agreement, but its public key is not known")
        parties[role] = {
            "did": did,
            "signature": signature,
            "publicKeyJwk": normalised_public_jwk(jwk) if jwk is not None else None,
        }
    return {"type": BUNDLE_TYPE, "agreement": record.agreement, **parties}


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """The RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public JWK."""
    members = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class PartyResult:
    role: str
    did: str | None
    signed: bool
    verified: bool
    message: str
    key_id: str | None = None
    key_thumbprint: str | None = None


@dataclass(frozen=True)
class EvidenceReport:
    ok: bool
    provider: PartyResult
    consumer: PartyResult
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    agreement: dict[str, Any] = field(default_factory=dict)

    @property
    def both_signed(self) -> bool:
        return self.provider.verified and self.consumer.verified

    @property
    def parties(self) -> tuple[PartyResult, PartyResult]:
        return self.provider, self.consumer


def _unchecked(role: str, why: str = "not checked") -> PartyResult:
    return PartyResult(role, None, signed=False, verified=False, message=why)


def _signature_failure(role: str, exc: SignatureError) -> str:
    if exc.reason == "mismatch":
        return f"the {role}'s signature does not match the agreement — the agreement or the signature was changed"
    if exc.reason == "kid":
        return f"the {role}'s key is not the one named in its signature: {exc}"
    if exc.reason == "key":
        return f"the {role}'s publicKeyJwk is not usable: {exc}"
    if exc.reason == "algorithm":
        return f"the {role}'s signature is refused: {exc}"
    if exc.reason == "canonical":
        return f"the agreement cannot be checked: {exc}"
    return f"the {role}'s signature is malformed: {exc}"


def _check_party(
    role: str, party: Any, agreement: dict[str, Any], pinned: dict[str, dict[str, str]]
) -> PartyResult:
    if not isinstance(party, dict) or not isinstance(party.get("did"), str) or not party["did"]:
        return _unchecked(role, f"the bundle's {role} has no did")
    did: str = party["did"]
    signature = party.get("signature")
    if signature is None:
        return PartyResult(role, did, signed=False, verified=False, message="not signed")
    jwk = party.get("publicKeyJwk")
    thumbprint: str | None = None
    try:
        jwk = normalised_public_jwk(jwk)
        thumbprint = jwk_thumbprint(jwk)
    except KeyFileError as exc:
        return PartyResult(role, did, True, False, f"the {role}'s publicKeyJwk is not usable: {exc}")
    named = signer_did(signature) if isinstance(signature, str) else None
    key_id = None
    if named is not None:
        key_id = str(read_header(signature).get("kid"))
        if named != did:
            message = (
                f"the {role}'s key is not the one named in its signature: "
                f"the signature names {key_id}, the bundle's {role} is {did}"
            )
            return PartyResult(role, did, True, False, message, key_id, thumbprint)
    pinned_jwk = pinned.get(did)
    if pinned_jwk is not None and normalised_public_jwk(pinned_jwk)["x"] != jwk["x"]:
        message = f"the {role}'s key in the bundle is not the key pinned for {did} in the trust list"
        return PartyResult(role, did, True, False, message, key_id, thumbprint)
    try:
        verify_agreement_signature(agreement, signature, jwk, expected_kid_did=did)
    except SignatureError as exc:
        return PartyResult(role, did, True, False, _signature_failure(role, exc), key_id, thumbprint)
    checked = "checked against the pinned key" if pinned_jwk is not None else "made by the key in the bundle"
    return PartyResult(role, did, True, True, f"signature valid ({checked})", key_id, thumbprint)


def _binding_problems(agreement: dict[str, Any], provider: PartyResult, consumer: PartyResult) -> list[str]:
    """The agreement must name the bundle's parties: the assigner is the provider, the assignee the consumer."""
    problems = []
    assigner, assignee = agreement.get("assigner"), agreement.get("assignee")
    if provider.did is not None and assigner is not None and assigner != provider.did:
        problems.append(
            f"the agreement's assigner is {assigner!r}, but the bundle's provider is {provider.did}"
        )
    # An EDC consumer may be known by another participant id; only a signing consumer must match.
    if consumer.signed and consumer.did is not None and assignee is not None and assignee != consumer.did:
        problems.append(
            f"the agreement's assignee is {assignee!r}, but the bundle's consumer is {consumer.did}"
        )
    return problems


def verify_bundle(
    bundle: Any, *, require_both: bool = False, pinned: dict[str, dict[str, str]] | None = None
) -> EvidenceReport:
    """Check every signature in ``bundle``; ``pinned`` (optional) maps DIDs to keys the verifier trusts."""
    if not isinstance(bundle, dict) or bundle.get("type") != BUNDLE_TYPE:
        problem = f"this is not an agreement evidence bundle (its type must be {BUNDLE_TYPE!r})"
        return EvidenceReport(False, _unchecked("provider"), _unchecked("consumer"), (problem,))
    agreement = bundle.get("agreement")
    if not isinstance(agreement, dict) or agreement.get("@type") != "Agreement":
        problem = "the bundle's agreement is missing or not an Agreement object"
        return EvidenceReport(False, _unchecked("provider"), _unchecked("consumer"), (problem,))
    provider, consumer = (_check_party(role, bundle.get(role), agreement, pinned or {}) for role in ROLES)
    problems = [result.message for result in (provider, consumer) if result.signed and not result.verified]
    problems += [result.message for result in (provider, consumer) if result.did is None]
    problems += _binding_problems(agreement, provider, consumer)
    notes: list[str] = []
    if not provider.signed and provider.did is not None:
        problems.append(
            "the provider's signature is missing: an agreement is evidence only when its provider signed"
        )
    if provider.signed and not consumer.signed and consumer.did is not None:
        if require_both:
            problems.append(
                "signed by one party only: the consumer did not counter-sign, and both signatures are required"
            )
        else:
            notes.append(ONE_PARTY_NOTE)
    return EvidenceReport(not problems, provider, consumer, tuple(problems), tuple(notes), agreement)
