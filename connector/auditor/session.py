"""Auditor sessions: signed cookies that name the auditor, checked against its account on every request.

A token is ``EXPIRES.NONCE.SIGNATURE.NAME``; the signature is an HMAC-SHA256 over the
name, the expiry, the nonce and the account's session salt, with a key derived from the
participant's signing key — not from the management API key, so operator and auditor
credentials share nothing, and an operator session token is never an auditor's (or the
reverse). Removing the account or giving it a new password changes or drops the salt,
which ends every session at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from connector.auditor.accounts import NAME_PATTERN
from runtime.forms import same_secret

SESSION_LIFETIME_SECONDS = 4 * 60 * 60
MAX_TOKEN = 400


def _derive(key: Ed25519PrivateKey, purpose: bytes) -> bytes:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=purpose).derive(raw)


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def token_name(token: str | None) -> str | None:
    """The auditor a token claims to be (unchecked), or None when it is not shaped like one."""
    if not token or len(token) > MAX_TOKEN:
        return None
    parts = token.split(".", 3)
    if len(parts) != 4 or not NAME_PATTERN.match(parts[3]):
        return None
    return parts[3]


class AuditorSessions:
    """Issues and checks auditor session tokens and their CSRF tokens."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        lifetime: int = SESSION_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session_key = _derive(key, b"tessera audit pages: session v1")
        self._csrf_key = _derive(key, b"tessera audit pages: csrf v1")
        self.lifetime = lifetime
        self._clock = clock

    def _signature(self, name: str, expires: str, nonce: str, salt: str) -> str:
        return _mac(self._session_key, f"{name}\n{expires}\n{nonce}\n{salt}")

    def issue(self, name: str, salt: str) -> str:
        expires, nonce = str(int(self._clock()) + self.lifetime), secrets.token_urlsafe(16)
        return f"{expires}.{nonce}.{self._signature(name, expires, nonce, salt)}.{name}"

    def is_valid(self, token: str, salt: str) -> bool:
        """True when the token is signed for this account's current salt and has not expired."""
        name = token_name(token)
        if name is None:
            return False
        expires, nonce, signature, _ = token.split(".", 3)
        if not (expires.isdigit() and nonce and signature):
            return False
        if not same_secret(signature, self._signature(name, expires, nonce, salt)):
            return False
        now = self._clock()
        return now < int(expires) <= now + self.lifetime

    def csrf_for(self, token: str) -> str:
        return _mac(self._csrf_key, token)

    def csrf_matches(self, token: str, supplied: str | None) -> bool:
        return bool(supplied) and same_secret(supplied or "", self.csrf_for(token))
