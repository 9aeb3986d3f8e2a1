"""The demo's negotiations, driven through the Management API as operators would.

Transit negotiates for the city's ``bike-counts`` (the city agrees by
itself); the city negotiates for transit's personal ``card-trips``, which
transit approves by hand — here the demo plays transit's operator.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from catalog.vocabulary import DSP_PROTOCOL
from runtime.settings import ParticipantSettings

WAIT_SECONDS = 30.0


def _client(settings: ParticipantSettings) -> httpx.Client:
    assert settings.management_api_key is not None
    return httpx.Client(
        base_url=f"{settings.public_url}/management/v3",
        headers={"X-Api-Key": settings.management_api_key.get_secret_value()},
        timeout=10.0,
    )


def _offer_for(consumer: httpx.Client, provider: ParticipantSettings, dataset_id: str) -> dict[str, Any]:
    body = {"counterPartyId": provider.did, "counterPartyAddress": provider.dsp_url, "protocol": DSP_PROTOCOL}
    catalog = consumer.post("/catalog/request", json=body)
    catalog.raise_for_status()
    for dataset in catalog.json().get("dataset", []):
        if dataset["@id"] == dataset_id:
            offer: dict[str, Any] = dataset["hasPolicy"][0]
            return offer
    raise RuntimeError(f"{dataset_id} is not in {provider.name}'s catalog for this consumer")


def _wait(client: httpx.Client, path: str, states: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        negotiation: dict[str, Any] = client.get(path).json()
        if negotiation.get("state") in states:
            return negotiation
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"negotiation stayed {negotiation.get('state')}: {negotiation.get('errorDetail', '')}"
            )
        time.sleep(0.2)


def start(consumer: ParticipantSettings, provider: ParticipantSettings, dataset_id: str) -> str:
    """Ask ``provider`` for ``dataset_id``'s offer and start negotiating; returns the negotiation id."""
    with _client(consumer) as client:
        offer = _offer_for(client, provider, dataset_id)
        request = {
            "@context": ["https://w3id.org/edc/connector/management/v0.0.1"],
            "@type": "ContractRequest",
            "counterPartyId": provider.did,
            "counterPartyAddress": provider.dsp_url,
            "protocol": DSP_PROTOCOL,
            "policy": {
                "@context": "http://www.w3.org/ns/odrl.jsonld",
                **{k: v for k, v in offer.items() if k != "@type"},
                "@type": "Offer",
                "target": dataset_id,
            },
        }
        response = client.post("/contractnegotiations", json=request)
        response.raise_for_status()
        negotiation_id: str = response.json()["@id"]
        return negotiation_id


def approve_as_provider(provider: ParticipantSettings, consumer: ParticipantSettings, dataset_id: str) -> str:
    """Play the provider's operator: agree to the waiting request, then finalize once verified."""
    with _client(provider) as client:
        deadline = time.monotonic() + WAIT_SECONDS
        query = {
            "filterExpression": [
                {"operandLeft": "counterPartyId", "operator": "=", "operandRight": consumer.did},
                {"operandLeft": "assetId", "operator": "=", "operandRight": dataset_id},
                {"operandLeft": "state", "operator": "=", "operandRight": "REQUESTED"},
            ]
        }
        while True:
            waiting = client.post("/contractnegotiations/request", json=query).json()
            if waiting:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no request from {consumer.name} for {dataset_id} arrived at {provider.name}"
                )
            time.sleep(0.2)
        negotiation_id: str = waiting[0]["@id"]
        client.post(f"/contractnegotiations/{negotiation_id}/agree").raise_for_status()
        # The consumer verifies the signed agreement; then the operator finalizes it.
        _wait(client, f"/contractnegotiations/{negotiation_id}", {"VERIFIED"})
        client.post(f"/contractnegotiations/{negotiation_id}/finalize").raise_for_status()
        return negotiation_id


def finish(consumer: ParticipantSettings, negotiation_id: str) -> dict[str, Any]:
    """Wait for the end; return the agreement as the consumer holds it."""
    with _client(consumer) as client:
        negotiation = _wait(client, f"/contractnegotiations/{negotiation_id}", {"FINALIZED", "TERMINATED"})
        if negotiation["state"] != "FINALIZED":
            raise RuntimeError(
                f"negotiation {negotiation_id} ended {negotiation['state']}: {negotiation.get('errorDetail')}"
            )
        agreement: dict[str, Any] = client.get(f"/contractnegotiations/{negotiation_id}/agreement").json()
        return agreement


def negotiated_already(
    consumer: ParticipantSettings, provider: ParticipantSettings, dataset_id: str
) -> str | None:
    """The id of an agreement the consumer already holds for this dataset (a second demo run)."""
    with _client(consumer) as client:
        query = {
            "filterExpression": [
                {"operandLeft": "assetId", "operator": "=", "operandRight": dataset_id},
                {"operandLeft": "providerId", "operator": "=", "operandRight": provider.did},
            ]
        }
        found = client.post("/contractagreements/request", json=query)
        found.raise_for_status()
        agreements = found.json()
        return str(agreements[0]["@id"]) if agreements else None
