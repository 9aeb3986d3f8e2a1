"""Fetching a member's catalog over DSP (the consumer side).

Only trust-list members are called, and only at the DSP URL registered for
them: a caller cannot make the connector send requests (with its identity)
to an address of its choosing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from sqlmodel import Session

from catalog.jsonld import DSPACE_CONTEXT_URL
from catalog.queryspec import QuerySpec
from catalog.vocabulary import DSP_PROTOCOL as DSP_PROTOCOL  # re-exported for callers
from identity.peer_client import PeerClient, ResponseTooLarge
from identity.trustlist import MemberView, get_member

MAX_REMOTE_BYTES = 32 * 1024 * 1024


class RemoteCatalogError(Exception):
    """The counter-party could not be asked, or answered with an error."""

    def __init__(
        self, message: str, *, status: int = 502, remote_body: Any = None, remote_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.remote_body = remote_body
        self.remote_status = remote_status  # the counter-party's HTTP status, when it answered


class UnknownCounterPartyError(ValueError):
    """The counter-party is not a member, or not at that address."""


@dataclass(frozen=True)
class RemoteResponse:
    status: int
    body: bytes
    link: str | None


def resolve_counter_party(session: Session, counter_party_id: str, address: str | None) -> MemberView:
    member = get_member(session, counter_party_id)
    if member is None:
        raise UnknownCounterPartyError(f"{counter_party_id} is not a member of this data space")
    if address is not None and address.rstrip("/") != member.dsp_url.rstrip("/"):
        raise UnknownCounterPartyError(
            f"counterPartyAddress {address} is not the DSP address registered for {counter_party_id} ({member.dsp_url})"
        )
    return member


async def _call(
    client: PeerClient, member: MemberView, method: str, url: str, json: Any = None
) -> RemoteResponse:
    try:
        response = await client.request(member.did, method, url, json=json, max_bytes=MAX_REMOTE_BYTES)
    except ResponseTooLarge:  # stopped while reading: never held more than the limit
        raise RemoteCatalogError(f"{member.did} sent more than {MAX_REMOTE_BYTES} bytes") from None
    except httpx.HTTPError as exc:
        raise RemoteCatalogError(f"{member.did} at {member.dsp_url} could not be reached: {exc}") from None
    body = response.content
    if response.status_code != 200:
        try:
            remote: Any = response.json()
        except ValueError:
            remote = body[:500].decode(errors="replace")
        raise RemoteCatalogError(
            f"{member.did} answered HTTP {response.status_code}",
            status=502,
            remote_body=remote,
            remote_status=response.status_code,
        )
    return RemoteResponse(response.status_code, body, response.headers.get("link"))


async def fetch_catalog(client: PeerClient, member: MemberView, spec: QuerySpec) -> RemoteResponse:
    message = {
        "@context": [DSPACE_CONTEXT_URL],
        "@type": "CatalogRequestMessage",
        "filter": [c.as_json() for c in spec.criteria],
    }
    url = f"{member.dsp_url}/catalog/request?{urlencode({'offset': spec.offset, 'limit': min(spec.limit, 500)})}"
    return await _call(client, member, "POST", url, json=message)


async def fetch_dataset(client: PeerClient, member: MemberView, dataset_id: str) -> RemoteResponse:
    return await _call(
        client, member, "GET", f"{member.dsp_url}/catalog/datasets/{quote(dataset_id, safe='')}"
    )
