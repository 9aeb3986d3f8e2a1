"""Self-issued tokens on their own: what ``issue_token`` produces and the exact time limits.

The HTTP tests in test_peer_auth.py use the wall clock and so keep a few
seconds' margin around each limit; here ``now`` is fixed, so every boundary
is checked to the second.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from identity.errors import TokenRejected
from identity.keys import public_jwk
from identity.tokens import MAX_LIFETIME_SECONDS, VerifiedToken, issue_token, verify_token
from tests.peer_helpers import b64url_decode, claims_for, sign_ed25519, sign_hs256

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

SENDER = "did:web:transit.example"
RECEIVER = "did:web:city.example"
T = 1_800_000_000  # a fixed "now"
SKEW = 30


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def verify(token: str, key: Ed25519PrivateKey, now: float, skew: int = SKEW) -> VerifiedToken:
    jwk = public_jwk(key.public_key())
    return verify_token(token, RECEIVER, lambda did: jwk if did == SENDER else None, clock_skew=skew, now=now)


def reason(token: str, key: Ed25519PrivateKey, now: float) -> str:
    with pytest.raises(TokenRejected) as refused:
        verify(token, key, now)
    return refused.value.reason


def test_issued_token_carries_the_required_header_and_claims(key: Ed25519PrivateKey) -> None:
    token = issue_token(key, SENDER, RECEIVER, key_id=f"{SENDER}#key-1", lifetime=90, now=T)
    head, body, signature = token.split(".")
    assert json.loads(b64url_decode(head)) == {"alg": "EdDSA", "typ": "JWT", "kid": f"{SENDER}#key-1"}
    claims = json.loads(b64url_decode(body))
    assert claims["iss"] == claims["sub"] == SENDER
    assert claims["aud"] == RECEIVER
    assert (claims["iat"], claims["exp"]) == (T, T + 90)
    assert isinstance(claims["jti"], str)
    assert claims["jti"]
    # An Ed25519 signature over the JWS signing input, checkable without any JOSE library.
    key.public_key().verify(b64url_decode(signature), f"{head}.{body}".encode())


def test_every_token_has_its_own_jti(key: Ed25519PrivateKey) -> None:
    tokens = [issue_token(key, SENDER, RECEIVER, now=T) for _ in range(200)]
    jtis = {json.loads(b64url_decode(t.split(".")[1]))["jti"] for t in tokens}
    assert len(jtis) == 200


@pytest.mark.parametrize("lifetime", [0, -1, MAX_LIFETIME_SECONDS + 1, 3600])
def test_issuing_a_token_outside_1_to_300_seconds_is_refused(key: Ed25519PrivateKey, lifetime: int) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        issue_token(key, SENDER, RECEIVER, lifetime=lifetime)


def test_expiry_is_enforced_to_the_second_with_the_skew(key: Ed25519PrivateKey) -> None:
    token = issue_token(key, SENDER, RECEIVER, lifetime=60, now=T)
    verified = verify(token, key, now=T + 60 + SKEW - 1)
    # Remembered for replay exactly as long as it could still be accepted.
    assert verified.expires_at == T + 60 + SKEW
    assert reason(token, key, now=T + 60 + SKEW) == "expired"
    with pytest.raises(TokenRejected, match="expired"):
        verify(token, key, now=T + 61, skew=0)


def test_issued_at_and_not_before_are_enforced_to_the_second_with_the_skew(key: Ed25519PrivateKey) -> None:
    assert verify(issue_token(key, SENDER, RECEIVER, now=T + SKEW), key, now=T).issuer == SENDER
    assert reason(issue_token(key, SENDER, RECEIVER, now=T + SKEW + 1), key, now=T) == "not_yet_valid"
    early = sign_ed25519(key, {"alg": "EdDSA"}, claims_for(SENDER, RECEIVER, now=T, nbf=T + SKEW + 1))
    assert reason(early, key, now=T) == "not_yet_valid"
    on_time = sign_ed25519(key, {"alg": "EdDSA"}, claims_for(SENDER, RECEIVER, now=T, nbf=T + SKEW))
    assert verify(on_time, key, now=T).issuer == SENDER


def test_lifetime_is_limited_to_300_seconds_on_receipt(key: Ed25519PrivateKey) -> None:
    longest = sign_ed25519(key, {"alg": "EdDSA"}, claims_for(SENDER, RECEIVER, now=T, lifetime=300))
    assert verify(longest, key, now=T).issuer == SENDER
    too_long = sign_ed25519(key, {"alg": "EdDSA"}, claims_for(SENDER, RECEIVER, now=T, lifetime=301))
    assert reason(too_long, key, now=T) == "lifetime"


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_refused_algorithms_never_reach_a_key_lookup(key: Ed25519PrivateKey, alg: str) -> None:
    claims = claims_for(SENDER, RECEIVER, now=T)
    pub = public_jwk(key.public_key())
    token = (
        sign_hs256(json.dumps(pub).encode(), claims)
        if alg == "HS256"
        else sign_ed25519(key, {"alg": alg}, claims)
    )
    looked_up: list[str] = []

    def key_of(did: str) -> dict[str, str]:
        looked_up.append(did)
        return pub

    with pytest.raises(TokenRejected) as refused:
        verify_token(token, RECEIVER, key_of, now=T)
    assert refused.value.reason == "algorithm"
    assert looked_up == []
