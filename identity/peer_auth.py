"""Authenticating peer requests: the receiving side of self-issued tokens.

``PeerAuthenticator.authenticate`` runs every check (shape, algorithm,
membership, signature, claims) before it records the token id, so a rejected
request changes nothing. ``authenticated_peer`` is the FastAPI dependency.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy import Engine, bindparam, select

from identity.errors import TokenRejected
from identity.replay import ReplayGuard
from identity.tokens import MAX_TOKEN_BYTES, verify_token
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
        try:
            return self._authenticate(authorization)
        except TokenRejected as exc:
            if self._on_reject is not None:
                self._on_reject(exc.reason)
            raise

    def _authenticate(self, authorization: str | None) -> Peer:
        if not authorization:
            raise TokenRejected("missing", "the request has no Authorization header")
        if len(authorization) > MAX_TOKEN_BYTES + 16:
            raise TokenRejected("oversized", f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or " " in token.strip():
            raise TokenRejected("malformed", "the Authorization header must be 'Bearer <token>'")
        # One Core connection for the member lookup and the replay insert: an ORM
        # session and ORM loading cost more than the signature check itself.
        with self._engine.connect() as connection:
            found: dict[str, Any] = {}

            def key_of(issuer: str) -> dict[str, str] | None:
                row = connection.execute(_SELECT_MEMBER, {"did": issuer}).first()
                if row is None:
                    return None
                found["dsp_url"] = row.dsp_url
                found["memberships"] = row.memberships
                jwk: dict[str, str] = json.loads(row.public_jwk)
                return jwk

            verified = verify_token(token.strip(), self._audience, key_of, clock_skew=self._clock_skew)
            if not self._replay.record(connection, verified.issuer, verified.jti, verified.expires_at):
                raise TokenRejected("replayed", "the token has been used before")
        return Peer(
            did=verified.issuer,
            dsp_url=found["dsp_url"],
            memberships=frozenset(json.loads(found["memberships"])),
        )


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
