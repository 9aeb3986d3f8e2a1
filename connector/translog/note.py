"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures and tlog-cosignature/v1 cosignatures.

A note is text ending in a newline, a blank line, then signature lines
``— <key name> base64(key ID || signature)``. A key is known by (name, key ID); the key ID is
SHA-256(name || 0x0A || type || public key)[:4] with type 0x01 for Ed25519 note signatures
and 0x04 for timestamped cosignatures, whose signed message is
``cosignature/v1\\ntime <t>\\n`` followed by the note text and whose signature is
``u64 big-endian timestamp || Ed25519 signature``.

Opening a note: signatures of unknown keys are ignored, a known key's signature must
verify, and at least one known signature must: otherwise ``NoteError``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
MAX_NOTE_BYTES = 64 * 1024
MAX_SIGNATURES = 64  # the spec asks verifiers to accept at least 16
_DASH = "\u2014 "
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A note is malformed, or no known key's signature verifies; the message says which."""


def valid_key_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(name: str, kind: int, public_key: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + raw_public_key(public_key)).digest()[:4]


def verifier_key_string(name: str, kind: int, public_key: Ed25519PublicKey) -> str:
    """The vkey form ``<name>+<hex key ID>+<base64(type || key)>`` an operator can pin."""
    material = base64.b64encode(bytes([kind]) + raw_public_key(public_key)).decode()
    return f"{name}+{key_id(name, kind, public_key).hex()}+{material}"


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    data: bytes  # what follows the key ID

    def line(self) -> str:
        return f"{_DASH}{self.name} {base64.b64encode(self.key_id + self.data).decode()}\n"


@dataclass(frozen=True)
class Note:
    text: str  # ends with a newline; what the signatures cover
    signatures: tuple[Signature, ...]

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def parse_note(raw: str | bytes) -> Note:
    if isinstance(raw, bytes):
        if len(raw) > MAX_NOTE_BYTES:
            raise NoteError(f"the note is longer than {MAX_NOTE_BYTES} bytes")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("the note is not UTF-8") from None
    if len(raw.encode()) > MAX_NOTE_BYTES:
        raise NoteError(f"the note is longer than {MAX_NOTE_BYTES} bytes")
    if _CONTROL.search(raw):
        raise NoteError("the note contains control characters")
    if not raw.endswith("\n"):
        raise NoteError("the note does not end with a newline")
    split = raw.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no blank line before its signatures")
    text, block = raw[: split + 1], raw[split + 2 :]
    lines = block.split("\n")[:-1]
    if not lines:
        raise NoteError("the note has no signatures")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the note has more than {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(_DASH):
            raise NoteError("a signature line does not start with an em dash and a space")
        name, _, encoded = line[len(_DASH) :].partition(" ")
        if not valid_key_name(name) or " " in encoded:
            raise NoteError(f"malformed signature line for key {name[:80]!r}")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise NoteError(f"the signature of {name[:80]!r} is not base64") from None
        if len(data) < 5:
            raise NoteError(f"the signature of {name[:80]!r} is too short")
        signatures.append(Signature(name, data[:4], data[4:]))
    return Note(text, tuple(signatures))


class NoteSigner:
    """Signs note text as ``name`` with an Ed25519 key (signature type 0x01)."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        if not valid_key_name(name):
            raise ValueError(f"{name!r} is not a valid key name (no spaces, no '+')")
        self.name = name
        self._key = key
        self.key_id = key_id(name, ED25519, key.public_key())

    def sign(self, text: str) -> Signature:
        return Signature(self.name, self.key_id, self._key.sign(text.encode()))


@dataclass(frozen=True)
class Verifier:
    """A known key: its name, type (ED25519 or COSIGNATURE_V1) and public key."""

    name: str
    kind: int
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.kind, self.public_key)

    def verify(self, text: str, signature: Signature) -> int | None:
        """None for a note signature; the timestamp for a cosignature. NoteError when it does not verify."""
        try:
            if self.kind == ED25519:
                self.public_key.verify(signature.data, text.encode())
                return None
            if len(signature.data) != 8 + 64:
                raise NoteError(f"the cosignature of {self.name} is not 72 bytes")
            (timestamp,) = struct.unpack(">Q", signature.data[:8])
            self.public_key.verify(signature.data[8:], cosigned_message(text, timestamp))
            return int(timestamp)
        except InvalidSignature:
            raise NoteError(f"the signature of known key {self.name} does not verify") from None


def cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


def cosign(name: str, key: Ed25519PrivateKey, text: str, timestamp: int) -> Signature:
    """A tlog-cosignature/v1 over a checkpoint's text (the note text, signature lines excluded)."""
    if not 0 <= timestamp < 2**63:
        raise ValueError("a cosignature timestamp is between 0 and 2^63 - 1")
    signed = key.sign(cosigned_message(text, timestamp))
    return Signature(
        name, key_id(name, COSIGNATURE_V1, key.public_key()), struct.pack(">Q", timestamp) + signed
    )


@dataclass(frozen=True)
class VerifiedNote:
    note: Note
    verified_by: tuple[str, ...]  # names of the known keys whose signatures verified
    cosigned_at: dict[str, int]  # cosigner name -> its timestamp


def open_note(raw: str | bytes | Note, verifiers: list[Verifier]) -> VerifiedNote:
    """Check a note against the known keys: unknown signatures ignored, every known one verified."""
    note = raw if isinstance(raw, Note) else parse_note(raw)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[str] = []
    cosigned: dict[str, int] = {}
    for signature in note.signatures:
        verifier = known.get((signature.name, signature.key_id))
        if verifier is None:
            continue
        timestamp = verifier.verify(note.text, signature)
        verified.append(signature.name)
        if timestamp is not None:
            cosigned[signature.name] = timestamp
    if not verified:
        names = ", ".join(sorted({v.name for v in verifiers})) or "none"
        raise NoteError(f"the note has no signature from a known key (known: {names})")
    return VerifiedNote(note, tuple(verified), cosigned)
