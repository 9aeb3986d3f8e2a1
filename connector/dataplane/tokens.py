"""Data tokens: the short-lived credential a pull transfer's data address carries.

An access token is a compact JWS (EdDSA) signed with the provider's own key.
Its claims bind it to one transfer, its agreement and the consumer:
``iss`` = ``aud`` = the provider's DID (only its own data plane accepts it),
``sub`` = the consumer's DID, ``transfer`` and ``agreement`` ids, ``exp``,
``iat`` and a unique ``jti``. The provider remembers the ``jti`` of the one
token valid now, so a refresh (which issues a new pair) retires the old
token at once: a replay of it after refresh is refused.

A refresh token is a second JWS of kind ``refresh``, bound to the same
transfer and to the access token it was issued with, living longer.

Verification returns the claims or raises ``DataTokenError`` whose
``reason`` says which check failed; state checks (is the transfer STARTED,
is this the current jti) belong to the caller, who holds the row.
"""

from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import OKPKey

from identity.errors import TokenRejected
from identity.tokens import read_unverified

warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

ALGORITHM = "EdDSA"
ACCESS = "access"
REFRESH = "refresh"
DEFAULT_ACCESS_LIFETIME_SECONDS = 600
REFRESH_LIFETIME_SECONDS = 24 * 3600


class DataTokenError(Exception):
    """A data token was refused; ``reason`` is a short code, the message the explanation."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class DataToken:
    kind: str  # ACCESS or REFRESH
    transfer_id: str
    agreement_id: str
    consumer: str
    jti: str
    expires_at: int
    access_jti: str | None = None  # a refresh token: the access token it was issued with


@dataclass(frozen=True)
class IssuedPair:
    access_token: str
    refresh_token: str
    access: DataToken
    expires_in: int


def _issue(
    key: Ed25519PrivateKey, issuer: str, kind: str, claims: dict[str, str], lifetime: int, now: float
) -> tuple[str, str, int]:
    issued_at = int(now)
    jti = uuid.uuid4().hex
    body = {
        "iss": issuer,
        "aud": issuer,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "jti": jti,
        "kind": kind,
        **claims,
    }
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": f"{issuer}#key-1"}
    token = jwt.encode(header, body, OKPKey.import_key(key), algorithms=[ALGORITHM])
    return token, jti, issued_at + lifetime


def issue_pair(
    key: Ed25519PrivateKey,
    issuer: str,
    *,
    transfer_id: str,
    agreement_id: str,
    consumer: str,
    lifetime: int = DEFAULT_ACCESS_LIFETIME_SECONDS,
    now: float | None = None,
) -> IssuedPair:
    """A new access token and the refresh token that goes with it."""
    moment = time.time() if now is None else now
    bound = {"sub": consumer, "transfer": transfer_id, "agreement": agreement_id}
    access, jti, expires_at = _issue(key, issuer, ACCESS, bound, lifetime, moment)
    refresh, _, _ = _issue(
        key, issuer, REFRESH, {**bound, "access": jti}, max(lifetime, REFRESH_LIFETIME_SECONDS), moment
    )
    return IssuedPair(
        access,
        refresh,
        DataToken(ACCESS, transfer_id, agreement_id, consumer, jti, expires_at),
        lifetime,
    )


def _claim(claims: dict[str, object], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise DataTokenError("claims", f"the token has no '{name}' claim")
    return value


def verify(
    token: str, public_key: Ed25519PublicKey, issuer: str, kind: str = ACCESS, *, now: float | None = None
) -> DataToken:
    """The claims of a token this provider issued, of ``kind``, not expired; else DataTokenError."""
    try:
        header, claims = read_unverified(token)
    except TokenRejected as exc:
        raise DataTokenError("malformed", str(exc)) from None
    if header.get("alg") != ALGORITHM or any(k in header for k in ("crit", "jwk", "jku", "x5u")):
        raise DataTokenError("algorithm", "the token is not an EdDSA token issued by this connector")
    try:
        jwt.decode(token, OKPKey.import_key(public_key), algorithms=[ALGORITHM])
    except (JoseError, ValueError):
        raise DataTokenError(
            "signature", "the token's signature does not verify: it was not issued here"
        ) from None
    if claims.get("iss") != issuer or claims.get("aud") != issuer:
        raise DataTokenError("audience", f"the token was not issued by {issuer} for its data plane")
    if claims.get("kind") != kind:
        raise DataTokenError("kind", f"this needs a{'n' if kind == ACCESS else ''} {kind} token")
    expires_at = claims.get("exp")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int):
        raise DataTokenError("claims", "the token has no 'exp' claim")
    if (time.time() if now is None else now) >= expires_at:
        raise DataTokenError("expired", "the token has expired; refresh it")
    return DataToken(
        kind,
        _claim(claims, "transfer"),
        _claim(claims, "agreement"),
        _claim(claims, "sub"),
        _claim(claims, "jti"),
        expires_at,
        _claim(claims, "access") if kind == REFRESH else None,
    )
