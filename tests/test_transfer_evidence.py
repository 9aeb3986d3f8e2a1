"""Transfers leave evidence in both connectors' logs, each side holding the other's signature.

Two real connector processes (``tessera serve``) on SQLite and on PostgreSQL: a pull and a
push are logged on both sides (started, completed: bytes, payload SHA-256, records, the
policy decision); the provider's signed statements and the consumer's receipts travel
between them and are logged; a refused access and a refused request are logged with their
reason; a forged or tampered statement is refused and logged; the provider's audit bundle
verifies offline, receipts included.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from connector.translog.audit import verify_bundle
from connector.translog.receipts import facts_of_entry, sign_facts, verify_facts
from identity.keys import load_private_key
from tests.catalog_helpers import constraint, policy_body, rule
from tests.transfer_helpers import (
    TransferPair,
    acted,
    refused,
    transfer,
    transfer_pair,
    wait_state,
    wait_until,
)
from tests.translog_helpers import peer_headers

pytestmark = pytest.mark.slow
LOG = "/management/v3/transferlog"
CSV = b"stop_id,boardings\nS1,3\nS2,4\nS3,5\n"
SHA = hashlib.sha256(CSV).hexdigest()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransferPair]:
    factory: Callable[[], str] | None = None
    if request.param == "postgresql":
        factory = request.getfixturevalue("pg_database_factory")
    with transfer_pair(tmp_path_factory.mktemp(f"evidence-{request.param}"), request.param, factory) as made:
        yield made


def entries(api: httpx.Client) -> list[dict[str, Any]]:
    size = int(api.get(f"{LOG}/checkpoint").text.split("\n")[1])
    found: list[dict[str, Any]] = []
    for start in range(0, size, 1000):
        page = api.get(f"{LOG}/entries", params={"start": start, "end": min(size, start + 1000)})
        assert page.status_code == 200, page.text
        found += [item["entry"] for item in page.json()["entries"]]
    return found


def logged(api: httpx.Client, kind: str, **match: Any) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for entry in entries(api):
            if entry["kind"] == kind and all(entry.get(k) == v for k, v in match.items()):
                return entry
        return None

    entry: dict[str, Any] = wait_until(find, 30.0, f"a {kind} entry {match}")
    return entry


def _both_signed(pair: TransferPair, consumer_id: str, provider_id: str, statement: str) -> dict[str, Any]:
    """Each side's log holds the other's signature over the same facts; those facts."""
    at_city = logged(pair.capi, "transfer.receipt", transferId=provider_id, statement=statement)
    at_transit = logged(pair.tapi, "transfer.receipt", transferId=consumer_id, statement=statement)
    assert (at_city["signedBy"], at_city["role"]) == (pair.transit.did, "provider")
    assert (at_transit["signedBy"], at_transit["role"]) == (pair.city.did, "consumer")
    facts = facts_of_entry(at_city)
    assert facts == facts_of_entry(at_transit)
    verify_facts(facts, at_city["signature"], pair.transit.did, pair.transit.public_jwk)
    verify_facts(facts, at_transit["signature"], pair.city.did, pair.city.public_jwk)
    return facts


def test_a_pull_is_logged_on_both_sides_and_each_holds_the_others_signature(pair: TransferPair) -> None:
    pair.publish_file("evidence-pull", CSV)
    agreement_id, consumer_id, provider_id = pair.pull_started("evidence-pull")
    endpoint, token, _ = pair.edr(consumer_id)
    got = httpx.get(endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert got.content == CSV
    acted(pair.tapi, consumer_id, "complete")
    pair.both(consumer_id, provider_id, "COMPLETED")

    # The state change and its entry commit together: once COMPLETED shows, the entry is there.
    provider_done = [
        e for e in entries(pair.capi) if e["kind"] == "transfer.completed" and e["transferId"] == provider_id
    ]
    assert len(provider_done) == 1
    done = provider_done[0]
    assert (done["bytes"], done["payloadSha256"], done["records"]) == (len(CSV), SHA, 3)
    assert (done["agreementId"], done["dataset"], done["counterParty"], done["role"]) == (
        agreement_id,
        "evidence-pull",
        pair.transit.did,
        "provider",
    )
    assert done["policyDecision"]["allowed"] is True
    started = logged(pair.capi, "transfer.started", transferId=provider_id)
    assert started["bytes"] == 0
    consumer_done = logged(pair.tapi, "transfer.completed", transferId=consumer_id)
    assert (consumer_done["counterParty"], consumer_done["role"]) == (pair.city.did, "consumer")
    logged(pair.tapi, "transfer.started", transferId=consumer_id)

    facts = _both_signed(pair, consumer_id, provider_id, "completed")
    assert (facts["bytes"], facts["payloadSha256"], facts["records"]) == (len(CSV), SHA, 3)
    assert facts["consumerPid"] == transfer(pair.tapi, consumer_id)["consumerPid"]
    assert _both_signed(pair, consumer_id, provider_id, "started")["bytes"] == 0

    # Data after completion is refused, and the refusal is logged with its reason.
    refused(httpx.get(endpoint, headers={"Authorization": f"Bearer {token}"}), 403, "state")
    refusal = logged(pair.capi, "refusal", transferId=provider_id, code="access.state")
    assert "COMPLETED" in refusal["reason"]

    bundle = pair.capi.get(f"{LOG}/export", params={"from": "2020-01-01"})
    assert bundle.status_code == 200, bundle.text
    report = verify_bundle(io.BytesIO(bundle.content))
    assert report.ok, report.render()
    assert "transfer receipt(s): the counter-party's signatures verify" in report.render()


def test_a_push_is_logged_with_the_hash_of_the_whole_stream(pair: TransferPair) -> None:
    pair.publish_file("evidence-push", CSV)
    agreement_id = pair.agree("evidence-push")
    consumer_id = pair.request(agreement_id, "HttpData-PUSH", dataDestination=None)
    provider_id = pair.provider_side(consumer_id)["@id"]
    pair.both(consumer_id, provider_id, "COMPLETED")
    assert (pair.transit.data_dir / "sink" / "evidence-push").read_bytes() == CSV
    done = logged(pair.capi, "transfer.completed", transferId=provider_id)
    assert (done["bytes"], done["payloadSha256"], done["records"]) == (len(CSV), SHA, 3)
    assert done["format"] == "HttpData-PUSH"
    facts = _both_signed(pair, consumer_id, provider_id, "completed")
    assert facts["payloadSha256"] == SHA

    # Transit checks a statement about a push into its own sink against what arrived there.
    city_key = load_private_key(pair.city.data_dir / "keys" / "private-key.pem")
    other = {**facts, "payloadSha256": "0" * 64}
    answer = httpx.post(
        f"{pair.transit.base_url}/log/receipts",
        json={"facts": other, "signature": sign_facts(other, city_key, pair.city.did)},
        headers=peer_headers(pair.city.did, city_key, pair.transit.did),
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "receipt.mismatch"
    assert SHA in answer.json()["message"]
    logged(pair.tapi, "refusal", code="receipt.mismatch", counterParty=pair.city.did)


def test_refused_requests_are_logged_with_their_reason(pair: TransferPair) -> None:
    contract = policy_body("contract-evidence-research", [rule(constraint("purpose", "eq", "research"))])
    pair.publish_file("evidence-research", CSV, contract=contract)
    agreement_id = pair.agree("evidence-research")
    refused_id = pair.request(agreement_id, purpose="marketing")
    wait_state(pair.tapi, refused_id, "TERMINATED")
    entry = logged(pair.capi, "refusal", agreementId=agreement_id, code="dsp.TransferRequestMessage")
    assert (entry["counterParty"], entry["by"], entry["subject"]) == (pair.transit.did, "us", "transfer")
    assert "does not admit" in entry["reason"]
    terminated = logged(pair.tapi, "transfer.terminated", transferId=refused_id)
    assert "does not admit" in terminated["reason"]


def test_a_forged_or_tampered_statement_is_refused_and_logged(pair: TransferPair) -> None:
    pair.publish_file("evidence-forged", CSV)
    _, consumer_id, provider_id = pair.pull_started("evidence-forged")
    genuine = _both_signed(pair, consumer_id, provider_id, "started")
    city_key = load_private_key(pair.city.data_dir / "keys" / "private-key.pem")
    transit_key = load_private_key(pair.transit.data_dir / "keys" / "private-key.pem")
    url = f"{pair.transit.base_url}/log/receipts"

    def as_city() -> dict[str, str]:  # a fresh peer token per request (each is used once)
        return peer_headers(pair.city.did, city_key, pair.transit.did)

    claimed = {**genuine, "statement": "completed", "bytes": 10**9}
    tampered = {"facts": claimed, "signature": sign_facts(genuine, city_key, pair.city.did)}
    answer = httpx.post(url, json=tampered, headers=as_city(), timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "receipt.signature"
    assert "does not match these facts" in answer.json()["message"]

    # Signed with another key (transit's own), claiming to be city's statement.
    forged = {"facts": claimed, "signature": sign_facts(claimed, transit_key, pair.city.did)}
    answer = httpx.post(url, json=forged, headers=as_city(), timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "receipt.signature"

    bad = httpx.post(url, json={"facts": {"statement": "done"}}, headers=as_city(), timeout=30)
    assert bad.status_code == 400
    assert bad.json()["error"] == "receipt.malformed"
    unauthenticated = httpx.post(url, json=tampered, timeout=30)
    assert unauthenticated.status_code == 401

    refusal = logged(pair.tapi, "refusal", code="receipt.signature", counterParty=pair.city.did)
    assert refusal["by"] == "us"
    assert "does not match" in refusal["reason"]
    receipts = [
        e
        for e in entries(pair.tapi)
        if e["kind"] == "transfer.receipt"
        and e["transferId"] == consumer_id
        and e["statement"] == "completed"
    ]
    assert receipts == []  # nothing forged reached the log as a receipt


def test_a_personal_pull_logs_the_gates_decisions_as_counts_only(pair: TransferPair) -> None:
    trips = b"card_id,stop,at\ncard-of-alice,S1,08:00\ncard-of-bob,S2,08:05\n"
    personal = {
        "tessera:personal": True,
        "tessera:subjectField": "card_id",
        "tessera:consentPurpose": "research",
    }
    pair.publish_file("evidence-trips", trips, properties=personal)
    _, consumer_id, provider_id = pair.pull_started("evidence-trips")
    endpoint, token, _ = pair.edr(consumer_id)
    served = httpx.get(endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert served.status_code == 200
    acted(pair.tapi, consumer_id, "complete")
    pair.both(consumer_id, provider_id, "COMPLETED")
    done = logged(pair.capi, "transfer.completed", transferId=provider_id)
    # No consent service: the closed gate withheld both records, and the log says so in counts.
    assert done["consent"] == {"decisionIds": ["closed-gate"], "released": 0, "withheld": 2}
    assert done["records"] == 0
    assert done["payloadSha256"] == hashlib.sha256(served.content).hexdigest()
    logs = json.dumps(entries(pair.capi) + entries(pair.tapi))
    assert "card-of-alice" not in logs
    assert "card-of-bob" not in logs
