"""Calling peers: every request carries a fresh self-issued token for its receiver."""

from __future__ import annotations

import json as jsonlib
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from identity.did import KEY_FRAGMENT, did_from_document_url
from identity.errors import DidError
from identity.tokens import issue_token

MAX_DID_DOCUMENT_BYTES = 64 * 1024
# What a peer's answer may weigh unless the caller says otherwise (a catalog page is the largest).
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
_ENCODING_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class ResponseTooLarge(httpx.HTTPError):
    """A peer's answer exceeded what the caller reads."""

    def __init__(self, message: str, *, request: httpx.Request) -> None:
        super().__init__(message)
        self.request = request


class PeerClient:
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
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)

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
        request = self._client.build_request(method, url, json=json, data=data, headers=merged)
        response = await self._client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ResponseTooLarge(
                    f"{url} announced {declared} bytes, more than {max_bytes}", request=request
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ResponseTooLarge(f"{url} sent more than {max_bytes} bytes", request=request)
        finally:
            await response.aclose()
        # The body as read (decoded): the headers that described its encoding no longer apply.
        kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _ENCODING_HEADERS]
        return httpx.Response(response.status_code, headers=kept, content=bytes(body), request=request)

    async def aclose(self) -> None:
        await self._client.aclose()


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
