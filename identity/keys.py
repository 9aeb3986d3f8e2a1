"""Ed25519 key pairs: generation, private key files, public JWKs."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from identity.errors import KeyFileError

PRIVATE_KEY_MODE = 0o600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write ``key`` as PKCS#8 PEM, readable by the owner only.

    The file is created with mode 0600 from the start (never world-readable
    for an instant) and refuses to overwrite an existing key.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_KEY_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"private key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"private key file {path} cannot be read: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"private key file {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"private key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_jwk(key: Ed25519PublicKey, kid: str | None = None) -> dict[str, str]:
    """The public key as an OKP JWK (RFC 8037)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def public_key_from_jwk(jwk: Any) -> Ed25519PublicKey:
    """Parse an Ed25519 public JWK, refusing anything else (private parts included)."""
    if not isinstance(jwk, dict):
        raise KeyFileError("a JWK must be a JSON object")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise KeyFileError("only Ed25519 keys are accepted (kty OKP, crv Ed25519)")
    if "d" in jwk:
        raise KeyFileError("the JWK contains a private key ('d'); give the public key only")
    x = jwk.get("x")
    if not isinstance(x, str):
        raise KeyFileError("the JWK has no 'x' member")
    try:
        raw = _b64url_decode(x)
    except (ValueError, TypeError):
        raise KeyFileError("the JWK's 'x' member is not base64url") from None
    if len(raw) != 32:
        raise KeyFileError("the JWK's 'x' member is not a 32-byte Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(raw)


def normalised_public_jwk(jwk: Any) -> dict[str, str]:
    """Validate ``jwk`` and return only its public members (kid kept if present)."""
    key = public_key_from_jwk(jwk)
    kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
    return public_jwk(key, kid)
