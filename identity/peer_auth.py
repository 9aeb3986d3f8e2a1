"""Authenticating peer requests: the receiving side of self-issued tokens.

``PeerAuthenticator.authenticate`` runs every check (shape, algorithm,
membership, signature, claims) before it records the token id, so a rejected
request changes nothing. ``authenticated_peer`` is the FastAPI dependency.
``check`` and ``record`` are the two halves, for a handler that records the
token id in the transaction that applies the request (one thread hand-off
and one commit instead of two).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy import Connection, Engine, bindparam, select

from identity.errors import TokenRejected
from identity.replay import ReplayGuard
from identity.tokens import MAX_TOKEN_BYTES, VerifiedToken, verify_token
from identity.trustlist import Member

_MEMBERS = Member.metadata.tables["trust_list_member"]
_SELECT_MEMBER = select(_MEMBERS.c.dsp_url, _MEMBERS.c.public_jwk, _MEMBERS.c.memberships).where(
    _MEMBERS.c.did == bindparam("did")
)


@dataclass(frozen=True)
class Peer:
    """A trust-list member whose request carried a valid token."""

    did: str
    dsp_url: str
    memberships: frozenset[str] = frozenset()
    # The pinned key the token verified with, for a handler that checks more of the peer's
    # signatures in the same request (an agreement's); not part of the peer's identity.
    public_jwk: dict[str, str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Verified:
    """A token that passed every check but the replay one (``PeerAuthenticator.record``)."""

    peer: Peer
    token: VerifiedToken


class PeerAuthenticator:
    def __init__(
        self,
        engine: Engine,
        audience: str,
        *,
        clock_skew: int,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._audience = audience
        self._clock_skew = clock_skew
        self._replay = ReplayGuard()
        self._on_reject = on_reject

    def authenticate(self, authorization: str | None) -> Peer:
        """Every check, then the token id recorded (committed): the peer, or ``TokenRejected``."""
        # One Core connection for the member lookup and the replay insert: an ORM
        # session and ORM loading cost more than the signature check itself.
        with self._engine.connect() as connection:
            verified = self.check(connection, authorization)
            self.record(connection, verified, commit=True)
        return verified.peer

    def check(self, connection: Connection, authorization: str | None) -> Verified:
        """Every check but the replay one; nothing is written. ``record`` completes it."""
        try:
            return self._check(connection, authorization)
        except TokenRejected as exc:
            self._rejected(exc)
            raise

    def record(self, connection: Connection, verified: Verified, *, commit: bool = False) -> None:
        """Record the token id; ``TokenRejected`` when it was seen before. Without ``commit`` it joins
        the caller's transaction: the caller commits it with what the request changed, or, when the
        request is refused, rolls back and records it again on its own (``record`` with ``commit``)."""
        token = verified.token
        if not self._replay.record(connection, token.issuer, token.jti, token.expires_at, commit=commit):
            exc = TokenRejected("replayed", "the token has been used before")
            self._rejected(exc)
            raise exc

    def _rejected(self, exc: TokenRejected) -> None:
        if self._on_reject is not None:
            self._on_reject(exc.reason)

    def _check(self, connection: Connection, authorization: str | None) -> Verified:
        if not authorization:
            raise TokenRejected("missing", "the request has no Authorization header")
        if len(authorization) > MAX_TOKEN_BYTES + 16:
            raise TokenRejected("oversized", f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or " " in token.strip():
            raise TokenRejected("malformed", "the Authorization header must be 'Bearer <token>'")
        found: dict[str, Any] = {}

        def key_of(issuer: str) -> dict[str, str] | None:
            row = connection.execute(_SELECT_MEMBER, {"did": issuer}).first()
            if row is None:
                return None
            found["dsp_url"] = row.dsp_url
            found["memberships"] = row.memberships
            jwk: dict[str, str] = json.loads(row.public_jwk)
            found["public_jwk"] = jwk
            return jwk

        verified = verify_token(token.strip(), self._audience, key_of, clock_skew=self._clock_skew)
        peer = Peer(
            did=verified.issuer,
            dsp_url=found["dsp_url"],
            memberships=frozenset(json.loads(found["memberships"])),
            public_jwk=found["public_jwk"],
        )
        return Verified(peer, verified)


class PeerAuthError(Exception):
    """Raised by the dependency; the app turns it into a 401 with a JSON body."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def authenticated_peer(request: Request) -> Peer:
    """FastAPI dependency: the authenticated trust-list member, or a 401."""
    authenticator: PeerAuthenticator = request.app.state.peer_authenticator
    try:
        peer = authenticator.authenticate(request.headers.get("authorization"))
    except TokenRejected as exc:
        raise PeerAuthError(exc.reason, str(exc)) from None
    request.state.peer = peer
    return peer
