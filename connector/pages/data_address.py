"""What of an asset's data address an operator page may show.

A data address can carry credentials (``authCode``, ``header:Authorization``,
a password, a token in a query parameter). The pages show its ``type`` and the
fields that cannot hold one; every field whose name suggests a secret is left
out, counted but never named, and URLs lose any user information and query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from catalog.jsonld import EDC_NS

SECRET_MARKERS = (
    "auth",
    "key",
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "header",
    "cookie",
    "queryparam",
    "private",
    "signature",
)


@dataclass(frozen=True)
class PublicDataAddress:
    type: str
    fields: tuple[tuple[str, str], ...]
    hidden: int


def is_secret_field(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def _plain(value: Any) -> str:
    items = value if isinstance(value, list) else [value]
    texts = []
    for item in items:
        raw = item.get("@value", item.get("@id")) if isinstance(item, dict) else item
        texts.append("" if raw is None else str(raw))
    return ", ".join(texts)


def _without_credentials(text: str) -> str:
    """URLs and paths lose user information and query (either may carry a secret); other text stays."""
    if text.startswith("/"):
        return text.split("?", 1)[0]
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc:
        return text
    try:
        port = parts.port
    except ValueError:
        return "(not shown: not a valid URL)"
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def public_data_address(address: dict[str, Any]) -> PublicDataAddress:
    kind = "unknown"
    fields: list[tuple[str, str]] = []
    hidden = 0
    for key, value in address.items():
        if key.startswith("@"):
            continue
        name = key[len(EDC_NS) :] if key.startswith(EDC_NS) else key
        if name == "type":
            kind = _plain(value)
        elif is_secret_field(name):
            hidden += 1
        else:
            fields.append((name, _without_credentials(_plain(value))))
    return PublicDataAddress(kind, tuple(sorted(fields)), hidden)
