"""What a log entry may say: its kinds, their fields, and the check that no personal data is in clear.

An entry is a JSON object ``{"kind": ..., "time": ..., <fields>}`` written in RFC 8785 (JCS)
form; those bytes are the Merkle leaf. Each kind declares its fields (required or optional,
each with a validator); unknown fields are refused, so nothing reaches the log that a kind
did not declare. Data subjects appear only as counts or as keyed hashes
(``hmac-sha256:<64 hex>``, see ``subject_hash``); free text (reasons, explanations) is
bounded and refused when it contains an e-mail address or a phone number.

New kinds (the transfer process, receipts) are declared with ``register_kind``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAX_ENTRY_BYTES = 64 * 1024
MAX_TEXT = 2000
MAX_ID = 512
MAX_LIST = 1000

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEYED = re.compile(r"^hmac-sha256:[0-9a-f]{64}$")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+?\d[\d ()./-]{7,}\d")
_ID = re.compile(r"^[^\x00-\x1f]{1,512}$")
_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+$")


class EntryError(ValueError):
    """An entry is refused (unknown kind, missing or unknown field, personal data); nothing was written."""


Validator = Callable[[str, Any], None]


def _fail(name: str, what: str) -> EntryError:
    return EntryError(f"field {name!r} must be {what}")


def identifier(name: str, value: Any) -> None:
    """An id, DID or URN: no control characters, at most 512 characters, no e-mail address."""
    if not isinstance(value, str) or not _ID.match(value):
        raise _fail(name, "an identifier (no control characters, at most 512 characters)")
    if _EMAIL.search(value.removeprefix("mailto:")):
        raise EntryError(f"field {name!r} looks like an e-mail address: personal data stays out of the log")


def text(name: str, value: Any) -> None:
    """Free text: bounded, and neither an e-mail address nor a phone number in it."""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _fail(name, f"text of at most {MAX_TEXT} characters")
    if _EMAIL.search(value) or _PHONE.search(value):
        raise EntryError(
            f"field {name!r} contains what looks like an e-mail address or phone number: "
            "personal data stays out of the log"
        )


def sha256_hex(name: str, value: Any) -> None:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise _fail(name, "a SHA-256 digest in lower-case hex")


def count(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise _fail(name, "a whole number between 0 and 2^53")


def flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(name, "true or false")


def jws(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or len(value) > 4096 or not _JWS.match(value)):
        raise _fail(name, "a compact JWS (or null)")


def one_of(*choices: str) -> Validator:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise _fail(name, "one of " + ", ".join(choices))

    return check


def keyed_hashes(name: str, value: Any) -> None:
    """Data subjects: only keyed hashes (``subject_hash``), never identifiers in clear."""
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise _fail(name, f"a list of at most {MAX_LIST} keyed hashes")
    for item in value:
        if not isinstance(item, str) or not _KEYED.match(item):
            raise EntryError(f"field {name!r} holds subjects only as keyed hashes (hmac-sha256:<hex>)")


def identifiers(name: str, value: Any) -> None:
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise _fail(name, f"a list of at most {MAX_LIST} identifiers")
    for item in value:
        identifier(name, item)


def obj(fields: Mapping[str, Validator], required: frozenset[str] = frozenset()) -> Validator:
    """A nested object with its own declared fields."""

    def check(name: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise _fail(name, "an object")
        check_fields(value, fields, required, prefix=f"{name}.")

    return check


def check_fields(
    entry: Mapping[str, Any], fields: Mapping[str, Validator], required: frozenset[str], *, prefix: str = ""
) -> None:
    missing = sorted(required - entry.keys())
    if missing:
        raise EntryError(f"missing field(s): {', '.join(prefix + m for m in missing)}")
    for key, value in entry.items():
        validator = fields.get(key)
        if validator is None:
            raise EntryError(
                f"unknown field {prefix + key!r}: a log entry holds only its kind's declared fields"
            )
        validator(prefix + key, value)


@dataclass(frozen=True)
class EntryKind:
    name: str
    fields: Mapping[str, Validator]
    required: frozenset[str]


KINDS: dict[str, EntryKind] = {}


def register_kind(
    name: str, fields: Mapping[str, Validator], required: frozenset[str] | set[str]
) -> EntryKind:
    """Declare (or re-declare, e.g. in tests) an entry kind."""
    if not re.match(r"^[a-z][a-z0-9.-]{0,63}$", name):
        raise ValueError(f"bad entry kind name {name!r}")
    kind = EntryKind(name, dict(fields), frozenset(required))
    KINDS[name] = kind
    return kind


# ------------------------------------------------------------------ the kinds we log today

AGREEMENT_FINALIZED = "agreement.finalized"
TRANSFER_STARTED = "transfer.started"
TRANSFER_SUSPENDED = "transfer.suspended"
TRANSFER_COMPLETED = "transfer.completed"
TRANSFER_TERMINATED = "transfer.terminated"
REFUSAL = "refusal"

ROLE = one_of("provider", "consumer")

register_kind(
    AGREEMENT_FINALIZED,
    {
        "agreementId": identifier,
        "agreementSha256": sha256_hex,  # of the agreement's RFC 8785 form, signature members left out
        "negotiationId": identifier,
        "provider": identifier,
        "consumer": identifier,
        "dataset": identifier,
        "role": ROLE,  # our side
        "providerSignature": jws,
        "consumerSignature": jws,
    },
    {"agreementId", "agreementSha256", "provider", "consumer", "dataset", "role", "providerSignature"},
)

_POLICY_DECISION = obj({"allowed": flag, "policy": identifier, "explanation": text}, frozenset({"allowed"}))
_CONSENT = obj(
    {"decisionIds": identifiers, "released": count, "withheld": count, "subjects": keyed_hashes},
    frozenset({"decisionIds", "released", "withheld"}),
)
_TRANSFER_FIELDS: dict[str, Validator] = {
    "transferId": identifier,
    "agreementId": identifier,
    "dataset": identifier,
    "counterParty": identifier,
    "role": ROLE,
    "bytes": count,
    "payloadSha256": sha256_hex,
    "records": count,
    "policyDecision": _POLICY_DECISION,
    "consent": _CONSENT,
    "reason": text,
    "format": identifier,
}
_TRANSFER_REQUIRED = {"transferId", "agreementId", "dataset", "counterParty", "role"}
register_kind(TRANSFER_STARTED, _TRANSFER_FIELDS, _TRANSFER_REQUIRED)
register_kind(TRANSFER_SUSPENDED, _TRANSFER_FIELDS, _TRANSFER_REQUIRED | {"reason"})
# The provider's completed entry carries bytes, payloadSha256 and records; the consumer's
# numbers are the provider's signed statement it logs (transfer.receipt).
register_kind(TRANSFER_COMPLETED, _TRANSFER_FIELDS, _TRANSFER_REQUIRED)
register_kind(TRANSFER_TERMINATED, _TRANSFER_FIELDS, _TRANSFER_REQUIRED | {"reason"})

register_kind(
    REFUSAL,
    {
        "subject": one_of("negotiation", "transfer", "catalog"),  # what was refused
        "counterParty": identifier,
        "role": ROLE,
        "dataset": identifier,
        "negotiationId": identifier,
        "transferId": identifier,
        "agreementId": identifier,
        "by": one_of("us", "counter-party", "delivery"),  # who ended it
        "code": identifier,
        "reason": text,
        "policyDecision": _POLICY_DECISION,
    },
    {"subject", "counterParty", "by", "reason"},
)


WITNESS_ALERT = "witness.alert"
register_kind(
    WITNESS_ALERT,
    {
        "member": identifier,  # whose log misbehaved
        "alert": one_of("fork", "shrink", "rewrite"),
        "previousSize": count,
        "previousRoot": identifier,  # base64
        "newSize": count,
        "newRoot": identifier,
        "detail": text,
    },
    {"member", "alert", "previousSize", "previousRoot", "newSize", "newRoot"},
)


# ------------------------------------------------------------------ building entries


# The last second formatted: appends come many to a second, and formatting a date costs more
# than the rest of an entry's canonical form.
_last_second: tuple[int, str] = (-1, "")


def utc_time(epoch_ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC) of epoch milliseconds."""
    global _last_second
    second, millis = divmod(epoch_ms, 1000)
    cached, prefix = _last_second
    if cached != second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (second, prefix)
    return f"{prefix}.{millis:03d}Z"


