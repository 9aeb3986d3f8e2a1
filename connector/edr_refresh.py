"""The consumer renews the data token of a pull transfer (what the EDR endpoints' refresh builds on).

The provider's start message named a ``refreshEndpoint``; it is called only
when it lies in the provider's registered address space (a connector never
calls an arbitrary URL a peer hands it), with our peer token and the refresh
token. The new pair replaces the stored one: the EDR always holds the token
that works now.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from connector.dsp.transfer_messages import endpoint_properties
from connector.transfer_models import TransferRow
from connector.transfers import TransferError, edr_of, in_address_space
from runtime.service import ServiceCore


def _stored(core: ServiceCore, transfer_id: str) -> tuple[dict[str, Any], str, str]:
    with Session(core.engine) as session:
        row = session.get(TransferRow, transfer_id)
        address = edr_of(row) if row is not None else None
        if row is None or address is None:
            raise TransferError(404, f"transfer {transfer_id} holds no data address to refresh")
        return address, row.counter_party_did, row.counter_party_address


def _replace(core: ServiceCore, transfer_id: str, address: dict[str, Any]) -> None:
    with Session(core.engine) as session:
        row = session.get(TransferRow, transfer_id, with_for_update=True)
        if row is not None:
            row.data_address = json.dumps(address)
            session.add(row)
            session.commit()


async def refresh_edr(core: ServiceCore, transfer_id: str) -> dict[str, Any]:
    """A fresh data address for one of our pull transfers, stored and returned; TransferError if not."""
    address, provider, provider_address = await run_in_threadpool(_stored, core, transfer_id)
    properties = endpoint_properties(address)
    endpoint, refresh_token = properties.get("refreshEndpoint"), properties.get("refreshToken")
    if endpoint is None or refresh_token is None:
        raise TransferError(409, "the provider's data address offers no refresh")
    if not in_address_space(endpoint, provider_address):
        raise TransferError(409, f"the refresh endpoint {endpoint} is outside the provider's address space")
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    try:
        response = await core.peer_client.request(
            provider, "POST", endpoint, data=form, headers={"Accept": "application/json"}
        )
    except httpx.HTTPError as exc:
        raise TransferError(502, f"the provider could not be reached: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise TransferError(
            409, f"the provider refused the refresh: HTTP {response.status_code} {response.text[:300]}"
        )
    try:
        renewed = response.json()
        access, refresh, expires = renewed["access_token"], renewed["refresh_token"], renewed["expires_in"]
    except (ValueError, KeyError, TypeError):
        raise TransferError(502, "the provider's refresh answer is not a token pair") from None
    updated = dict(properties, authorization=str(access), refreshToken=str(refresh), expiresIn=str(expires))
    fresh = {
        **address,
        "endpointProperties": [
            {"@type": "EndpointProperty", "name": k, "value": v} for k, v in updated.items()
        ],
    }
    await run_in_threadpool(_replace, core, transfer_id, fresh)
    return fresh
