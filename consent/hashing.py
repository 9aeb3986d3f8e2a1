"""Hashes of the consent model: content hashes (RFC 8785 + SHA-256) and keyed subject pseudonyms.

A subject pseudonym is ``hex(HMAC-SHA256(key, utf8(identifier.strip())))`` with the controller's
32-byte pseudonymisation key: the consent service and the controller's connector compute the same
value; without the key a card number cannot be recovered or tested from it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Any

import rfc8785

SUBJECT_HASH = re.compile(r"^[0-9a-f]{64}$")
KEY_BYTES = 32


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) bytes of ``value``."""
    return rfc8785.dumps(value)


def content_hash(value: Any) -> str:
    """Hex SHA-256 of the canonical form of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def new_pseudonym_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).rstrip(b"=").decode("ascii")


def decode_pseudonym_key(key: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("the pseudonymisation key is not base64url") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"the pseudonymisation key must be {KEY_BYTES} bytes")
    return raw


def subject_hash(key: str | bytes, identifier: str) -> str:
    """The pseudonym of a subject identifier under a controller's key."""
    raw_key = key if isinstance(key, bytes) else decode_pseudonym_key(key)
    return hmac.new(raw_key, identifier.strip().encode("utf-8"), hashlib.sha256).hexdigest()
