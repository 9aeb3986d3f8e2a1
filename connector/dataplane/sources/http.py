"""HttpData sources: an HTTP upstream, as EDC's ``HttpData`` data address describes it.

The address fixes ``baseUrl``, ``path``, ``queryParams``, ``method`` (and ``body`` with
``contentType``). The consumer's pull may add a sub-path, query parameters, its own method
or a body, each only where the matching flag (``proxyPath``, ``proxyQueryParams``,
``proxyMethod``, ``proxyBody``) is "true"; otherwise the pull is refused (400, or 405 for a
method). A proxied path can never leave ``baseUrl``: dot segments, backslashes and encoded
slashes are refused, and the composed URL is checked to lie under the base.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

import httpx

from connector.dataplane.sources.address import text_field
from connector.dataplane.sources.base import (
    AddressError,
    ConsumerRequest,
    ConsumerRequestRefused,
    RangeNotSupported,
    Source,
    SourceConfig,
    flag,
)
from connector.dataplane.sources.ranges import ByteRange
from connector.dataplane.sources.upstream import (
    base_url_of,
    credential_headers,
    is_under,
    status_failure,
    upstream_client,
    upstream_failure,
)

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


def safe_sub_path(path: str) -> str:
    """A consumer's sub-path, checked so that joining it to the base cannot climb out of it."""
    if not _PATH_CHARS.fullmatch(path):
        raise ConsumerRequestRefused("the requested path has characters that are not allowed")
    decoded = unquote(path)
    if "\\" in decoded or "\x00" in decoded or re.search(r"%2f|%5c", path, re.IGNORECASE):
        raise ConsumerRequestRefused("the requested path has characters that are not allowed")
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise ConsumerRequestRefused("the requested path must not contain '.' or '..' segments")
    return path.strip("/")


def _query_of(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, str):
        return parse_qsl(value.lstrip("?"), keep_blank_values=True)
    if isinstance(value, Mapping):
        return [(str(k), str(v)) for k, v in value.items() if not str(k).startswith("@")]
    raise AddressError("queryParams must be a query string or an object")


def _join(base: str, *parts: str) -> str:
    url = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            url += "/" + part
    return url


class HttpSource(Source):
    def __init__(self, response: httpx.Response, client: httpx.AsyncClient, media_type: str) -> None:
        self._response = response
        self._client = client
        self.media_type = media_type
        encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        length = response.headers.get("content-length")
        self.size = int(length) if length and length.isdigit() and not encoded else None

    async def chunks(self, byte_range: ByteRange | None = None) -> AsyncIterator[bytes]:
        if byte_range is not None:
            raise RangeNotSupported("an HttpData source serves no byte ranges")
        try:
            async for (
                data
            ) in self._response.aiter_bytes():  # as they arrive (a chunk size would wait to fill it)
                yield data
        except httpx.HTTPError as exc:
            raise upstream_failure(exc) from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()
        await self._client.aclose()


def build_upstream_request(
    address: Mapping[str, Any], config: SourceConfig, request: ConsumerRequest
) -> tuple[str, str, list[tuple[str, str]], bytes | None, dict[str, str]]:
    """(method, url, query, body, headers) of the upstream request, or ConsumerRequestRefused."""
    base = base_url_of(address)
    url = _join(base, text_field(address, "path") or "")
    if request.path.strip("/"):
        if not flag(address.get("proxyPath")):
            raise ConsumerRequestRefused("this asset does not accept a sub-path (proxyPath is not enabled)")
        url = _join(url, safe_sub_path(request.path))
    if not is_under(url, base):
        raise ConsumerRequestRefused("the requested path leaves the asset's base URL")
    query = _query_of(address.get("queryParams"))
    if request.query:
        if not flag(address.get("proxyQueryParams")):
            raise ConsumerRequestRefused(
                "this asset does not accept query parameters (proxyQueryParams is not enabled)"
            )
        query += [(str(k), str(v)) for k, v in request.query]
    method = (text_field(address, "method") or "GET").upper()
    asked = request.method.upper()
    if flag(address.get("proxyMethod")):
        method = asked
    elif asked not in (method, "HEAD") and not (asked == "GET" and method in METHODS):
        raise ConsumerRequestRefused(f"this asset does not accept {asked} (proxyMethod is not enabled)", 405)
    if method not in METHODS:
        raise ConsumerRequestRefused(f"method {method} is not allowed", 405)
    headers = credential_headers(address, config)
    body: bytes | None = None
    static_body = text_field(address, "body")
    if static_body is not None:
        body = static_body.encode()
        headers["Content-Type"] = text_field(address, "contentType") or "application/octet-stream"
    if request.body:
        if not flag(address.get("proxyBody")):
            raise ConsumerRequestRefused(
                "this asset does not accept a request body (proxyBody is not enabled)"
            )
        if len(request.body) > config.max_proxy_body_bytes:
            raise ConsumerRequestRefused(
                f"the request body is larger than {config.max_proxy_body_bytes} bytes", 413
            )
        body = request.body
        headers["Content-Type"] = request.content_type or "application/octet-stream"
    return method, url, query, body, headers


async def open_http_source(
    address: Mapping[str, Any], config: SourceConfig, request: ConsumerRequest | None
) -> HttpSource:
    method, url, query, body, headers = build_upstream_request(address, config, request or ConsumerRequest())
    client = upstream_client(config)
    try:
        upstream = client.build_request(method, url, params=tuple(query), content=body, headers=headers)
        response = await client.send(upstream, stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        raise upstream_failure(exc) from None
    except BaseException:
        await client.aclose()
        raise
    if response.status_code >= 300:
        await response.aclose()
        await client.aclose()
        raise status_failure(response.status_code)
    media_type = (
        text_field(address, "mediaType") or response.headers.get("content-type") or "application/octet-stream"
    )
    return HttpSource(response, client, media_type)


__all__ = ["HttpSource", "build_upstream_request", "open_http_source", "safe_sub_path"]
