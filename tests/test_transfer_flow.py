"""Transfers between two real connector processes, on SQLite and on PostgreSQL.

city publishes files; transit agrees (a real negotiation) and asks for pull
transfers through the EDC v3 ``transferprocesses`` API. The data is fetched
from city's public endpoint with the token city's start message carried,
exactly as transit stored it. Each test uses its own asset and agreement.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from paho.mqtt import publish

from connector.dsp import schemas
from connector.edr_refresh import refresh_edr
from identity.keys import load_private_key
from identity.tokens import issue_token
from runtime.service import ServiceCore
from tests.catalog_helpers import constraint, edc_error, policy_body, rule
from tests.negotiation_helpers import fake_peer
from tests.peer_helpers import b64url_decode, sign_ed25519
from tests.transfer_helpers import (
    TRANSFERS,
    TransferPair,
    act,
    acted,
    query,
    refused,
    transfer,
    transfer_pair,
    transfer_request,
    wait_state,
    wait_until,
)

pytestmark = pytest.mark.slow
CSV = b"stop_id,boardings\n" + b"".join(f"S{i:04d},{i * 7 % 113}\n".encode() for i in range(5000))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransferPair]:
    factory: Callable[[], str] | None = None
    if request.param == "postgresql":
        factory = request.getfixturevalue("pg_database_factory")
    with transfer_pair(tmp_path_factory.mktemp(f"transfer-{request.param}"), request.param, factory) as made:
        yield made


def _get(endpoint: str, token: str, **headers: str) -> httpx.Response:
    return httpx.get(endpoint, headers={"Authorization": f"Bearer {token}", **headers}, timeout=30)


def _peer_headers(pair: TransferPair) -> dict[str, str]:
    """A request from transit to city, authenticated as transit (a fresh peer token)."""
    key = load_private_key(pair.transit.data_dir / "keys" / "private-key.pem")
    return {"Authorization": "Bearer " + issue_token(key, pair.transit.did, pair.city.did)}


def test_pull_end_to_end_serves_the_bytes_ranges_and_counts(pair: TransferPair) -> None:
    path = pair.publish_file("stops-pull", CSV)
    agreement_id, consumer_id, provider_id = pair.pull_started("stops-pull", purpose="planning")

    consumer, provider = transfer(pair.tapi, consumer_id), transfer(pair.capi, provider_id)
    assert (consumer["type"], provider["type"]) == ("CONSUMER", "PROVIDER")
    assert consumer["contractId"] == provider["contractId"] == agreement_id
    assert consumer["assetId"] == provider["assetId"] == "stops-pull"
    assert provider["purpose"] == "planning"
    assert consumer["correlationId"] == provider["providerPid"]
    assert consumer["@context"]["@vocab"] == "https://w3id.org/edc/v0.0.1/ns/"

    endpoint, token, properties = pair.edr(consumer_id)
    assert endpoint == f"{pair.city.base_url}/public/transfers/{provider_id}"
    assert properties["authType"] == "bearer"
    assert properties["refreshToken"]

    whole = _get(endpoint, token)
    assert whole.status_code == 200, whole.text
    assert hashlib.sha256(whole.content).digest() == hashlib.sha256(path.read_bytes()).digest()
    assert whole.headers["accept-ranges"] == "bytes"

    part = _get(endpoint, token, Range="bytes=18-40")
    assert part.status_code == 206
    assert part.content == CSV[18:41]
    assert part.headers["content-range"] == f"bytes 18-40/{len(CSV)}"
    tail = _get(endpoint, token, Range="bytes=-10")
    assert (tail.status_code, tail.content) == (206, CSV[-10:])

    refused(_get(endpoint, token, Range=f"bytes={len(CSV) + 5}-"), 416, "range")
    assert (
        _get(endpoint, token, Range=f"bytes={len(CSV) + 5}-").headers["content-range"]
        == f"bytes */{len(CSV)}"
    )
    refused(_get(endpoint, token, Range="bytes=abc"), 400, "range", "does not parse")

    row = wait_until(
        lambda: (r := pair.provider_row(provider_id))["bytes_transferred"] >= len(CSV) + 33 and r
    )
    assert row["access_count"] == 3  # refused ranges do not count
    assert row["bytes_transferred"] == len(CSV) + 23 + 10

    # Both sides answer DSP state requests with a schema-valid TransferProcess.
    provider_pid, _consumer_pid = provider["providerPid"], provider["consumerPid"]
    state = httpx.get(f"{pair.city.dsp_url}/transfers/{provider_pid}", headers=_peer_headers(pair))
    assert state.status_code == 200
    assert schemas.errors("transfer-process-schema", state.json()) == []
    assert state.json()["state"] == "STARTED"


def test_consumer_suspends_resumes_and_completes(pair: TransferPair) -> None:
    pair.publish_file("stops-consumer-steps", CSV)
    _, consumer_id, provider_id = pair.pull_started("stops-consumer-steps")
    endpoint, token, _ = pair.edr(consumer_id)

    acted(pair.tapi, consumer_id, "suspend", "maintenance window")
    _, provider = pair.both(consumer_id, provider_id, "SUSPENDED")
    assert "maintenance window" in provider["errorDetail"]
    refused(_get(endpoint, token), 403, "state", "SUSPENDED")

    acted(pair.tapi, consumer_id, "resume")
    pair.both(consumer_id, provider_id, "STARTED")
    assert _get(endpoint, token).content == CSV  # the token survives a consumer's resume

    acted(pair.tapi, consumer_id, "complete")
    pair.both(consumer_id, provider_id, "COMPLETED")
    refused(_get(endpoint, token), 403, "state", "COMPLETED")
    response = act(pair.tapi, consumer_id, "resume")
    assert response.status_code == 409, response.text


def test_provider_suspends_resumes_with_a_new_token_and_terminates(pair: TransferPair) -> None:
    pair.publish_file("stops-provider-steps", CSV)
    _, consumer_id, provider_id = pair.pull_started("stops-provider-steps")
    endpoint, first_token, _ = pair.edr(consumer_id)

    acted(pair.capi, provider_id, "suspend", "upstream maintenance")
    consumer, _ = pair.both(consumer_id, provider_id, "SUSPENDED")
    assert "upstream maintenance" in consumer["errorDetail"]
    refused(_get(endpoint, first_token), 403, "state", "SUSPENDED")

    acted(pair.capi, provider_id, "resume")
    pair.both(consumer_id, provider_id, "STARTED")
    _, second_token, _ = pair.edr(consumer_id)
    assert second_token != first_token
    refused(_get(endpoint, first_token), 401, "replaced")
    assert _get(endpoint, second_token).content == CSV

    acted(pair.capi, provider_id, "terminate", "contract breach")
    consumer, _ = pair.both(consumer_id, provider_id, "TERMINATED")
    assert "contract breach" in consumer["errorDetail"]
    refused(_get(endpoint, second_token), 403, "state", "TERMINATED")
    assert act(pair.capi, provider_id, "resume").status_code == 409


def test_refresh_issues_a_new_token_and_retires_the_old_one(pair: TransferPair) -> None:
    pair.publish_file("stops-refresh", CSV)
    _, consumer_id, _ = pair.pull_started("stops-refresh")
    endpoint, token, properties = pair.edr(consumer_id)
    refresh = {"grant_type": "refresh_token", "refresh_token": properties["refreshToken"]}

    anonymous = httpx.post(properties["refreshEndpoint"], data=refresh)
    assert anonymous.status_code == 401, anonymous.text

    response = httpx.post(properties["refreshEndpoint"], data=refresh, headers=_peer_headers(pair))
    assert response.status_code == 200, response.text
    renewed = response.json()
    assert renewed["token_type"] == "bearer"
    assert renewed["expires_in"] > 0
    assert _get(endpoint, renewed["access_token"]).content == CSV
    refused(_get(endpoint, token), 401, "replaced", "refresh")  # replayed after refresh

    again = httpx.post(properties["refreshEndpoint"], data=refresh, headers=_peer_headers(pair))
    refused(again, 401, "replaced")  # a refresh token works once


def test_forged_foreign_and_missing_tokens_are_refused(pair: TransferPair) -> None:
    pair.publish_file("stops-tokens-a", CSV)
    pair.publish_file("stops-tokens-b", CSV)
    _, first_id, _ = pair.pull_started("stops-tokens-a")
    _, second_id, _ = pair.pull_started("stops-tokens-b")
    first_endpoint, first_token, _ = pair.edr(first_id)
    second_endpoint, _, _ = pair.edr(second_id)

    refused(httpx.get(first_endpoint), 401, "missing")
    refused(_get(first_endpoint, "not-a-token"), 401, "malformed")
    # A token transit signs itself, claiming everything city's token claims: the signature gives it away.
    header, claims, _ = first_token.split(".")
    forged = sign_ed25519(
        load_private_key(pair.transit.data_dir / "keys" / "private-key.pem"),
        json.loads(b64url_decode(header)),
        json.loads(b64url_decode(claims)),
    )
    refused(_get(first_endpoint, forged), 401, "signature")
    # A real token of another transfer.
    refused(_get(second_endpoint, first_token), 403, "wrong_transfer")


def test_the_agreed_count_is_enforced_at_every_access_and_completes_the_transfer(pair: TransferPair) -> None:
    contract = policy_body("contract-twice", [rule(constraint("count", "lteq", 2))])
    pair.publish_file("stops-twice", CSV, contract=contract)
    _, consumer_id, provider_id = pair.pull_started("stops-twice")
    endpoint, token, _ = pair.edr(consumer_id)

    assert _get(endpoint, token).status_code == 200
    assert _get(endpoint, token).status_code == 200
    denied = refused(_get(endpoint, token), 403, "policy", "count")
    assert "denies" in denied["message"]
    _consumer, provider = pair.both(consumer_id, provider_id, "COMPLETED")
    assert provider["accessCount"] == 2
    assert "count" in provider["errorDetail"]

    # A new transfer under the same agreement is refused: the count is the agreement's.
    again = pair.request(provider["contractId"])
    found = wait_state(pair.tapi, again, "TERMINATED")
    assert "does not admit" in found["errorDetail"]
    assert "count" in found["errorDetail"]


def test_a_purpose_the_agreement_does_not_admit_is_refused_at_request(pair: TransferPair) -> None:
    contract = policy_body("contract-research", [rule(constraint("purpose", "eq", "research"))])
    pair.publish_file("stops-research", CSV, contract=contract)
    agreement_id = pair.agree("stops-research")

    refused_id = pair.request(agreement_id, purpose="marketing")
    found = wait_state(pair.tapi, refused_id, "TERMINATED")
    assert "marketing" in found["errorDetail"] or "purpose" in found["errorDetail"]

    admitted = pair.request(agreement_id, purpose="research")
    assert wait_state(pair.tapi, admitted, "STARTED")["purpose"] == "research"


def test_manual_transfer_approval_waits_for_the_operators_start(pair: TransferPair) -> None:
    pair.publish_file("stops-manual", CSV, transfer_approval="manual")
    agreement_id = pair.agree("stops-manual")
    consumer_id = pair.request(agreement_id)
    provider = pair.provider_side(consumer_id)
    _consumer, provider = pair.both(consumer_id, provider["@id"], "REQUESTED")
    assert provider["approval"] == "manual"
    assert act(pair.tapi, consumer_id, "start").status_code == 409  # only the provider starts

    acted(pair.capi, provider["@id"], "start")
    pair.both(consumer_id, provider["@id"], "STARTED")
    endpoint, token, _ = pair.edr(consumer_id)
    assert _get(endpoint, token).content == CSV


def test_a_personal_asset_releases_nothing_without_a_consent_service(pair: TransferPair) -> None:
    trips = b"card_id,stop,at\nC1,S1,08:00\nC2,S2,08:05\n"
    personal = {
        "tessera:personal": True,
        "tessera:subjectField": "card_id",
        "tessera:consentPurpose": "research",
    }
    pair.publish_file("card-trips", trips, properties=personal)
    _, consumer_id, provider_id = pair.pull_started("card-trips")
    endpoint, token, _ = pair.edr(consumer_id)

    response = _get(endpoint, token)
    assert response.status_code == 200
    assert b"C1" not in response.content
    assert b"C2" not in response.content
    row = wait_until(lambda: (r := pair.provider_row(provider_id))["error_detail"] and r)
    assert "2 personal record(s) withheld: no consent service configured" in row["error_detail"]


def test_dsp_state_of_an_unknown_or_foreign_transfer_is_404(pair: TransferPair) -> None:
    response = httpx.get(f"{pair.city.dsp_url}/transfers/urn:uuid:nothing", headers=_peer_headers(pair))
    assert response.status_code == 404
    assert response.json()["@type"] == "TransferError"


def test_push_lands_in_the_consumers_sink_and_completes(pair: TransferPair) -> None:
    pair.publish_file("stops-push", CSV)
    agreement_id = pair.agree("stops-push")
    consumer_id = pair.request(agreement_id, "HttpData-PUSH", dataDestination=None)
    provider_id = pair.provider_side(consumer_id)["@id"]
    consumer, provider = pair.both(consumer_id, provider_id, "COMPLETED")
    assert (
        consumer["dataDestination"]["endpointProperties"][0]["value"] == "***"
    )  # the sink's secret is not shown
    received = pair.transit.data_dir / "sink" / "stops-push"
    assert received.read_bytes() == CSV
    assert provider["bytesTransferred"] == len(CSV)
    assert provider["accessCount"] == 1
    assert "errorDetail" not in provider


def test_a_push_the_endpoint_refuses_terminates_with_the_reason(pair: TransferPair) -> None:
    pair.publish_file("stops-push-refused", CSV)
    agreement_id = pair.agree("stops-push-refused")
    destination = {"type": "HttpData", "baseUrl": f"{pair.transit.base_url}/sink/{'0' * 32}"}
    consumer_id = pair.request(agreement_id, "HttpData-PUSH", dataDestination=destination)
    provider_id = pair.provider_side(consumer_id)["@id"]
    consumer, provider = pair.both(consumer_id, provider_id, "TERMINATED")
    assert "push failed: the push endpoint refused the data (401)" in provider["errorDetail"]
    assert "push failed" in consumer["errorDetail"]
    assert not (pair.transit.data_dir / "sink" / "stops-push-refused").exists()


def test_a_closed_time_window_terminates_the_transfer_and_refuses_new_ones(pair: TransferPair) -> None:
    contract = policy_body("contract-brief", [rule(constraint("elapsedTime", "lteq", "PT8S"))])
    pair.publish_file("stops-brief", CSV, contract=contract)
    agreement_id, consumer_id, provider_id = pair.pull_started("stops-brief")
    endpoint, token, _ = pair.edr(consumer_id)
    assert _get(endpoint, token).status_code == 200

    wait_until(lambda: _get(endpoint, token).status_code == 403, timeout=30, what="the window to close")
    consumer, provider = pair.both(consumer_id, provider_id, "TERMINATED")
    assert "elapsedTime" in provider["errorDetail"]
    assert "elapsedTime" in consumer["errorDetail"]  # the consumer was told why, over DSP

    expired = wait_state(pair.tapi, pair.request(agreement_id), "TERMINATED")
    assert "does not admit" in expired["errorDetail"]


def test_management_api_answers_as_edc_does_and_refuses_bad_input(pair: TransferPair) -> None:
    pair.publish_file("stops-management", CSV)
    agreement_id, consumer_id, provider_id = pair.pull_started("stops-management")

    found = query(pair.tapi, contractId=agreement_id)
    assert [t["@id"] for t in found] == [consumer_id]
    assert query(pair.capi, contractId=agreement_id)[0]["@id"] == provider_id
    assert all("@context" in t for t in found)
    assert query(pair.capi, state="STARTED", type="provider")[0]["@type"] == "TransferProcess"
    state = pair.tapi.get(f"{TRANSFERS}/{consumer_id}/state")
    assert state.json() == {
        "@type": "TransferState",
        "state": "STARTED",
        "@context": state.json()["@context"],
    }

    missing = pair.tapi.get(f"{TRANSFERS}/no-such-transfer")
    edc_error(missing, 404, "ObjectNotFound", "no-such-transfer")
    edc_error(act(pair.tapi, "no-such-transfer", "suspend"), 404, "ObjectNotFound")
    edc_error(act(pair.tapi, consumer_id, "explode"), 404, "ObjectNotFound", "explode")
    edc_error(act(pair.tapi, consumer_id, "start"), 409, "ObjectConflict", "provider")

    bad: list[tuple[dict[str, Any], str]] = [
        ({"contractId": None}, "contractId"),
        ({"counterPartyAddress": "http://127.0.0.1:1/dsp/2025-1"}, "counterPartyAddress"),
        ({"transferType": "Smoke-SIGNALS"}, "transferType"),
        ({"contractId": "urn:uuid:not-an-agreement"}, "no agreement"),
        ({"protocol": "ids-multipart"}, "protocol"),
    ]
    for change, needle in bad:
        body = transfer_request(pair.city.dsp_url, agreement_id, "HttpData-PULL")
        body.update(change)
        response = pair.tapi.post(TRANSFERS, json={k: v for k, v in body.items() if v is not None})
        assert response.status_code == 400, response.text
        assert needle in response.json()[0]["message"], response.json()
    assert len(query(pair.tapi, contractId=agreement_id)) == 1  # nothing half-made


def test_the_consumer_refreshes_its_edr_through_the_provider(pair: TransferPair) -> None:
    pair.publish_file("stops-edr-refresh", CSV)
    _, consumer_id, _ = pair.pull_started("stops-edr-refresh")
    endpoint, old_token, _ = pair.edr(consumer_id)

    core = ServiceCore.create(pair.transit.settings)  # transit's own code, on transit's database

    async def refreshed() -> None:
        try:
            await refresh_edr(core, consumer_id)
        finally:
            await core.peer_client.aclose()

    try:
        asyncio.run(refreshed())
    finally:
        core.engine.dispose()
    same_endpoint, new_token, properties = pair.edr(consumer_id)
    assert same_endpoint == endpoint
    assert new_token != old_token
    assert _get(endpoint, new_token).content == CSV
    refused(_get(endpoint, old_token), 401, "replaced")
    assert int(properties["expiresIn"]) > 0


def test_an_upstream_that_fails_is_a_clean_error_and_no_access(pair: TransferPair) -> None:
    with fake_peer(lambda hit: (500, {"oops": True})) as upstream:
        address = {"type": "HttpData", "baseUrl": f"{upstream.url}/counts"}
        pair.publish_file("counts-upstream", b"", address=address)
        _, consumer_id, provider_id = pair.pull_started("counts-upstream")
        endpoint, token, _ = pair.edr(consumer_id)
        response = _get(endpoint, token)
        assert response.status_code in (502, 504), response.text
        assert response.json()["error"] == "source"
        assert "oops" not in response.text
        assert [hit.path for hit in upstream.hits] == ["/counts"]
    row = pair.provider_row(provider_id)
    assert (row["state"], row["access_count"], row["bytes_transferred"]) == ("STARTED", 0, 0)


def test_a_live_mqtt_transfer_streams_until_the_provider_suspends_it(pair: TransferPair) -> None:
    topic = f"tessera-test/{pair.database}/{uuid.uuid4().hex[:8]}/speed"
    address = {"type": "Mqtt", "broker": "127.0.0.1:1883", "topic": topic}
    pair.publish_file("traffic-live", b"", address=address)
    _, consumer_id, provider_id = pair.pull_started("traffic-live")
    endpoint, token, _ = pair.edr(consumer_id)
    lines: list[dict[str, Any]] = []
    finished = threading.Event()

    def read() -> None:
        with httpx.stream(
            "GET", endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.strip():
                    lines.append(json.loads(line))
        finished.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def published_and_seen() -> bool:
        publish.single(topic, json.dumps({"sensor": "S1", "kmh": 42}), hostname="127.0.0.1", port=1883)
        return len(lines) >= 2

    wait_until(published_and_seen, timeout=30, what="live messages to reach the consumer")
    assert lines[0] == {"sensor": "S1", "kmh": 42}
    assert not finished.is_set()

    acted(pair.capi, provider_id, "suspend", "night")
    pair.both(consumer_id, provider_id, "SUSPENDED")
    assert finished.wait(15), "the live stream did not end when the transfer was suspended"
    reader.join(5)


def test_a_live_push_streams_into_the_sink_until_the_consumer_suspends_it(pair: TransferPair) -> None:
    topic = f"tessera-test/{pair.database}/{uuid.uuid4().hex[:8]}/flow"
    pair.publish_file(
        "traffic-push", b"", address={"type": "Mqtt", "broker": "127.0.0.1:1883", "topic": topic}
    )
    agreement_id = pair.agree("traffic-push")
    consumer_id = pair.request(agreement_id, "HttpData-PUSH", dataDestination=None)
    provider_id = pair.provider_side(consumer_id)["@id"]
    pair.both(consumer_id, provider_id, "STARTED")

    def published_and_pushed() -> bool:
        publish.single(topic, json.dumps({"sensor": "S9", "vehicles": 7}), hostname="127.0.0.1", port=1883)
        return pair.provider_row(provider_id)["lease_owner"] is not None  # the push is running

    wait_until(published_and_pushed, timeout=30, what="the push to run")
    for _ in range(3):
        publish.single(topic, json.dumps({"sensor": "S9", "vehicles": 8}), hostname="127.0.0.1", port=1883)
        time.sleep(0.3)

    acted(pair.tapi, consumer_id, "suspend", "enough for today")
    pair.both(consumer_id, provider_id, "SUSPENDED")
    received = pair.transit.data_dir / "sink" / "traffic-push"
    lines = wait_until(
        lambda: received.exists() and received.read_text().splitlines(), what="the pushed file"
    )
    assert {"sensor": "S9", "vehicles": 8} in [json.loads(line) for line in lines]
    row = wait_until(lambda: (r := pair.provider_row(provider_id))["lease_owner"] is None and r)
    assert row["state"] == "SUSPENDED"
    assert row["bytes_transferred"] == received.stat().st_size
