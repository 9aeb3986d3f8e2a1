"""Reading a data address as stored by the catalog (expanded JSON-LD) or written by hand (bare keys).

``plain_address`` gives EDC's bare keys (``type``, ``baseUrl``, ``path``, ...) with single
values unwrapped, whichever form it was given in. ``redacted`` drops the upstream
credentials, for anything shown outside the provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from catalog.jsonld import EDC_NS, compact_iri, compact_node_with

# Fields that hold or name upstream credentials: kept server-side, never returned or logged.
SECRET_FIELDS = frozenset({"authKey", "authCode", "secretName", "password", "username", "authorization"})


def plain_address(address: Mapping[str, Any]) -> dict[str, Any]:
    """The data address with EDC bare keys and plain values."""
    expanded = any(isinstance(key, str) and key.startswith(EDC_NS) for key in address)
    if not expanded:
        return {k: v for k, v in address.items() if k not in ("@context", "@id")}
    compacted = compact_node_with(dict(address), compact_iri)
    compacted.pop("@id", None)
    return compacted


def text_field(address: Mapping[str, Any], name: str) -> str | None:
    """A field as text (None when absent or blank); numbers are written as text."""
    value = address.get(name)
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value if value.strip() else None
    return None


def redacted(address: Mapping[str, Any]) -> dict[str, Any]:
    """The plain address without credentials (``header:*`` fields included)."""
    plain = plain_address(address)
    return {k: v for k, v in plain.items() if k not in SECRET_FIELDS and not k.lower().startswith("header:")}
