"""The EDR API (Tractus-X's ``/management/v3/edrs``) between two real connector processes.

city publishes files; transit negotiates through ``POST /edrs``, which starts
the pull transfer by itself on FINALIZED. The data is then pulled exactly as
Tractus-X clients do: find the entry by negotiation, read its data address,
send the token bare in ``Authorization``. city's data tokens live 5 seconds,
so expiry and ``auto_refresh`` are real. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from catalog.jsonld import EDC_NS
from connector.edr_models import FAILED, TRANSFER_REQUESTED, EdrNegotiationRow
from identity.tokens import read_unverified
from tests.catalog_helpers import constraint, policy_body, rule
from tests.negotiation_helpers import catalog_offer, contract_request, wait_for
from tests.transfer_helpers import TransferPair, transfer, transfer_pair, wait_state, wait_until

pytestmark = pytest.mark.slow
EDRS = "/management/v3/edrs"
TOKEN_LIFETIME = 5
CSV = b"counter,count\n" + b"".join(f"C{i:03d},{i * 13 % 97}\n".encode() for i in range(3000))
# What the Tractus-X Python SDK puts on the ContractRequest of an EDR negotiation.
SDK_CONTEXT = [
    "https://w3id.org/tractusx/policy/v1.0.0",
    "http://www.w3.org/ns/odrl.jsonld",
    {"@vocab": EDC_NS},
]
TX_CONTEXT = {"tx": "https://w3id.org/tractusx/v0.0.1/ns/", "tx-auth": "https://w3id.org/tractusx/auth/"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransferPair]:
    factory: Callable[[], str] | None = None
    if request.param == "postgresql":
        factory = request.getfixturevalue("pg_database_factory")
    with transfer_pair(
        tmp_path_factory.mktemp(f"edr-{request.param}"),
        request.param,
        factory,
        city_settings={"data_token_lifetime_seconds": TOKEN_LIFETIME},
    ) as made:
        yield made


def _publish(pair: TransferPair, asset_id: str, purpose: str = "planning") -> None:
    contract = policy_body(f"contract-{asset_id}", [rule(constraint("purpose", "eq", purpose))])
    pair.publish_file(asset_id, CSV, contract=contract)


def _edr_request(pair: TransferPair, asset_id: str, **members: Any) -> dict[str, Any]:
    offer = catalog_offer(pair.tapi, pair.city.did, pair.city.dsp_url, asset_id)
    return contract_request(pair.city.did, pair.city.dsp_url, offer, asset_id, **members)


def _negotiate(pair: TransferPair, asset_id: str, context: Any = None, **members: Any) -> str:
    body = _edr_request(pair, asset_id, **members)
    if context is not None:
        body["@context"] = context
    response = pair.tapi.post(EDRS, json=body)
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["@type"] == "IdResponse", created
    assert isinstance(created["createdAt"], int), created
    negotiation_id: str = created["@id"]
    return negotiation_id


def _entries(api: httpx.Client, **criteria: str) -> list[dict[str, Any]]:
    body = {
        "@context": {"@vocab": EDC_NS},
        "@type": "QuerySpec",
        "filterExpression": [
            {"operandLeft": k, "operator": "=", "operandRight": v} for k, v in criteria.items()
        ],
    }
    response = api.post(f"{EDRS}/request", json=body)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def _entry_for(pair: TransferPair, negotiation_id: str) -> dict[str, Any]:
    """The EDR entry of an EDR negotiation, once its transfer has STARTED (as the Tractus-X SDK waits)."""
    assert wait_for(pair.tapi, negotiation_id, "FINALIZED", "TERMINATED", timeout=30)["state"] == "FINALIZED"
    entries = wait_until(
        lambda: _entries(pair.tapi, contractNegotiationId=negotiation_id), 30, f"the EDR of {negotiation_id}"
    )
    assert len(entries) == 1, entries
    entry: dict[str, Any] = entries[0]
    return entry


def _address(pair: TransferPair, transfer_id: str, auto_refresh: str | None = None) -> dict[str, Any]:
    suffix = "" if auto_refresh is None else f"?auto_refresh={auto_refresh}"
    response = pair.tapi.get(f"{EDRS}/{transfer_id}/dataaddress{suffix}")
    assert response.status_code == 200, response.text
    address: dict[str, Any] = response.json()
    return address


def _pull(address: dict[str, Any]) -> httpx.Response:
    # As the Tractus-X SDK sends it: the bare token in Authorization.
    return httpx.get(address["endpoint"], headers={"Authorization": address["authorization"]}, timeout=30)


def _edr_row(pair: TransferPair, negotiation_id: str) -> EdrNegotiationRow:
    engine = pair.transit.engine()
    try:
        with Session(engine) as session:
            row = session.get(EdrNegotiationRow, negotiation_id)
            assert row is not None
            session.expunge(row)
            return row
    finally:
        engine.dispose()


def _edc_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body = response.json()
    assert isinstance(body, list), body
    assert len(body) == 1, body
    error: dict[str, Any] = body[0]
    assert {"message", "type"} <= error.keys(), error
    text = f"{error['message']} {error.get('path')}"
    for needle in needles:
        assert needle in text, f"{text!r} does not name {needle!r}"
    return error


def test_an_edr_negotiation_starts_a_pull_transfer_whose_edr_pulls_the_data(pair: TransferPair) -> None:
    _publish(pair, "edr-counts")
    negotiation_id = _negotiate(pair, "edr-counts", SDK_CONTEXT, protocol="dataspace-protocol-http")
    negotiation = wait_for(pair.tapi, negotiation_id, "FINALIZED", "TERMINATED", timeout=30)
    assert negotiation["state"] == "FINALIZED", negotiation

    entry = _entry_for(pair, negotiation_id)
    assert entry["@type"] == "EndpointDataReferenceEntry"
    assert entry["@id"] == entry["transferProcessId"]
    assert entry["@context"]["@vocab"] == EDC_NS
    assert TX_CONTEXT.items() <= entry["@context"].items()
    assert entry["agreementId"] == negotiation["contractAgreementId"]
    assert (entry["assetId"], entry["providerId"]) == ("edr-counts", pair.city.did)
    assert entry["contractNegotiationId"] == negotiation_id
    assert isinstance(entry["createdAt"], int)
    transfer_id = entry["transferProcessId"]
    started = wait_state(pair.tapi, transfer_id, "STARTED")
    # No purpose was given: the offer names exactly one, so the transfer declared it.
    assert (started["transferType"], started["purpose"]) == ("HttpData-PULL", "planning")
    assert _edr_row(pair, negotiation_id).transfer_id == transfer_id

    address = _address(pair, transfer_id, "false")
    assert address["@type"] == "DataAddress"
    assert address["authType"] == "bearer"
    assert address["endpoint"].startswith(pair.city.settings.public_url)
    assert address["tx-auth:expiresIn"] == str(TOKEN_LIFETIME)
    assert address["tx-auth:refreshAudience"] == pair.city.did
    _, _, stored = pair.edr(transfer_id)
    assert stored["refreshToken"] not in json.dumps(address), "the refresh token must stay in the connector"
    pulled = _pull(address)
    assert pulled.status_code == 200, pulled.text
    assert pulled.content == CSV

    # An entry is a Tractus-X EDR for any STARTED pull transfer; every filter field works.
    for field in ("transferProcessId", "assetId", "agreementId", "providerId"):
        assert transfer_id in [e["@id"] for e in _entries(pair.tapi, **{field: entry[field]})], field
    assert _entries(pair.tapi, assetId="no-such-asset") == []


def test_refresh_replaces_the_token_and_auto_refresh_renews_an_expired_one(pair: TransferPair) -> None:
    _publish(pair, "edr-refresh")
    transfer_id = _entry_for(pair, _negotiate(pair, "edr-refresh"))["transferProcessId"]
    first = _address(pair, transfer_id, "false")

    response = pair.tapi.post(f"{EDRS}/{transfer_id}/refresh")
    assert response.status_code == 200, response.text
    renewed = response.json()
    assert renewed["authorization"] != first["authorization"]
    assert _address(pair, transfer_id, "false")["authorization"] == renewed["authorization"]
    assert _pull(first).status_code == 401  # the provider retired the old token
    assert _pull(renewed).status_code == 200

    _, claims = read_unverified(renewed["authorization"])
    time.sleep(max(0.0, claims["exp"] - time.time() + 0.5))  # until it has expired
    stale = _address(pair, transfer_id, "false")
    assert stale["authorization"] == renewed["authorization"]
    assert _pull(stale).status_code == 401
    # Clients asking at once (auto_refresh is true unless the caller says otherwise) share one refresh.
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: _address(pair, transfer_id), range(4)))
    fresh = answers[0]
    assert fresh["authorization"] != renewed["authorization"]
    assert {a["authorization"] for a in answers} == {fresh["authorization"]}, "refreshed more than once"
    assert _pull(fresh).status_code == 200
    # "True": how the Tractus-X SDK (Python requests) spells the flag.
    assert _address(pair, transfer_id, "True")["authorization"] == fresh["authorization"]


def test_delete_forgets_the_edr_and_unknown_ids_are_404(pair: TransferPair) -> None:
    _publish(pair, "edr-delete")
    transfer_id = _entry_for(pair, _negotiate(pair, "edr-delete"))["transferProcessId"]

    assert pair.tapi.delete(f"{EDRS}/{transfer_id}").status_code == 204
    _edc_error(pair.tapi.get(f"{EDRS}/{transfer_id}/dataaddress"), 404, transfer_id)
    assert _entries(pair.tapi, transferProcessId=transfer_id) == []
    _edc_error(pair.tapi.delete(f"{EDRS}/{transfer_id}"), 404, transfer_id)
    assert transfer(pair.tapi, transfer_id)["state"] == "STARTED"  # the transfer itself goes on

    for method, path in (("GET", "/nope/dataaddress"), ("POST", "/nope/refresh"), ("DELETE", "/nope")):
        assert _edc_error(pair.tapi.request(method, EDRS + path), 404, "nope")["type"] == "ObjectNotFound"
    # The provider's side of a transfer is no EDR.
    provider_id = pair.provider_side(transfer_id)["@id"]
    _edc_error(pair.capi.get(f"{EDRS}/{provider_id}/dataaddress"), 404, provider_id)


def test_a_purpose_the_agreement_refuses_leaves_a_terminated_transfer_and_no_edr(pair: TransferPair) -> None:
    _publish(pair, "edr-purpose", purpose="research")
    negotiation_id = _negotiate(pair, "edr-purpose", purpose="marketing")
    assert wait_for(pair.tapi, negotiation_id, "FINALIZED", "TERMINATED", timeout=30)["state"] == "FINALIZED"
    row = wait_until(
        lambda: (r := _edr_row(pair, negotiation_id)).transfer_id and r, 30, "the EDR transfer request"
    )
    assert row.state == TRANSFER_REQUESTED
    ended = wait_state(pair.tapi, row.transfer_id, "TERMINATED")
    assert ended["purpose"] == "marketing", ended
    assert "purpose" in ended["errorDetail"], ended
    assert _entries(pair.tapi, contractNegotiationId=negotiation_id) == []


def test_a_terminated_negotiation_starts_no_transfer(pair: TransferPair) -> None:
    members_only = policy_body("contract-edr-members", [rule(constraint("membership", "eq", "utility"))])
    pair.publish_file("edr-members", CSV, contract=members_only)
    negotiation_id = _negotiate(pair, "edr-members")
    assert wait_for(pair.tapi, negotiation_id, "FINALIZED", "TERMINATED", timeout=30)["state"] == "TERMINATED"
    row = wait_until(
        lambda: (r := _edr_row(pair, negotiation_id)).state == FAILED and r, 30, "the EDR failure"
    )
    assert row.transfer_id is None
    assert "terminated" in (row.error_detail or "")
    assert _entries(pair.tapi, contractNegotiationId=negotiation_id) == []


def test_bad_input_is_refused_naming_the_field(pair: TransferPair) -> None:
    _publish(pair, "edr-bad")
    good = _edr_request(pair, "edr-bad")
    cases: list[tuple[dict[str, Any], str]] = [
        ({k: v for k, v in good.items() if k != "counterPartyAddress"}, "counterPartyAddress"),
        ({k: v for k, v in good.items() if k != "policy"}, "policy"),
        ({**good, "protocol": "ids-multipart"}, "protocol"),
        ({**good, "purpose": 42}, "purpose"),
        ({**good, "purpose": 0}, "purpose"),
        ({**good, "purpose": ""}, "purpose"),
        ({**good, "purpose": "x" * 600}, "purpose"),
        ({**good, "counterPartyAddress": "http://127.0.0.1:1/dsp"}, "counterPartyAddress"),
    ]
    before = _entries(pair.tapi)
    for body, field in cases:
        _edc_error(pair.tapi.post(EDRS, json=body), 400, field)
    _edc_error(pair.tapi.post(EDRS, content=b"{not json", headers={"content-type": "application/json"}), 400)
    _edc_error(pair.tapi.get(f"{EDRS}/x/dataaddress?auto_refresh=maybe"), 400, "auto_refresh")
    query = {"@context": {"@vocab": EDC_NS}, "filterExpression": [{"operandLeft": "colour", "operator": "=", "operandRight": "red"}]}  # fmt: skip
    _edc_error(pair.tapi.post(f"{EDRS}/request", json=query), 400, "colour")
    assert httpx.post(pair.transit.base_url + EDRS, json=good, timeout=10).status_code == 401
    assert _entries(pair.tapi) == before
