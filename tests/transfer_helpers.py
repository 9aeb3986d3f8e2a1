"""Helpers for the transfer tests: two real connectors on one database kind, publishing files, agreeing.

``transfer_pair`` makes city (the provider) and transit (the consumer) with
the real CLI, points both at SQLite files or at throwaway PostgreSQL
databases, serves them with ``tessera serve`` and yields their Management
API clients. ``agree`` negotiates to FINALIZED through the Management API;
``edr`` reads the data address transit's connector stored for a transfer
(what the EDR endpoints will show), so a test can pull with it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session

from catalog.jsonld import EDC_NS
from catalog.vocabulary import DSP_PROTOCOL
from connector.dsp import schemas
from connector.dsp.transfer_messages import endpoint_properties
from connector.transfer_models import TransferRow
from connector.transfers import edr_of
from tests.catalog_helpers import (
    ASSET_CONTEXT,
    CONTRACT_DEFINITIONS,
    POLICIES,
    contract_definition_body,
    policy_body,
)
from tests.conftest import free_port
from tests.negotiation_helpers import (
    Node,
    catalog_offer,
    contract_request,
    counterpart,
    negotiation,
    run_cli,
    running,
    start_negotiation,
    wait_for,
)
from tests.negotiation_helpers import wait_until as wait_until

TRANSFERS = "/management/v3/transferprocesses"
DSP_TRANSFERS = "/dsp/2025-1/transfers"
WAIT_SECONDS = 30.0


@dataclass
class TransferPair:
    city: Node  # the provider
    transit: Node  # the consumer
    capi: httpx.Client
    tapi: httpx.Client
    database: str  # "sqlite" or "postgresql"

    # ---- publishing and agreeing

    def publish_file(
        self,
        asset_id: str,
        content: bytes,
        *,
        suffix: str = ".csv",
        contract: dict[str, Any] | None = None,
        transfer_approval: str = "automatic",
        properties: dict[str, Any] | None = None,
        address: dict[str, Any] | None = None,
    ) -> Path:
        """A file in city's data directory, offered as ``asset_id`` (or ``address`` instead); its path."""
        path = self.city.data_dir / "files" / f"{asset_id}{suffix}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        contract = contract or policy_body(f"contract-{asset_id}")
        access = policy_body(f"access-{asset_id}")
        asset = {
            "@context": ASSET_CONTEXT,
            "@id": asset_id,
            "properties": properties or {},
            "dataAddress": address or {"type": "File", "path": str(path)},
        }
        for body in (contract, access):
            response = self.capi.post(POLICIES, json=body)
            assert response.status_code == 200, response.text
        response = self.capi.post("/management/v3/assets", json=asset)
        assert response.status_code == 200, response.text
        definition = contract_definition_body(
            f"offer-{asset_id}", access["@id"], contract["@id"], [("id", "=", asset_id)]
        )
        definition["transferApproval"] = transfer_approval
        response = self.capi.post(CONTRACT_DEFINITIONS, json=definition)
        assert response.status_code == 200, response.text
        return path

    def agree(self, asset_id: str) -> str:
        """Transit negotiates for ``asset_id`` until both sides are FINALIZED; the agreement id."""
        offer = catalog_offer(self.tapi, self.city.did, self.city.dsp_url, asset_id)
        consumer_id = start_negotiation(
            self.tapi, contract_request(self.city.did, self.city.dsp_url, offer, asset_id)
        )
        found = wait_for(self.tapi, consumer_id, "FINALIZED", "TERMINATED", timeout=WAIT_SECONDS)
        assert found["state"] == "FINALIZED", found
        provider = counterpart(self.capi, negotiation(self.tapi, consumer_id)["consumerPid"])
        wait_for(self.capi, provider["@id"], "FINALIZED", timeout=WAIT_SECONDS)
        agreement_id: str = found["contractAgreementId"]
        return agreement_id

    # ---- transfers

    def request(self, agreement_id: str, transfer_type: str = "HttpData-PULL", **members: Any) -> str:
        """Transit asks city for a transfer under ``agreement_id``; transit's transfer id."""
        response = self.tapi.post(
            TRANSFERS, json=transfer_request(self.city.dsp_url, agreement_id, transfer_type, **members)
        )
        assert response.status_code == 200, response.text
        assert response.json()["@type"] == "IdResponse"
        transfer_id: str = response.json()["@id"]
        return transfer_id

    def provider_side(self, consumer_id: str) -> dict[str, Any]:
        """City's transfer for transit's ``consumer_id``, once it exists."""
        consumer_pid = transfer(self.tapi, consumer_id)["consumerPid"]
        rows = wait_until(lambda: query(self.capi, consumerPid=consumer_pid), WAIT_SECONDS, "city's transfer")
        assert len(rows) == 1, rows
        found: dict[str, Any] = rows[0]
        return found

    def both(self, consumer_id: str, provider_id: str, *states: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return wait_state(self.tapi, consumer_id, *states), wait_state(self.capi, provider_id, *states)

    def pull_started(self, asset_id: str, purpose: str | None = None) -> tuple[str, str, str]:
        """An agreement for ``asset_id`` and a STARTED pull transfer: (agreement, transit's id, city's id)."""
        agreement_id = self.agree(asset_id)
        members = {"purpose": purpose} if purpose else {}
        consumer_id = self.request(agreement_id, **members)
        provider_id = self.provider_side(consumer_id)["@id"]
        self.both(consumer_id, provider_id, "STARTED")
        return agreement_id, consumer_id, provider_id

    def edr(self, consumer_id: str) -> tuple[str, str, dict[str, str]]:
        """(endpoint, token, every endpoint property) of the data address transit holds for a transfer."""
        engine = self.transit.engine()
        try:
            with Session(engine) as session:
                row = session.get(TransferRow, consumer_id)
                assert row is not None
                address = edr_of(row)
        finally:
            engine.dispose()
        assert address is not None, "transit holds no data address for the transfer"
        assert schemas.errors("data-address-schema", address) == [], address
        properties = endpoint_properties(address)
        return address["endpoint"], properties["authorization"], properties

    def provider_row(self, provider_id: str) -> dict[str, Any]:
        engine = self.city.engine()
        try:
            with Session(engine) as session:
                row = session.get(TransferRow, provider_id)
                assert row is not None
                return row.model_dump()
        finally:
            engine.dispose()


def transfer_request(address: str, agreement_id: str, transfer_type: str, **members: Any) -> dict[str, Any]:
    """An EDC v3 TransferRequest, as EDC clients write it."""
    body: dict[str, Any] = {
        "@context": {"@vocab": EDC_NS},
        "@type": "TransferRequest",
        "protocol": DSP_PROTOCOL,
        "counterPartyAddress": address,
        "contractId": agreement_id,
        "transferType": transfer_type,
        "dataDestination": {"type": "HttpProxy"},
        **members,
    }
    if body["dataDestination"] is None:  # no destination: a push lands in the consumer's sink
        del body["dataDestination"]
    return body


def transfer(api: httpx.Client, transfer_id: str) -> dict[str, Any]:
    response = api.get(f"{TRANSFERS}/{transfer_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def query(api: httpx.Client, **criteria: Any) -> list[dict[str, Any]]:
    body = {
        "@context": {"@vocab": EDC_NS},
        "@type": "QuerySpec",
        "filterExpression": [
            {"operandLeft": k, "operator": "=", "operandRight": v} for k, v in criteria.items()
        ],
    }
    response = api.post(f"{TRANSFERS}/request", json=body)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def wait_state(
    api: httpx.Client, transfer_id: str, *states: str, timeout: float = WAIT_SECONDS
) -> dict[str, Any]:
    """The transfer once it is in one of ``states`` (AssertionError, with what it is, if it does not get there)."""
    deadline = time.monotonic() + timeout
    while True:
        found = transfer(api, transfer_id)
        if found["state"] in states and "pendingMessage" not in found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"transfer stayed {found['state']} (wanted {states}): {found}")
        time.sleep(0.05)


def act(api: httpx.Client, transfer_id: str, action: str, reason: str | None = None) -> httpx.Response:
    body = {"@context": {"@vocab": EDC_NS}, "reason": reason} if reason else None
    response: httpx.Response = api.post(f"{TRANSFERS}/{transfer_id}/{action}", json=body)
    return response


def acted(api: httpx.Client, transfer_id: str, action: str, reason: str | None = None) -> None:
    response = act(api, transfer_id, action, reason)
    assert response.status_code == 204, f"{action}: {response.status_code} {response.text}"


def refused(response: httpx.Response, status: int, reason: str, *needles: str) -> dict[str, Any]:
    """A data-plane refusal: ``status``, a JSON body with ``error`` = ``reason``, naming each needle."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body: dict[str, Any] = response.json()
    assert body["error"] == reason, body
    for needle in needles:
        assert needle in body["message"], f"{body['message']!r} does not name {needle!r}"
    return body


def _add(data_dir: Path, member: Node) -> tuple[str, ...]:
    return (
        "dataspace", "add", "--dir", str(data_dir), "--did", member.did, "--url", member.dsp_url,
        "--key", str(member.data_dir / "keys" / "public-key.jwk"),
    )  # fmt: skip


@contextmanager
def transfer_pair(
    tmp_path: Path,
    database: str,
    new_pg_database: Callable[[], str] | None = None,
    city_settings: dict[str, Any] | None = None,
) -> Iterator[TransferPair]:
    """city and transit, introduced to each other, on ``database`` ("sqlite" or "postgresql"), served.

    ``city_settings``: more lines for city's tessera.toml (e.g. a short data token lifetime).
    """
    city = Node("city", tmp_path / "city", free_port())
    transit = Node("transit", tmp_path / "transit", free_port())
    for node in (city, transit):
        result = run_cli("init", "--dir", str(node.data_dir), "--name", node.name, "--port", str(node.port))
        assert result.code == 0, result.stderr
        if database == "postgresql":
            assert new_pg_database is not None
            with (node.data_dir / "tessera.toml").open("a") as config:
                config.write(f"database_url = {json.dumps(new_pg_database())}\n")
    for receiver, member in ((city, transit), (transit, city)):
        result = run_cli(*_add(receiver.data_dir, member))
        assert result.code == 0, result.stderr
    # After the CLI's own use of the directory: its generic settings do not know connector-only keys.
    with (city.data_dir / "tessera.toml").open("a") as config:
        config.writelines(f"{key} = {json.dumps(value)}\n" for key, value in (city_settings or {}).items())
    with ExitStack() as stack:
        with running(stack, city, transit):
            pass
        yield TransferPair(
            city, transit, stack.enter_context(city.api()), stack.enter_context(transit.api()), database
        )
