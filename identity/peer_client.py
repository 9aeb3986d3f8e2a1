"""Calling peers: every request carries a fresh self-issued token for its receiver."""

from __future__ import annotations

import json as jsonlib
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from identity.did import KEY_FRAGMENT, did_from_document_url
from identity.errors import DidError
from identity.peer_http import (
    ENCODING_HEADERS,
    MAX_RESPONSE_BYTES,
    PeerSessions,
    ResponseTooLarge,
    check_declared,
    check_read,
)
from identity.tokens import issue_token

MAX_DID_DOCUMENT_BYTES = 64 * 1024

__all__ = ["MAX_RESPONSE_BYTES", "PeerClient", "ResponseTooLarge", "fetch_did_document"]


class PeerClient:
    """Requests to peers, each with a fresh token for its receiver.

    Over the network it speaks HTTP/1.1 through aiohttp (keep-alive pool per loop); a test can
    hand it an ``httpx`` transport instead, to reach in-process apps. Either way the answer is an
    ``httpx.Response`` and every failure an ``httpx.HTTPError``, so callers see one interface.
    """

    def __init__(
        self,
        did: str,
        key: Ed25519PrivateKey,
        *,
        lifetime: int = 120,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.did = did
        self._key = key
        self._lifetime = lifetime
        self._client = (
            httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
            if transport is not None
            else None
        )
        self._sessions = PeerSessions(timeout)

    def authorization_for(self, audience: str) -> str:
        token = issue_token(
            self._key, self.did, audience, key_id=f"{self.did}#{KEY_FRAGMENT}", lifetime=self._lifetime
        )
        return f"Bearer {token}"

    async def request(
        self,
        audience: str,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> httpx.Response:
        """``json`` or a URL-encoded form ``data`` as the body (never secrets in the URL).

        The answer is read whole, but never more than ``max_bytes`` of it (after content decoding,
        so a compressed bomb is stopped too): a peer that sends more gets ``ResponseTooLarge``, an
        ``httpx.HTTPError`` like any other failed exchange.
        """
        merged = {"Authorization": self.authorization_for(audience), **(headers or {})}
        if self._client is not None:
            return await self._through_transport(self._client, method, url, json, data, merged, max_bytes)
        content, content_type = _encoded_body(json, data)
        if content_type is not None and not any(name.lower() == "content-type" for name in merged):
            merged["Content-Type"] = content_type
        request = httpx.Request(method, url, headers=merged, content=content)
        return await self._sessions.exchange(request, merged, max_bytes)

    async def _through_transport(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        json: Any,
        data: dict[str, str] | None,
        headers: dict[str, str],
        max_bytes: int,
    ) -> httpx.Response:
        request = client.build_request(method, url, json=json, data=data, headers=headers)
        response = await client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            check_declared(declared, max_bytes, request)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                check_read(len(body), max_bytes, request)
        finally:
            await response.aclose()
        # The body as read (decoded): the headers that described its encoding no longer apply.
        kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in ENCODING_HEADERS]
        return httpx.Response(response.status_code, headers=kept, content=bytes(body), request=request)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await self._sessions.aclose()


def _encoded_body(json: Any, data: dict[str, str] | None) -> tuple[bytes, str | None]:
    """The body as httpx would encode it: compact UTF-8 JSON, or a URL-encoded form."""
    if json is not None:
        text = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode(), "application/json"
    if data is not None:
        return urlencode(data).encode(), "application/x-www-form-urlencoded"
    return b"", None


def fetch_did_document(
    url: str, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
) -> tuple[str, Any]:
    """Fetch the DID document an operator pointed us at; return (expected DID, document).

    Only an operator supplies this URL (never a peer). Redirects are not
    followed, so the document's id must match the URL actually asked.
    """
    expected = did_from_document_url(url)
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, transport=transport) as client,
            client.stream(
                "GET", url, headers={"Accept": "application/did+json, application/json"}
            ) as response,
        ):
            if response.status_code != 200:
                raise DidError(f"{url} answered HTTP {response.status_code}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_DID_DOCUMENT_BYTES:
                    raise DidError(f"{url} sent more than {MAX_DID_DOCUMENT_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise DidError(f"{url} could not be fetched: {exc}") from None
    try:
        return expected, jsonlib.loads(body)
    except ValueError:
        raise DidError(f"{url} did not return JSON") from None