def canonical_entry(kind: str, fields: Mapping[str, Any], epoch_ms: int) -> bytes:
    """The RFC 8785 bytes of a validated entry; EntryError when it may not be logged."""
    spec = KINDS.get(kind)
    if spec is None:
        raise EntryError(f"unknown entry kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    if "kind" in fields or "time" in fields:
        raise EntryError("'kind' and 'time' are set by the log, not by the caller")
    check_fields(fields, spec.fields, spec.required)
    data = canonical_json({"kind": kind, "time": utc_time(epoch_ms), **fields})
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"the entry is {len(data)} bytes; at most {MAX_ENTRY_BYTES} are logged")
    return data


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(entry: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of a validated entry.

    Validated entries hold only ASCII member names, strings, whole numbers, booleans and null:
    for those, the standard library's sorted compact JSON is byte for byte RFC 8785 (same
    escapes, same member order, no fractions to format) and its C encoder is ten times faster
    than a general canonicaliser. ``tests/test_translog_store.py`` checks the two agree.
    """
    try:
        return _CANONICAL.encode(entry).encode()
    except UnicodeEncodeError:
        raise EntryError("the entry contains text that is not valid Unicode (a lone surrogate)") from None


def sha256_of_json(value: Any) -> str:
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def subject_key(private_key: Ed25519PrivateKey) -> bytes:
    """The participant's secret key for hashing data subjects (derived from its signing key)."""
    raw = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"tessera transfer-log subject key").derive(
        raw
    )


def subject_hash(key: bytes, subject_id: str) -> str:
    """A data subject as the log may name it: a keyed hash nobody without the key can reverse."""
    return "hmac-sha256:" + hmac.new(key, subject_id.encode(), hashlib.sha256).hexdigest()


def redact_text(value: str) -> str:
    """Free text made fit for the log: e-mail addresses and phone numbers masked, length bounded."""
    masked = _PHONE.sub("[redacted]", _EMAIL.sub("[redacted]", value))
    masked = "".join(ch if ch >= " " or ch == "\n" else " " for ch in masked)
    return masked if len(masked) <= MAX_TEXT else masked[: MAX_TEXT - 1] + "…"
