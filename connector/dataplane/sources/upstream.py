"""What the HTTP-based sources share: the client, upstream credentials, errors, URL confinement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from connector.dataplane.sources.address import text_field
from connector.dataplane.sources.base import AddressError, SourceConfig, UpstreamError, UpstreamTimeout


def upstream_client(config: SourceConfig) -> httpx.AsyncClient:
    """A client that follows no redirect (a redirect could lead anywhere) and times every wait out."""
    timeout = httpx.Timeout(
        connect=config.connect_timeout,
        read=config.read_timeout,
        write=config.read_timeout,
        pool=config.connect_timeout,
    )
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)


def base_url_of(address: Mapping[str, Any]) -> str:
    base = text_field(address, "baseUrl")
    parts = urlsplit(base) if base else None
    if base is None or parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressError("the data address needs baseUrl, an http(s) URL")
    if parts.username or parts.password:
        raise AddressError("the data address's baseUrl must not carry credentials; use authKey/authCode")
    return base


def credential_headers(address: Mapping[str, Any], config: SourceConfig) -> dict[str, str]:
    """Headers that authenticate to the upstream: ``authKey``/``authCode``, ``secretName``, ``header:*``.

    These stay on the provider: they are sent to the upstream only, never returned or logged.
    """
    headers: dict[str, str] = {}
    for key, value in address.items():
        if key.lower().startswith("header:") and isinstance(value, str) and key[7:].strip():
            headers[key[7:].strip()] = value
    code = text_field(address, "authCode")
    secret_name = text_field(address, "secretName")
    if code is None and secret_name is not None:
        code = config.secrets(secret_name)
        if code is None:
            raise AddressError("the secret the data address names is not available on this connector")
    if code is not None:
        headers[text_field(address, "authKey") or "Authorization"] = code
    return headers


def is_under(url: str, base: str) -> bool:
    """Whether ``url`` has ``base``'s scheme, host and port and a path inside ``base``'s path."""
    try:
        target, root = httpx.URL(url), httpx.URL(base)
    except (httpx.InvalidURL, TypeError):
        return False
    if (target.scheme, target.host, target.port) != (root.scheme, root.host, root.port):
        return False
    if target.userinfo:
        return False
    root_path = root.path.rstrip("/") + "/"
    return target.path == root.path or (target.path.startswith(root_path) and "/../" not in target.path + "/")


def upstream_failure(exc: httpx.HTTPError, what: str = "the upstream") -> UpstreamError:
    """The consumer-safe error for a failed upstream exchange (no URL, no credential)."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{what} did not answer in time")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError(f"{what} cannot be reached")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return UpstreamError(f"{what} sent something that is not a valid HTTP answer")
    return UpstreamError(f"{what} failed ({type(exc).__name__})")


def status_failure(status: int, what: str = "the upstream") -> UpstreamError:
    if 300 <= status < 400:
        return UpstreamError(f"{what} answered with a redirect ({status}); redirects are not followed")
    return UpstreamError(f"{what} answered {status}")
