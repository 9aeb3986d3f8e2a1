"""Authenticating peer requests: the receiving side of self-issued tokens.

``PeerAuthenticator.authenticate`` runs every check (shape, algorithm,
membership, signature, claims) before it records the token id, so a rejected
request changes nothing. ``authenticated_peer`` is the FastAPI dependency.
``check`` and ``record`` are the two halves, for a handler that records the
token id in the transaction that applies the request (one thread hand-off
and one commit instead of two); ``PeerInTransaction`` puts them together.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy import Connection, Engine, bindparam, event, select
from sqlmodel import Session

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


class PeerInTransaction:
    """Peer authentication whose token record joins the transaction that applies the request.

    For a handler that authenticates, applies and records the token in one worker-thread hand-off
    and one commit (the dependency ``authenticated_peer`` takes a hand-off and a commit of its
    own): the DSP negotiation messages. Same checks, same order of answers: a bad token is a 401
    before anything else; a replayed one is a 401 even when the message would be refused; a
    refused message still uses up its token, recorded on its own after the rollback.
    """

    def __init__(self, request: Request, session: Session) -> None:
        self._authenticator: PeerAuthenticator = request.app.state.peer_authenticator
        self._session = session
        try:
            self._verified: Verified = self._authenticator.check(
                session.connection(), request.headers.get("authorization")
            )
        except TokenRejected as exc:
            raise PeerAuthError(exc.reason, str(exc)) from None
        self._at_commit = False
        request.state.peer = self.peer  # the request log names the peer

    @property
    def peer(self) -> Peer:
        return self._verified.peer

    def record_at_commit(self) -> None:
        """Record the token in the commit that applies the message, first thing in it. Not earlier:
        on SQLite a write takes the writer's lock until the commit, which nothing may hold while the
        handler waits (``runtime.outbox.settle``), nor longer than the commit's own writes need."""
        self._at_commit = True
        event.listen(self._session, "before_commit", self._before_commit)

    def _before_commit(self, _session: Session) -> None:
        if self._at_commit:
            self._at_commit = False
            self._record()

    def _record(self) -> None:
        try:
            self._authenticator.record(self._session.connection(), self._verified)
        except TokenRejected as exc:
            raise PeerAuthError(exc.reason, str(exc)) from None

    def finished(self) -> None:
        """The message is applied: if nothing was committed (an initial request sent again, answered
        as the first time), record the token now."""
        if self._at_commit:
            self._at_commit = False
            self._record()
            self._session.commit()

    def refused(self) -> None:
        """The message is refused: roll back what it did, keep the token used up."""
        self._at_commit = False
        self._session.rollback()
        self._session.expunge_all()  # this commit saves the token alone: no row rides along with it
        self._record()
        self._session.commit()
