"""Contract negotiation through the Management API, between two real connector processes.

city (the provider) and transit (the consumer) are made with ``tessera init``
and ``tessera dataspace add`` and run with ``tessera serve``, once for this
module; each test negotiates for its own assets. The operators' side is the
EDC v3 ``contractnegotiations`` / ``contractagreements`` API; manual
approval is exercised through every action, so that each DSP transition is
reached the way an operator reaches it.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from catalog.jsonld import EDC_NS
from contracts.models import AgreementRow
from identity.keys import load_private_key
from identity.tokens import issue_token
from identity.trustlist import add_member
from runtime.participant import init_participant
from tests.catalog_helpers import CATALOG_REQUEST, DSP_CATALOG, constraint, edc_error, policy_body, rule
from tests.conftest import free_port
from tests.helpers import public_jwk_of
from tests.negotiation_helpers import (
    AGREEMENTS,
    DSP_NEGOTIATIONS,
    MANAGEMENT_CONTEXT,
    NEGOTIATIONS,
    Hit,
    Node,
    act,
    acted,
    agreement_rows,
    assert_signed_by_both,
    catalog_offer,
    connector_pair,
    contract_request,
    counterpart,
    dsp,
    fake_peer,
    message_errors,
    negotiation,
    publish,
    query_negotiations,
    run_cli,
    running,
    start_negotiation,
    wait_for,
)

pytestmark = pytest.mark.slow


@dataclass
class Pair:
    city: Node
    transit: Node
    capi: httpx.Client  # city's Management API
    tapi: httpx.Client  # transit's Management API

    def negotiate(self, asset_id: str, **members: Any) -> tuple[str, str]:
        """Transit asks for ``asset_id``'s catalog offer; (transit's negotiation id, city's)."""
        offer = catalog_offer(self.tapi, self.city.did, self.city.dsp_url, asset_id)
        body = contract_request(self.city.did, self.city.dsp_url, offer, asset_id, **members)
        consumer_id = start_negotiation(self.tapi, body)
        consumer_pid = negotiation(self.tapi, consumer_id)["consumerPid"]
        provider_id = counterpart(self.capi, consumer_pid)["@id"]
        return consumer_id, provider_id

    def both(self, consumer_id: str, provider_id: str, *states: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return wait_for(self.tapi, consumer_id, *states), wait_for(self.capi, provider_id, *states)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    city, transit = connector_pair(tmp_path_factory.mktemp("negotiation"), run_cli)
    with ExitStack() as stack:
        with running(stack, city, transit):
            pass
        yield Pair(city, transit, stack.enter_context(city.api()), stack.enter_context(transit.api()))


def _still(api: httpx.Client, negotiation_id: str, state: str, seconds: float = 0.5) -> None:
    """The negotiation stays in ``state`` (it waits for an operator)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = negotiation(api, negotiation_id)
        assert found["state"] == state, found
        time.sleep(0.1)


def _refused(response: httpx.Response, status: int, *needles: str) -> None:
    edc_error(response, status, "ObjectConflict" if status == 409 else "ObjectNotFound", *needles)


def _stored_agreement(node: Node, agreement_id: str) -> AgreementRow:
    engine = node.engine()
    try:
        [row] = [r for r in agreement_rows(engine) if r.id == agreement_id]
    finally:
        engine.dispose()
    return row


# ---------------------------------------------------------------- automatic


def test_automatic_negotiation_stores_the_agreement_signed_by_both_on_both_sides(pair: Pair) -> None:
    publish(pair.capi, "auto-stops")
    consumer_id, provider_id = pair.negotiate("auto-stops")
    consumer, provider = pair.both(consumer_id, provider_id, "FINALIZED", "TERMINATED")
    assert (consumer["state"], provider["state"]) == ("FINALIZED", "FINALIZED"), (consumer, provider)
    assert (consumer["type"], provider["type"]) == ("CONSUMER", "PROVIDER")
    assert consumer["counterPartyId"] == pair.city.did
    assert provider["counterPartyId"] == pair.transit.did
    assert consumer["counterPartyAddress"] == pair.city.dsp_url
    assert provider["counterPartyAddress"] == pair.transit.dsp_url
    assert (consumer["providerPid"], consumer["consumerPid"]) == (
        provider["providerPid"],
        provider["consumerPid"],
    )
    assert consumer["protocol"] == "dataspace-protocol-http:2025-1"
    assert "errorDetail" not in consumer
    agreement_id = consumer["contractAgreementId"]
    assert provider["contractAgreementId"] == agreement_id

    state = pair.tapi.get(f"{NEGOTIATIONS}/{consumer_id}/state")
    assert state.status_code == 200, state.text
    assert state.json()["state"] == "FINALIZED"
    assert state.json()["@type"] == "NegotiationState"

    # Both sides hold the agreement, each signature verifying with its party's own key.
    for node in (pair.city, pair.transit):
        row = _stored_agreement(node, agreement_id)
        assert (row.provider_did, row.consumer_did, row.asset_id) == (
            pair.city.did,
            pair.transit.did,
            "auto-stops",
        )
        assert_signed_by_both(
            row, (pair.city.did, pair.city.public_jwk), (pair.transit.did, pair.transit.public_jwk)
        )

    for api, own_id in ((pair.tapi, consumer_id), (pair.capi, provider_id)):
        shown = api.get(f"{NEGOTIATIONS}/{own_id}/agreement")
        assert shown.status_code == 200, shown.text
        agreement = shown.json()
        assert agreement["@type"] == "ContractAgreement"
        assert agreement["@id"] == agreement_id
        assert (agreement["providerId"], agreement["consumerId"], agreement["assetId"]) == (
            pair.city.did,
            pair.transit.did,
            "auto-stops",
        )
        assert agreement["signedBy"] == ["provider", "consumer"]
        assert api.get(f"{AGREEMENTS}/{agreement_id}").json() == agreement
        back = api.get(f"{AGREEMENTS}/{agreement_id}/negotiation")
        assert back.status_code == 200, back.text
        assert back.json()["@id"] == own_id
        listed = api.post(
            f"{AGREEMENTS}/request",
            json={
                "@context": {"@vocab": EDC_NS},
                "@type": "QuerySpec",
                "filterExpression": [
                    {"operandLeft": "assetId", "operator": "=", "operandRight": "auto-stops"}
                ],
            },
        )
        assert listed.status_code == 200, listed.text
        assert [a["@id"] for a in listed.json()] == [agreement_id]

    assert [n["@id"] for n in query_negotiations(pair.tapi, assetId="auto-stops", state="FINALIZED")] == [
        consumer_id
    ]
    assert [
        n["@id"] for n in query_negotiations(pair.capi, counterPartyId=pair.transit.did, assetId="auto-stops")
    ] == [provider_id]
    edc_error(
        pair.tapi.get(f"{NEGOTIATIONS}/no-such-negotiation"), 404, "ObjectNotFound", "no-such-negotiation"
    )
    edc_error(pair.tapi.get(f"{AGREEMENTS}/no-such-agreement"), 404, "ObjectNotFound", "no-such-agreement")
    edc_error(pair.tapi.get(f"{AGREEMENTS}/no-such-agreement/negotiation"), 404, "ObjectNotFound")


def test_initial_request_is_answered_before_any_callback(pair: Pair, tmp_path: Path) -> None:
    """A probe member sends the initial request over a raw socket and reads nothing; when city's
    first callback reaches the probe's address, city's 201 must already be waiting in the socket."""
    publish(pair.capi, "ordered-stops")
    probe_dir = tmp_path / "probe"
    init_participant(probe_dir, "probe", free_port())
    probe_key = load_private_key(probe_dir / "keys" / "private-key.pem")
    probe_did = Node("probe", probe_dir, 0).did

    def token() -> str:
        return "Bearer " + issue_token(probe_key, probe_did, pair.city.did)

    sock: socket.socket | None = None
    answered_first: list[bool] = []

    def respond(hit: Hit) -> tuple[int, Any]:
        if hit.path.endswith("/agreement") and sock is not None:
            answered_first.append(bool(select.select([sock], [], [], 0)[0]))
        return 200, None

    with fake_peer(respond) as probe:
        engine = pair.city.engine()
        try:
            with Session(engine) as session:
                add_member(
                    session,
                    probe_did,
                    probe.dsp_url,
                    public_jwk_of(probe_dir),
                    memberships=["transport-operator"],
                )
        finally:
            engine.dispose()
        catalog = httpx.post(
            pair.city.base_url + DSP_CATALOG, json=CATALOG_REQUEST, headers={"Authorization": token()}
        ).json()
        offer = next(d for d in catalog["dataset"] if d["@id"] == "ordered-stops")["hasPolicy"][0]
        for attempt in range(3):
            consumer_pid = f"urn:uuid:probe-{attempt}-{time.time_ns()}"
            body = json.dumps(
                dsp(
                    "ContractRequestMessage",
                    consumerPid=consumer_pid,
                    offer={**offer, "target": "ordered-stops"},
                    callbackAddress=probe.dsp_url,
                )
            ).encode()
            request = (
                f"POST {DSP_NEGOTIATIONS}/request HTTP/1.1\r\nHost: 127.0.0.1:{pair.city.port}\r\n"
                f"Authorization: {token()}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
            sock = socket.create_connection(("127.0.0.1", pair.city.port))
            try:
                sock.sendall(request)
                [callback] = probe.wait_for(f"/negotiations/{consumer_pid}/agreement")
                assert message_errors(callback.body) == [], callback.body
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
            finally:
                sock.close()
            head, _, payload = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 201"), head
            assert json.loads(payload)["consumerPid"] == consumer_pid
        assert answered_first == [True, True, True], "the 201 was in the socket before each first callback"


# ---------------------------------------------------------------- manual approval, every action


def test_manual_provider_waits_for_agree_then_finalize(pair: Pair) -> None:
    publish(pair.capi, "manual-stops", approval="manual")
    consumer_id, provider_id = pair.negotiate("manual-stops")
    pair.both(consumer_id, provider_id, "REQUESTED")
    _still(pair.capi, provider_id, "REQUESTED")
    assert negotiation(pair.capi, provider_id)["approval"] == "manual"

    # Wrong role: 409, naming who may; the wrong moment: 409; no such action or negotiation: 404.
    terms = _offer_body("terms-1", "research")
    for action, body in (("agree", None), ("finalize", None), ("offer", terms)):
        _refused(act(pair.tapi, consumer_id, action, body), 409, "only the provider", "consumer")
    for action, body in (("accept", None), ("verify", None), ("request", terms)):
        _refused(act(pair.capi, provider_id, action, body), 409, "only the consumer", "provider")
    _refused(act(pair.capi, provider_id, "finalize"), 409, "REQUESTED")
    _refused(act(pair.capi, provider_id, "approve"), 404, "approve")
    _refused(act(pair.capi, "no-such-negotiation", "agree"), 404, "no-such-negotiation")
    assert negotiation(pair.capi, provider_id)["state"] == "REQUESTED"

    acted(pair.capi, provider_id, "agree")
    pair.both(consumer_id, provider_id, "VERIFIED")  # transit (automatic) verified by itself
    _still(pair.capi, provider_id, "VERIFIED")
    _refused(act(pair.capi, provider_id, "agree"), 409, "VERIFIED")
    acted(pair.capi, provider_id, "finalize")
    pair.both(consumer_id, provider_id, "FINALIZED")


def test_manual_consumer_verifies_by_hand(pair: Pair) -> None:
    publish(pair.capi, "verify-stops")
    consumer_id, provider_id = pair.negotiate("verify-stops", approval="manual")
    consumer, _ = pair.both(consumer_id, provider_id, "AGREED")
    assert consumer["approval"] == "manual"
    agreement_id = consumer["contractAgreementId"]
    _still(pair.tapi, consumer_id, "AGREED")
    # The consumer holds the provider's signed agreement, and has signed nothing: no operator has.
    waiting = _stored_agreement(pair.transit, agreement_id)
    assert waiting.provider_signature
    assert waiting.consumer_signature is None
    _refused(act(pair.tapi, consumer_id, "accept"), 409, "AGREED")
    acted(pair.tapi, consumer_id, "verify")
    pair.both(consumer_id, provider_id, "FINALIZED")
    parties = (pair.city.did, pair.city.public_jwk), (pair.transit.did, pair.transit.public_jwk)
    for node in (pair.city, pair.transit):  # the operator's counter-signature, on both sides
        assert_signed_by_both(_stored_agreement(node, agreement_id), *parties)


def _offer_body(offer_id: str, purpose: str) -> dict[str, Any]:
    return {
        "@context": [MANAGEMENT_CONTEXT],
        "policy": {
            "@context": "http://www.w3.org/ns/odrl.jsonld",
            "@id": offer_id,
            "@type": "Offer",
            "permission": [
                {
                    "action": "use",
                    "constraint": [{"leftOperand": "purpose", "operator": "eq", "rightOperand": purpose}],
                }
            ],
        },
    }


def test_offers_counter_requests_and_acceptance_reach_every_transition(pair: Pair) -> None:
    publish(pair.capi, "offered-stops", approval="manual")
    catalog = catalog_offer(pair.tapi, pair.city.did, pair.city.dsp_url, "offered-stops")
    consumer_id, provider_id = pair.negotiate("offered-stops", approval="manual")
    pair.both(consumer_id, provider_id, "REQUESTED")

    # REQUESTED -> OFFERED: the provider counter-offers.
    acted(pair.capi, provider_id, "offer", _offer_body("counter-1", "research"))
    consumer, _ = pair.both(consumer_id, provider_id, "OFFERED")
    assert consumer["offer"]["permission"][0]["constraint"][0]["rightOperand"] == "research"
    _still(pair.tapi, consumer_id, "OFFERED")

    # OFFERED -> REQUESTED: the consumer asks for the catalog's terms again.
    counter_request = {
        "@context": [MANAGEMENT_CONTEXT],
        "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", **catalog, "@type": "Offer"},
    }
    acted(pair.tapi, consumer_id, "request", counter_request)
    pair.both(consumer_id, provider_id, "REQUESTED")

    # REQUESTED -> OFFERED -> ACCEPTED: a second counter-offer, accepted.
    acted(pair.capi, provider_id, "offer", _offer_body("counter-2", "planning"))
    pair.both(consumer_id, provider_id, "OFFERED")
    _refused(act(pair.tapi, consumer_id, "verify"), 409, "OFFERED")
    acted(pair.tapi, consumer_id, "accept")
    pair.both(consumer_id, provider_id, "ACCEPTED")
    _still(pair.capi, provider_id, "ACCEPTED")

    # ACCEPTED -> AGREED -> VERIFIED -> FINALIZED, each by an operator.
    acted(pair.capi, provider_id, "agree")
    pair.both(consumer_id, provider_id, "AGREED")
    acted(pair.tapi, consumer_id, "verify")
    pair.both(consumer_id, provider_id, "VERIFIED")
    acted(pair.capi, provider_id, "finalize")
    pair.both(consumer_id, provider_id, "FINALIZED")

    agreement = pair.tapi.get(f"{NEGOTIATIONS}/{consumer_id}/agreement").json()
    assert "planning" in json.dumps(agreement["policy"]), "the agreement carries the accepted terms"
    assert agreement["signedBy"] == ["provider", "consumer"]


def test_terminate_from_either_side_records_the_reason_on_both(pair: Pair) -> None:
    publish(pair.capi, "ended-stops", approval="manual")
    terminate = {"@context": {"@vocab": EDC_NS}, "@type": "TerminateNegotiation", "reason": "budget cut"}

    consumer_id, provider_id = pair.negotiate("ended-stops")
    pair.both(consumer_id, provider_id, "REQUESTED")
    acted(pair.tapi, consumer_id, "terminate", terminate)
    consumer, provider = pair.both(consumer_id, provider_id, "TERMINATED")
    assert consumer["errorDetail"] == "budget cut"
    assert provider["errorDetail"] == "terminated by the counter-party: budget cut"

    consumer_id, provider_id = pair.negotiate("ended-stops", approval="manual")
    pair.both(consumer_id, provider_id, "REQUESTED")
    acted(pair.capi, provider_id, "agree")
    pair.both(consumer_id, provider_id, "AGREED")
    acted(pair.capi, provider_id, "terminate", {**terminate, "reason": "licence withdrawn"})
    consumer, provider = pair.both(consumer_id, provider_id, "TERMINATED")
    assert provider["errorDetail"] == "licence withdrawn"
    assert consumer["errorDetail"] == "terminated by the counter-party: licence withdrawn"

    # Finished is finished: no action moves it, and it stays readable.
    for api, negotiation_id, action in (
        (pair.tapi, consumer_id, "verify"),
        (pair.tapi, consumer_id, "terminate"),
        (pair.capi, provider_id, "finalize"),
    ):
        _refused(act(api, negotiation_id, action), 409, "TERMINATED")
    assert negotiation(pair.tapi, consumer_id)["state"] == "TERMINATED"


def test_a_contract_policy_refusing_the_consumer_terminates_saying_why(pair: Pair) -> None:
    utilities_only = policy_body("utilities-only", [rule(constraint("membership", "isAnyOf", ["utility"]))])
    publish(pair.capi, "refused-stops", contract=utilities_only)
    consumer_id, provider_id = pair.negotiate("refused-stops")
    consumer, provider = pair.both(consumer_id, provider_id, "TERMINATED", "FINALIZED")
    assert (consumer["state"], provider["state"]) == ("TERMINATED", "TERMINATED")
    for detail in (consumer["errorDetail"], provider["errorDetail"]):
        for needle in ("permission", "membership", "utility"):
            assert needle in detail, detail
    assert "contract policy does not admit" in consumer["errorDetail"]
    assert "contractAgreementId" not in consumer

    # With manual approval the operator is told why, and the negotiation waits (still refusable).
    publish(pair.capi, "refused-manual", contract=utilities_only, approval="manual")
    consumer_id, provider_id = pair.negotiate("refused-manual")
    pair.both(consumer_id, provider_id, "REQUESTED")
    _refused(act(pair.capi, provider_id, "agree"), 409, "does not admit", "membership")
    assert negotiation(pair.capi, provider_id)["state"] == "REQUESTED"
    acted(pair.capi, provider_id, "terminate")
    consumer, _ = pair.both(consumer_id, provider_id, "TERMINATED")
    assert consumer["errorDetail"] == "terminated by the counter-party: terminated by the operator"


def test_create_refuses_bad_contract_requests(pair: Pair) -> None:
    publish(pair.capi, "bad-stops")
    offer = catalog_offer(pair.tapi, pair.city.did, pair.city.dsp_url, "bad-stops")
    good = contract_request(pair.city.did, pair.city.dsp_url, offer, "bad-stops")
    before = query_negotiations(pair.tapi)
    for body, status, error_type, needle in (
        (
            {**good, "counterPartyAddress": "http://127.0.0.1:9/dsp/2025-1"},
            400,
            "InvalidRequest",
            "counterPartyAddress",
        ),
        ({**good, "counterPartyId": "did:web:nobody.example.org"}, 400, "InvalidRequest", "not a member"),
        ({**good, "protocol": "dataspace-protocol-http"}, 400, "ValidationFailure", "protocol"),
        ({k: v for k, v in good.items() if k != "policy"}, 400, "ValidationFailure", "policy"),
        ({**good, "approval": "sometimes"}, 400, "ValidationFailure", "approval"),
    ):
        edc_error(pair.tapi.post(NEGOTIATIONS, json=body), status, error_type, needle)
    assert query_negotiations(pair.tapi) == before
