"""Operator sessions and CSRF tokens, signed with keys derived from the management API key.

A session token is ``EXPIRES.NONCE.SIGNATURE``: the signature is an HMAC-SHA256
over ``EXPIRES.NONCE`` with a key derived from the API key, so nothing is stored
on the server, and changing the API key ends every session at once. The CSRF
token of a form is an HMAC of the session token under a second derived key: a
page from another site cannot compute it, and it changes with every sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from runtime.forms import same_secret

SESSION_LIFETIME_SECONDS = 8 * 60 * 60
_SESSION_PURPOSE = b"tessera operator pages: session v1"
_CSRF_PURPOSE = b"tessera operator pages: csrf v1"


def _derive(api_key: str, purpose: bytes) -> bytes:
    return hmac.new(api_key.encode(), purpose, hashlib.sha256).digest()


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class SessionSigner:
    """Issues and checks session and CSRF tokens for one management API key."""

    def __init__(
        self,
        api_key: str,
        *,
        lifetime: int = SESSION_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session_key = _derive(api_key, _SESSION_PURPOSE)
        self._csrf_key = _derive(api_key, _CSRF_PURPOSE)
        self._lifetime = lifetime
        self._clock = clock

    @property
    def lifetime(self) -> int:
        return self._lifetime

    def issue(self) -> str:
        body = f"{int(self._clock()) + self._lifetime}.{secrets.token_urlsafe(16)}"
        return f"{body}.{_mac(self._session_key, body)}"

    def is_valid(self, token: str | None) -> bool:
        if not token or len(token) > 256:
            return False
        body, _, signature = token.rpartition(".")
        expires, _, nonce = body.partition(".")
        if not (expires.isdigit() and nonce and signature):
            return False
        if not same_secret(signature, _mac(self._session_key, body)):
            return False
        now = self._clock()
        return now < int(expires) <= now + self._lifetime

    def csrf_for(self, session_token: str) -> str:
        return _mac(self._csrf_key, session_token)

    def csrf_matches(self, session_token: str, supplied: str | None) -> bool:
        return bool(supplied) and same_secret(supplied or "", self.csrf_for(session_token))
