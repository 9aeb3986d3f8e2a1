"""Self-issued peer tokens (DCP-style): issue and verify.

A token is a compact JWS (JWT) signed with the sender's Ed25519 key:
``iss`` = ``sub`` = sender DID, ``aud`` = receiver DID, ``iat``, ``exp`` at
most five minutes after ``iat``, ``nbf`` optional, and a unique ``jti``.

Verification checks the header *before* looking at any key: only the
algorithms in ``ALLOWED_ALGORITHMS`` pass, so ``alg: none`` and HMAC tricks
(HS256 with the public key as secret) never reach a verifier. Replay is the
caller's job (it needs shared storage); this module returns what to record.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import OKPKey

from identity.errors import TokenRejected

# RFC 9864 deprecates the polymorphic "EdDSA" name in favour of "Ed25519".
# Peers (EDC, DCP) still send "EdDSA", so we issue it and accept both; the
# keys we verify with are always Ed25519, so the two names mean the same here.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

ALLOWED_ALGORITHMS = ("EdDSA", "Ed25519")
ISSUED_ALGORITHM = "EdDSA"
MAX_LIFETIME_SECONDS = 300
DEFAULT_LIFETIME_SECONDS = 120
DEFAULT_CLOCK_SKEW_SECONDS = 30
MAX_TOKEN_BYTES = 4096
MAX_JTI_LENGTH = 128


@dataclass(frozen=True)
class VerifiedToken:
    issuer: str
    jti: str
    expires_at: int


def issue_token(
    key: Ed25519PrivateKey,
    issuer: str,
    audience: str,
    *,
    key_id: str | None = None,
    lifetime: int = DEFAULT_LIFETIME_SECONDS,
    now: float | None = None,
) -> str:
    if not 0 < lifetime <= MAX_LIFETIME_SECONDS:
        raise ValueError(f"token lifetime must be 1..{MAX_LIFETIME_SECONDS} seconds")
    issued_at = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "sub": issuer,
        "aud": audience,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "jti": uuid.uuid4().hex,
    }
    header: dict[str, Any] = {"alg": ISSUED_ALGORITHM, "typ": "JWT"}
    if key_id:
        header["kid"] = key_id
    return jwt.encode(header, claims, OKPKey.import_key(key), algorithms=[ISSUED_ALGORITHM])


def _decode_segment(segment: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (ValueError, TypeError):
        raise TokenRejected("malformed", "the token is not a well-formed JWT") from None


def read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of ``token`` without checking anything but shape and size."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected("oversized", f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    segments = token.split(".")
    if len(segments) != 3 or not all(segments[:2]):
        raise TokenRejected("malformed", "the token is not a compact JWS (three dot-separated parts)")
    header, claims = _decode_segment(segments[0]), _decode_segment(segments[1])
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenRejected("malformed", "the token's header and claims must be JSON objects")
    return header, claims


def _int_claim(claims: dict[str, Any], name: str, required: bool = True) -> int | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    # JSON parsing accepts NaN and Infinity; int() of either raises, so refuse them here.
    not_finite = isinstance(value, float) and not math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not_finite:
        raise TokenRejected("claims", f"the token's '{name}' claim is missing or not a number")
    return int(value)


def verify_token(
    token: str,
    audience: str,
    public_jwk_for: Callable[[str], dict[str, str] | None],
    *,
    clock_skew: int = DEFAULT_CLOCK_SKEW_SECONDS,
    now: float | None = None,
) -> VerifiedToken:
    """Check ``token`` completely; raise ``TokenRejected`` naming the first failure.

    ``public_jwk_for(issuer)`` returns the pinned key of a trust-list member,
    or None for a stranger.
    """
    header, claims = read_unverified(token)
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise TokenRejected("algorithm", f"algorithm {alg!r} is not accepted; use EdDSA (Ed25519)")
    if "crit" in header or "jwk" in header or "jku" in header or "x5u" in header:
        raise TokenRejected("header", "the token header may not carry crit, jwk, jku or x5u")
    issuer = claims.get("iss")
    # Unprintable text (NUL, lone surrogates) would make the database lookup fail, not miss.
    if not isinstance(issuer, str) or not issuer or not issuer.isprintable():
        raise TokenRejected("claims", "the token has no valid 'iss' claim")
    jwk = public_jwk_for(issuer)
    if jwk is None:
        raise TokenRejected("unknown_issuer", f"{issuer} is not a member of this data space")
    try:
        jwt.decode(token, OKPKey.import_key(dict(jwk)), algorithms=[alg])
    except JoseError:
        raise TokenRejected(
            "signature", f"the token's signature does not verify with the key of {issuer}"
        ) from None
    if claims.get("sub") != issuer:
        raise TokenRejected("claims", "the token's 'sub' must equal its 'iss'")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise TokenRejected("audience", f"the token is addressed to {aud!r}, not to {audience}")
    current = int(time.time() if now is None else now)
    issued_at = _int_claim(claims, "iat")
    expires_at = _int_claim(claims, "exp")
    not_before = _int_claim(claims, "nbf", required=False)
    assert issued_at is not None
    assert expires_at is not None
    if expires_at - issued_at > MAX_LIFETIME_SECONDS:
        raise TokenRejected("lifetime", f"the token lives longer than {MAX_LIFETIME_SECONDS} seconds")
    if expires_at <= issued_at:
        raise TokenRejected("lifetime", "the token expires before it was issued")
    if current >= expires_at + clock_skew:
        raise TokenRejected("expired", "the token has expired")
    if issued_at > current + clock_skew or (not_before is not None and not_before > current + clock_skew):
        raise TokenRejected("not_yet_valid", "the token is not valid yet")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH or not jti.isprintable():
        raise TokenRejected("claims", f"the token needs a printable 'jti' of 1..{MAX_JTI_LENGTH} characters")
    return VerifiedToken(issuer=issuer, jti=jti, expires_at=expires_at + clock_skew)
