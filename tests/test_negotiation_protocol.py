"""DSP 2025-1 contract negotiation, message by message, against in-process connectors.

The provider side: city runs in-process (with its delivery worker); the test
plays the consumer (transit), sending messages with transit's tokens, and a
recording fake server stands at transit's registered DSP address, receiving
city's callbacks. The consumer side: transit runs in-process and the test
plays the provider, the fake answering transit's requests. Every message
either side sends and every body it answers is checked against the DSP
schemas; every refusal is a ContractNegotiationError and changes nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import connector.negotiations as negotiations_module
from catalog.jsonld import EDC_NS
from connector.negotiations import delivered
from contracts.signing import agreement_key_id, sign_agreement, verify_agreement_signature
from tests.catalog_helpers import (
    CATALOG_REQUEST,
    DSP_CATALOG,
    POLICIES,
    bearer,
    constraint,
    management,
    policy_body,
    rule,
    trust,
)
from tests.conftest import Participant, private_key_of
from tests.negotiation_helpers import (
    DSP_NEGOTIATIONS,
    NEGOTIATIONS,
    FakePeer,
    Hit,
    acted,
    agreement_rows,
    all_negotiations,
    dsp,
    fake_peer,
    message_errors,
    negotiation,
    negotiation_error,
    publish,
    state_object,
    trust_address,
    wait_for,
    wait_until,
)

MakeConnector = Callable[..., Participant]
SIGNATURE = "https://w3id.org/tessera/v1/ns/signature"


def _pid() -> str:
    import uuid

    return f"urn:uuid:{uuid.uuid4()}"


def _post(
    client: TestClient, sender: Participant, receiver: Participant, path: str, body: Any
) -> httpx.Response:
    """A DSP message from ``sender`` (with a fresh token) to ``receiver``'s negotiation endpoints."""
    response: httpx.Response = client.post(
        f"{DSP_NEGOTIATIONS}{path}", json=body, headers=bearer(sender, receiver)
    )
    return response


def _get(client: TestClient, sender: Participant, receiver: Participant, pid: str) -> httpx.Response:
    response: httpx.Response = client.get(f"{DSP_NEGOTIATIONS}/{pid}", headers=bearer(sender, receiver))
    return response


def _quiet(participant: Participant) -> list[dict[str, Any]]:
    """Every negotiation row, once none has a message to deliver or a lease (the worker is idle)."""
    found: list[dict[str, Any]] = []

    def idle() -> bool:
        found[:] = all_negotiations(participant.core.engine)
        return all(r["pending_message"] is None and r["lease_owner"] is None for r in found)

    wait_until(idle, what="the outbox to empty")
    return found


def _snapshot(participant: Participant) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a refused message must not change: every negotiation and agreement row."""
    rows = _quiet(participant)
    agreements = [a.model_dump() for a in agreement_rows(participant.core.engine)]
    return rows, agreements


# ---------------------------------------------------------------- the provider's side


@dataclass
class ProviderSide:
    city: Participant  # the provider, in-process
    transit: Participant  # the consumer the test plays (its keys)
    utility: Participant  # another member: a stranger to transit's negotiations
    fake: FakePeer  # transit's registered DSP address: city's callbacks land here
    client: TestClient
    offers: dict[str, dict[str, Any]]  # asset id -> the offer transit sees in city's catalog

    def request(self, asset_id: str = "stops", **members: Any) -> httpx.Response:
        consumer_pid = members.pop("consumerPid", _pid())
        offer = members.pop("offer", {**self.offers[asset_id], "target": asset_id})
        body = dsp(
            "ContractRequestMessage",
            consumerPid=consumer_pid,
            offer=offer,
            callbackAddress=members.pop("callbackAddress", self.fake.dsp_url),
            **members,
        )
        return _post(self.client, self.transit, self.city, "/request", body)

    def send(self, path: str, body: Any, sender: Participant | None = None) -> httpx.Response:
        return _post(self.client, sender or self.transit, self.city, path, body)

    def state(self, provider_pid: str, sender: Participant | None = None) -> httpx.Response:
        return _get(self.client, sender or self.transit, self.city, provider_pid)

    def wait_state(self, provider_pid: str, state: str) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (body := state_object(self.state(provider_pid))) and body["state"] == state and body,
                what=f"{provider_pid} to be {state}",
            )
        )


@contextmanager
def provider_side(
    make_connector: MakeConnector, database_url: str | None = None, approval: str = "automatic"
) -> Iterator[ProviderSide]:
    city = make_connector("city", database_url=database_url)
    transit, utility = make_connector("transit"), make_connector("utility")
    with fake_peer() as fake, management(city) as client:
        trust_address(city, transit, fake.dsp_url, ["transport-operator"])
        trust(city, utility, ["utility"])
        publish(client, "stops", approval=approval)
        publish(client, "timetable", approval=approval)
        catalog = client.post(DSP_CATALOG, json=CATALOG_REQUEST, headers=bearer(transit, city)).json()
        offers = {d["@id"]: d["hasPolicy"][0] for d in catalog["dataset"]}
        yield ProviderSide(city, transit, utility, fake, client, offers)


def _verification(
    side: ProviderSide, provider_pid: str, consumer_pid: str, agreement: dict[str, Any]
) -> dict[str, Any]:
    signature = sign_agreement(agreement, private_key_of(side.transit), agreement_key_id(side.transit.did))
    return dsp(
        "ContractAgreementVerificationMessage",
        providerPid=provider_pid,
        consumerPid=consumer_pid,
        **{SIGNATURE: signature},
    )


def test_provider_runs_the_automatic_negotiation_with_conformant_messages(
    make_connector: MakeConnector, database_url: str
) -> None:
    with provider_side(make_connector, database_url) as side:
        consumer_pid = _pid()
        answer = state_object(side.request(consumerPid=consumer_pid), 201, "REQUESTED")
        provider_pid = answer["providerPid"]
        assert answer["consumerPid"] == consumer_pid
        assert provider_pid.startswith("urn:uuid:")
        assert provider_pid != consumer_pid

        # The agreement comes to transit's callback address, signed by city.
        [hit] = side.fake.wait_for(f"/negotiations/{consumer_pid}/agreement")
        message = hit.body
        assert message_errors(message) == [], message
        assert (message["providerPid"], message["consumerPid"]) == (provider_pid, consumer_pid)
        agreement = message["agreement"]
        assert (agreement["assigner"], agreement["assignee"], agreement["target"]) == (
            side.city.did,
            side.transit.did,
            "stops",
        )
        assert hit.headers["Authorization"].startswith("Bearer ")
        city_key = json.loads((side.city.settings.data_dir / "keys" / "public-key.jwk").read_text())
        verify_agreement_signature(agreement, message[SIGNATURE], city_key, expected_kid_did=side.city.did)
        side.wait_state(provider_pid, "AGREED")

        # Transit verifies (counter-signing); city finalizes.
        response = side.send(
            f"/{provider_pid}/agreement/verification",
            _verification(side, provider_pid, consumer_pid, agreement),
        )
        assert response.status_code == 200, response.text
        [finalized] = side.fake.wait_for(f"/negotiations/{consumer_pid}/events")
        assert message_errors(finalized.body) == [], finalized.body
        assert finalized.body["eventType"] == "FINALIZED"
        assert finalized.at > hit.at
        side.wait_state(provider_pid, "FINALIZED")
        [stored] = agreement_rows(side.city.core.engine)
        assert stored.id == agreement["@id"]
        assert stored.consumer_signature
        assert stored.provider_signature
        transit_key = json.loads((side.transit.settings.data_dir / "keys" / "public-key.jwk").read_text())
        verify_agreement_signature(
            agreement, stored.consumer_signature, transit_key, expected_kid_did=side.transit.did
        )

        # A finished negotiation stays readable, and takes no more messages.
        state_object(side.state(provider_pid), 200, "FINALIZED")
        before = _snapshot(side.city)
        for path, body in (
            (f"/{provider_pid}/termination", _termination(provider_pid, consumer_pid)),
            (
                f"/{provider_pid}/agreement/verification",
                _verification(side, provider_pid, consumer_pid, agreement),
            ),
            (f"/{provider_pid}/events", _event("ACCEPTED", provider_pid, consumer_pid)),
            (f"/{provider_pid}/request", _counter_request(side, provider_pid, consumer_pid)),
        ):
            negotiation_error(side.send(path, body), 409, "FINALIZED")
        assert _snapshot(side.city) == before
        assert len(side.fake.posted()) == 2, "nothing more was sent"


def _termination(provider_pid: str, consumer_pid: str, reason: str = "changed our mind") -> dict[str, Any]:
    return dsp(
        "ContractNegotiationTerminationMessage",
        providerPid=provider_pid,
        consumerPid=consumer_pid,
        code="consumer",
        reason=[reason],
    )


def _event(event: str, provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    return dsp(
        "ContractNegotiationEventMessage", providerPid=provider_pid, consumerPid=consumer_pid, eventType=event
    )


def _counter_request(
    side: ProviderSide, provider_pid: str, consumer_pid: str, asset_id: str = "stops"
) -> dict[str, Any]:
    return dsp(
        "ContractRequestMessage",
        providerPid=provider_pid,
        consumerPid=consumer_pid,
        offer={**side.offers[asset_id], "target": asset_id},
    )


def test_provider_refuses_messages_out_of_turn_and_strangers(make_connector: MakeConnector) -> None:
    with provider_side(make_connector, approval="manual") as side:
        consumer_pid = _pid()
        provider_pid = state_object(side.request(consumerPid=consumer_pid), 201, "REQUESTED")["providerPid"]
        time.sleep(0.3)
        assert side.fake.posted() == [], "a manual provider waits for its operator"
        before = _snapshot(side.city)
        agreement = {
            "@id": _pid(),
            "@type": "Agreement",
            "target": "stops",
            "assigner": side.transit.did,
            "assignee": side.city.did,
            "timestamp": "2026-01-01T00:00:00Z",
            "permission": [{"action": "use"}],
        }
        out_of_turn = {
            # The consumer may not verify what was never agreed, accept what was never offered...
            "verification before an agreement": (
                f"/{provider_pid}/agreement/verification",
                dsp(
                    "ContractAgreementVerificationMessage", providerPid=provider_pid, consumerPid=consumer_pid
                ),
            ),
            "ACCEPTED before an offer": (
                f"/{provider_pid}/events",
                _event("ACCEPTED", provider_pid, consumer_pid),
            ),
            # ...nor send what only a provider sends.
            "a FINALIZED event": (f"/{provider_pid}/events", _event("FINALIZED", provider_pid, consumer_pid)),
            "an offer": (
                f"/{provider_pid}/offers",
                dsp(
                    "ContractOfferMessage",
                    providerPid=provider_pid,
                    consumerPid=consumer_pid,
                    offer={**side.offers["stops"], "target": "stops"},
                ),
            ),
            "an agreement": (
                f"/{provider_pid}/agreement",
                dsp(
                    "ContractAgreementMessage",
                    providerPid=provider_pid,
                    consumerPid=consumer_pid,
                    agreement=agreement,
                ),
            ),
            # (the same request again would be a repeat: see test_negotiation_repeats)
            "a request for other terms while REQUESTED": (
                f"/{provider_pid}/request",
                _counter_request(side, provider_pid, consumer_pid, "timetable"),
            ),
        }
        for name, (path, body) in out_of_turn.items():
            assert message_errors(body) == [], (name, message_errors(body))
            response = side.send(path, body)
            assert 400 <= response.status_code < 500, (name, response.text)
            assert response.status_code != 404, (name, response.text)
            error = negotiation_error(response, response.status_code)
            assert (error["providerPid"], error["consumerPid"]) == (provider_pid, consumer_pid), name
            assert _snapshot(side.city) == before, name

        # An unknown pid, and a pid that is another member's negotiation, are both 404.
        negotiation_error(
            side.send(f"/{_pid()}/termination", _termination(_pid(), consumer_pid)), 404, "no negotiation"
        )
        negotiation_error(side.state(_pid()), 404, "no negotiation")
        stranger = side.send(
            f"/{provider_pid}/termination", _termination(provider_pid, consumer_pid), side.utility
        )
        negotiation_error(stranger, 404, "no negotiation")
        negotiation_error(side.state(provider_pid, side.utility), 404)
        # pids in the body that are not this negotiation's
        mismatch = side.send(f"/{provider_pid}/termination", _termination(provider_pid, _pid()))
        negotiation_error(mismatch, 400, "do not match")
        assert _snapshot(side.city) == before

        # The consumer terminates: TERMINATED, with its reason; then nothing more is taken.
        response = side.send(
            f"/{provider_pid}/termination", _termination(provider_pid, consumer_pid, "found it elsewhere")
        )
        assert response.status_code == 200, response.text
        state_object(side.state(provider_pid), 200, "TERMINATED")
        [row] = all_negotiations(side.city.core.engine)
        assert row["state"] == "TERMINATED"
        assert "found it elsewhere" in row["error_detail"]
        after = _snapshot(side.city)
        for path, body in (
            (f"/{provider_pid}/termination", _termination(provider_pid, consumer_pid)),
            (f"/{provider_pid}/request", _counter_request(side, provider_pid, consumer_pid)),
        ):
            negotiation_error(side.send(path, body), 409, "TERMINATED")
        assert _snapshot(side.city) == after
        assert side.fake.posted() == [], "city never called back"


def test_provider_counter_offers_takes_acceptance_and_counter_requests(make_connector: MakeConnector) -> None:
    """A manual provider's operator offers; the consumer accepts over DSP, or asks again; every message
    city sends on the way is a valid DSP message, and so is its termination."""
    with provider_side(make_connector, approval="manual") as side:
        consumer_pid = _pid()
        provider_pid = state_object(side.request(consumerPid=consumer_pid), 201)["providerPid"]
        [row] = all_negotiations(side.city.core.engine)
        counter = {
            "@context": {"@vocab": EDC_NS},
            "policy": {
                "@context": "http://www.w3.org/ns/odrl.jsonld",
                "@id": "counter-1",
                "@type": "Offer",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [
                            {"leftOperand": "purpose", "operator": "eq", "rightOperand": "research"}
                        ],
                    }
                ],
            },
        }
        acted(side.client, row["id"], "offer", counter)
        [offered] = side.fake.wait_for(f"/negotiations/{consumer_pid}/offers")
        assert message_errors(offered.body) == [], offered.body
        assert offered.body["offer"]["@id"] == "counter-1"
        assert offered.body["offer"]["target"] == "stops"
        side.wait_state(provider_pid, "OFFERED")

        # The consumer asks for the catalog's terms again (OFFERED -> REQUESTED)...
        response = side.send(f"/{provider_pid}/request", _counter_request(side, provider_pid, consumer_pid))
        assert response.status_code == 200, response.text
        state_object(side.state(provider_pid), 200, "REQUESTED")
        acted(side.client, row["id"], "offer", counter)
        side.fake.wait_for(f"/negotiations/{consumer_pid}/offers", 2)
        side.wait_state(provider_pid, "OFFERED")
        # ...then accepts the counter-offer (OFFERED -> ACCEPTED).
        response = side.send(f"/{provider_pid}/events", _event("ACCEPTED", provider_pid, consumer_pid))
        assert response.status_code == 200, response.text
        state_object(side.state(provider_pid), 200, "ACCEPTED")
        # The same event again is not allowed in ACCEPTED: refused as a repeat, nothing changed.
        before = _snapshot(side.city)
        response = side.send(f"/{provider_pid}/events", _event("ACCEPTED", provider_pid, consumer_pid))
        negotiation_error(response, 409, "repeats")
        assert _snapshot(side.city) == before

        # city's operator terminates: the termination is a valid message, with the reason.
        acted(
            side.client,
            row["id"],
            "terminate",
            {"@context": {"@vocab": EDC_NS}, "reason": "no longer offered"},
        )
        [ended] = side.fake.wait_for(f"/negotiations/{consumer_pid}/termination")
        assert message_errors(ended.body) == [], ended.body
        assert ended.body["reason"] == ["no longer offered"]
        assert (ended.body["providerPid"], ended.body["consumerPid"]) == (provider_pid, consumer_pid)
        side.wait_state(provider_pid, "TERMINATED")

        # A contract policy that refuses transit: city terminates at once, saying why, in a valid message.
        utilities = policy_body("utilities-only", [rule(constraint("membership", "isAnyOf", ["utility"]))])
        publish(side.client, "for-utilities", contract=utilities)
        catalog = side.client.post(DSP_CATALOG, json=CATALOG_REQUEST, headers=bearer(side.transit, side.city))
        offer = next(d for d in catalog.json()["dataset"] if d["@id"] == "for-utilities")["hasPolicy"][0]
        refused_pid = _pid()
        state_object(
            side.request(consumerPid=refused_pid, offer={**offer, "target": "for-utilities"}),
            201,
            "REQUESTED",
        )
        [refusal] = side.fake.wait_for(f"/negotiations/{refused_pid}/termination")
        assert message_errors(refusal.body) == [], refusal.body
        assert "membership" in refusal.body["reason"][0]


def test_offers_must_be_current_offers_made_to_this_consumer(make_connector: MakeConnector) -> None:
    with provider_side(make_connector) as side:
        client = side.client
        # "hidden" is offered only to utilities: transit cannot see it, and cannot ask for it.
        only_utilities = policy_body(
            "only-utilities", [rule(constraint("membership", "isAnyOf", ["utility"]))]
        )
        publish(client, "hidden", access=only_utilities)
        utility_catalog = client.post(
            DSP_CATALOG, json=CATALOG_REQUEST, headers=bearer(side.utility, side.city)
        )
        hidden_offer = next(d for d in utility_catalog.json()["dataset"] if d["@id"] == "hidden")[
            "hasPolicy"
        ][0]
        stops = side.offers["stops"]
        timetable = side.offers["timetable"]
        made_up = {**stops, "@id": "made-up-offer"}
        forged = {**stops, "@id": "ZGVm:c3RvcHM=:MDAwMA=="}  # the form of an offer id, for no definition
        refused = {
            "a made-up id": (made_up, "stops", "not an offer this provider made"),
            "an id of our form for no definition": (forged, "stops", "no longer offered"),
            "another asset's offer": ({**timetable, "target": "stops"}, "stops", "not stops"),
            "an offer hidden from this consumer": (
                {**hidden_offer, "target": "hidden"},
                "hidden",
                "made to you",
            ),
        }
        before = _snapshot(side.city)
        for name, (offer, _asset, needle) in refused.items():
            response = side.request(offer=offer)
            negotiation_error(response, 400, needle)
            assert _snapshot(side.city) == before, name

        # The contract policy changes: the offer transit holds is outdated.
        changed = policy_body("contract-stops", [rule(constraint("purpose", "eq", "research"))])
        assert client.put(POLICIES, json=changed).status_code == 204
        negotiation_error(side.request(), 400, "outdated", "catalog again")
        assert _snapshot(side.city) == before
        # The offer in the fresh catalog is taken.
        fresh = client.post(DSP_CATALOG, json=CATALOG_REQUEST, headers=bearer(side.transit, side.city)).json()
        new_offer = next(d for d in fresh["dataset"] if d["@id"] == "stops")["hasPolicy"][0]
        assert new_offer["@id"] != stops["@id"]
        state_object(side.request(offer={**new_offer, "target": "stops"}), 201, "REQUESTED")


def test_callback_address_must_be_under_the_consumers_dsp_address(make_connector: MakeConnector) -> None:
    with provider_side(make_connector) as side, fake_peer() as elsewhere:
        registered = side.fake.dsp_url
        before = _snapshot(side.city)
        for callback in (
            elsewhere.dsp_url,  # another server
            side.fake.url + "/other",  # the right server, outside the DSP path
            side.fake.url + "/dsp/2025-1x",  # a prefix, not a path below it
            registered + "?next=" + elsewhere.url,  # a query
            registered.replace("127.0.0.1", "localhost"),  # the same machine by another name
        ):
            response = side.request(callbackAddress=callback)
            negotiation_error(response, 400, "callbackAddress", registered)
            assert _snapshot(side.city) == before, callback
        # Below the registered address is fine.
        state_object(side.request(callbackAddress=registered + "/"), 201, "REQUESTED")
        side.fake.wait_for("/agreement")
        time.sleep(0.3)
        assert elsewhere.hits == [], "city never called the other address"


def test_bad_messages_are_refused_with_negotiation_errors(make_connector: MakeConnector) -> None:
    with provider_side(make_connector, approval="manual") as side:
        consumer_pid = _pid()
        provider_pid = state_object(side.request(consumerPid=consumer_pid), 201)["providerPid"]
        offer = {**side.offers["stops"], "target": "stops"}
        request = dsp(
            "ContractRequestMessage", consumerPid=_pid(), offer=offer, callbackAddress=side.fake.dsp_url
        )
        before = _snapshot(side.city)

        def refused(path: str, body: Any, status: int, *needles: str, **kwargs: Any) -> None:
            headers = bearer(side.transit, side.city)
            if isinstance(body, bytes):
                response = side.client.post(f"{DSP_NEGOTIATIONS}{path}", content=body, headers=headers)
            else:
                response = side.client.post(f"{DSP_NEGOTIATIONS}{path}", json=body, headers=headers)
            negotiation_error(response, status, *needles)
            assert _snapshot(side.city) == before, (path, needles)

        without = {k: v for k, v in request.items() if k != "offer"}
        refused("/request", without, 400, "offer")
        refused("/request", {k: v for k, v in request.items() if k != "consumerPid"}, 400, "consumerPid")
        refused("/request", {k: v for k, v in request.items() if k != "callbackAddress"}, 400)
        refused("/request", {**request, "@type": "ContractOfferMessage"}, 400, "ContractRequestMessage")
        refused("/request", {**request, "offer": {**offer, "@type": "Agreement"}}, 400)
        refused("/request", {**request, "providerPid": provider_pid}, 400, "providerPid")
        refused("/request", b"{not json", 400, "JSON")
        refused("/request", [request], 400, "object")
        refused("/request", b"{" + b'"x": "' + b"a" * (256 * 1024) + b'"}', 413, "larger")
        refused(f"/{provider_pid}/events", _event("PAUSED", provider_pid, consumer_pid), 400, "eventType")
        refused(
            f"/{provider_pid}/events",
            {
                **_event("ACCEPTED", provider_pid, consumer_pid),
                "@type": "ContractNegotiationTerminationMessage",
            },
            400,
        )
        refused(
            f"/{provider_pid}/termination",
            dsp("ContractNegotiationTerminationMessage", providerPid=provider_pid),
            400,
            "consumerPid",
        )
        refused(
            f"/{provider_pid}/termination", {**_termination(provider_pid, consumer_pid), "reason": []}, 400
        )
        refused(
            f"/{provider_pid}/agreement/verification",
            _termination(provider_pid, consumer_pid),
            400,
            "ContractAgreementVerificationMessage",
        )

        # No token, or a replayed one: 401, still a ContractNegotiationError.
        no_token = side.client.post(f"{DSP_NEGOTIATIONS}/request", json=request)
        negotiation_error(no_token, 401)
        headers = bearer(side.transit, side.city)
        state_object(side.client.get(f"{DSP_NEGOTIATIONS}/{provider_pid}", headers=headers))
        negotiation_error(side.client.get(f"{DSP_NEGOTIATIONS}/{provider_pid}", headers=headers), 401)
        replayed = side.client.post(
            f"{DSP_NEGOTIATIONS}/{provider_pid}/termination",
            json=_termination(provider_pid, consumer_pid),
            headers=headers,
        )
        negotiation_error(replayed, 401)
        assert _snapshot(side.city) == before

        # A repeated initial request (the consumer retrying) gets the same negotiation, not a second one.
        again = state_object(side.request(consumerPid=consumer_pid), 201, "REQUESTED")
        assert again["providerPid"] == provider_pid
        assert _snapshot(side.city) == before


def test_a_refused_message_uses_up_its_token_and_a_bad_token_comes_first(
    make_connector: MakeConnector,
) -> None:
    """The token is recorded with what the message changes, in one commit; a refused message changes
    nothing but still uses its token up, and no token (or a replayed one) is a 401 whatever was sent."""
    with provider_side(make_connector, approval="manual") as side:
        consumer_pid = _pid()
        provider_pid = state_object(side.request(consumerPid=consumer_pid), 201)["providerPid"]
        before = _snapshot(side.city)
        url = f"{DSP_NEGOTIATIONS}/{provider_pid}"
        verification = dsp(
            "ContractAgreementVerificationMessage", providerPid=provider_pid, consumerPid=consumer_pid
        )
        termination = _termination(provider_pid, consumer_pid)

        # Not allowed now (409), then not valid (400): each token is spent all the same.
        for path, body, status in (
            ("/agreement/verification", verification, 409),
            ("/termination", {**termination, "reason": []}, 400),
        ):
            headers = bearer(side.transit, side.city)
            negotiation_error(side.client.post(f"{url}{path}", json=body, headers=headers), status)
            replayed = side.client.post(f"{url}/termination", json=termination, headers=headers)
            assert negotiation_error(replayed, 401)["reason"] == ["the token has been used before"]
            assert _snapshot(side.city) == before, path

        # No token: 401 before the body is judged, however large or broken it is.
        for content in (b"{" + b'"x": "' + b"a" * (256 * 1024) + b'"}', b"{not json"):
            negotiation_error(side.client.post(f"{url}/termination", content=content), 401)
        negotiation_error(side.client.post(f"{DSP_NEGOTIATIONS}/request", content=b"{not json"), 401)
        assert _snapshot(side.city) == before

        # A fresh token with an allowed message: applied.
        ok = side.client.post(f"{url}/termination", json=termination, headers=bearer(side.transit, side.city))
        assert ok.status_code == 200, ok.text
        assert _snapshot(side.city) != before


# ---------------------------------------------------------------- the consumer's side


@dataclass
class ConsumerSide:
    transit: Participant  # the consumer, in-process
    city: Participant  # the provider the test plays (its keys)
    utility: Participant  # another member
    fake: FakePeer  # city's registered DSP address: transit's messages land here
    client: TestClient
    provider_pids: dict[str, str]  # consumerPid -> the providerPid the fake answered with

    def start(self, asset_id: str = "stops", **members: Any) -> tuple[str, str]:
        """Start a negotiation at transit; (its id, its consumerPid) once the fake has the request."""
        offer = {
            "@id": f"offer-{asset_id}",
            "@type": "Offer",
            "assigner": self.city.did,
            "permission": [{"action": "use"}],
        }
        body = {
            "@context": {"@vocab": EDC_NS},
            "@type": "ContractRequest",
            "counterPartyId": self.city.did,
            "counterPartyAddress": self.fake.dsp_url,
            "protocol": "dataspace-protocol-http:2025-1",
            "policy": {
                "@context": "http://www.w3.org/ns/odrl.jsonld",
                **offer,
                "target": asset_id,
            },
            **members,
        }
        requests_before = len(self.fake.posted("/negotiations/request"))
        response = self.client.post(NEGOTIATIONS, json=body)
        assert response.status_code == 200, response.text
        negotiation_id = response.json()["@id"]
        consumer_pid = str(negotiation(self.client, negotiation_id)["consumerPid"])
        self.fake.wait_for("/negotiations/request", requests_before + 1)
        return negotiation_id, consumer_pid

    def send(self, path: str, body: Any, sender: Participant | None = None) -> httpx.Response:
        return _post(self.client, sender or self.city, self.transit, path, body)

    def agreement_message(self, consumer_pid: str, asset_id: str = "stops", **rules: Any) -> dict[str, Any]:
        """city's signed agreement; ``rules`` (permission, prohibition, obligation) replace its terms."""
        agreement = {
            "@id": _pid(),
            "@type": "Agreement",
            "target": asset_id,
            "assigner": self.city.did,
            "assignee": self.transit.did,
            "timestamp": "2026-11-01T10:00:00Z",
            **(rules or {"permission": [{"action": "use"}]}),
        }
        signature = sign_agreement(agreement, private_key_of(self.city), agreement_key_id(self.city.did))
        return dsp(
            "ContractAgreementMessage",
            providerPid=self.provider_pids[consumer_pid],
            consumerPid=consumer_pid,
            agreement=agreement,
            **{SIGNATURE: signature},
        )


def _answer_requests(provider_pids: dict[str, str], status: int = 201) -> Callable[[Hit], tuple[int, Any]]:
    """A fake provider: answers initial requests with ``status`` (and the state object unless 204); 200 otherwise."""

    def respond(hit: Hit) -> tuple[int, Any]:
        if hit.method == "POST" and hit.path.endswith("/negotiations/request"):
            consumer_pid = hit.body["consumerPid"]
            provider_pids.setdefault(consumer_pid, _pid())
            state = dsp(
                "ContractNegotiation",
                providerPid=provider_pids[consumer_pid],
                consumerPid=consumer_pid,
                state="REQUESTED",
            )
            return status, None if status == 204 else state
        return 200, None

    return respond


@contextmanager
def consumer_side(make_connector: MakeConnector, status: int = 201) -> Iterator[ConsumerSide]:
    transit = make_connector("transit")
    city, utility = make_connector("city"), make_connector("utility")
    provider_pids: dict[str, str] = {}
    with fake_peer(_answer_requests(provider_pids, status)) as fake, management(transit) as client:
        trust_address(transit, city, fake.dsp_url)
        trust(transit, utility)
        yield ConsumerSide(transit, city, utility, fake, client, provider_pids)


def test_consumer_callbacks_follow_the_state_machine(make_connector: MakeConnector) -> None:
    with consumer_side(make_connector) as side:
        negotiation_id, consumer_pid = side.start()
        [request] = side.fake.posted("/negotiations/request")
        assert message_errors(request.body) == [], request.body
        assert request.body["callbackAddress"] == side.transit.settings.dsp_url
        assert "providerPid" not in request.body
        provider_pid = side.provider_pids[consumer_pid]
        found = wait_for(side.client, negotiation_id, "REQUESTED")
        assert found["providerPid"] == provider_pid

        def refused_out_of_turn(state: str, *messages: tuple[str, dict[str, Any]]) -> None:
            before = _snapshot(side.transit)
            for path, body in messages:
                assert message_errors(body) == [], body
                response = side.send(path, body)
                error = negotiation_error(response, 409)
                assert (error["providerPid"], error["consumerPid"]) == (provider_pid, consumer_pid)
                assert _snapshot(side.transit) == before, (state, path)
            assert negotiation(side.client, negotiation_id)["state"] == state

        verification = dsp(
            "ContractAgreementVerificationMessage", providerPid=provider_pid, consumerPid=consumer_pid
        )
        refused_out_of_turn(
            "REQUESTED",
            (f"/{consumer_pid}/events", _event("FINALIZED", provider_pid, consumer_pid)),
            (f"/{consumer_pid}/events", _event("ACCEPTED", provider_pid, consumer_pid)),  # a consumer's event
            (f"/{consumer_pid}/agreement/verification", verification),  # a consumer's message
            (
                f"/{consumer_pid}/request",
                dsp(
                    "ContractRequestMessage",
                    providerPid=provider_pid,
                    consumerPid=consumer_pid,
                    offer={"@id": "x", "@type": "Offer", "permission": [{"action": "use"}]},
                ),
            ),
        )
        # Strangers and unknown pids: 404.
        negotiation_error(
            side.send(f"/{_pid()}/events", _event("FINALIZED", provider_pid, consumer_pid)), 404
        )
        negotiation_error(
            side.send(f"/{consumer_pid}/termination", _termination(provider_pid, consumer_pid), side.utility),
            404,
        )
        negotiation_error(_get(side.client, side.utility, side.transit, consumer_pid), 404)
        state_object(_get(side.client, side.city, side.transit, consumer_pid), 200, "REQUESTED")

        # The provider counter-offers other terms: transit (automatic) waits for its operator.
        counter = {
            "@id": "offer-stops-2",
            "@type": "Offer",
            "target": "stops",
            "permission": [
                {
                    "action": "use",
                    "constraint": [{"leftOperand": "purpose", "operator": "eq", "rightOperand": "research"}],
                }
            ],
        }
        offer_message = dsp(
            "ContractOfferMessage", providerPid=provider_pid, consumerPid=consumer_pid, offer=counter
        )
        assert message_errors(offer_message) == []
        assert side.send(f"/{consumer_pid}/offers", offer_message).status_code == 200
        offered = negotiation(side.client, negotiation_id)
        assert offered["state"] == "OFFERED"
        assert "different terms" in offered["errorDetail"]
        assert offered["offer"]["permission"] == counter["permission"]
        other_terms = {**counter, "@id": "offer-stops-3", "permission": [{"action": "use"}]}
        refused_out_of_turn(
            "OFFERED",
            (f"/{consumer_pid}/offers", {**offer_message, "offer": other_terms}),
        )

        acted(side.client, negotiation_id, "accept")
        [accepted] = side.fake.wait_for(f"/negotiations/{provider_pid}/events")
        assert message_errors(accepted.body) == []
        assert accepted.body["eventType"] == "ACCEPTED"
        wait_for(side.client, negotiation_id, "ACCEPTED")

        # The agreement of the accepted terms: transit counter-signs it and sends the verification by itself.
        message = side.agreement_message(consumer_pid, permission=counter["permission"])
        response = side.send(f"/{consumer_pid}/agreement", message)
        assert response.status_code == 200, response.text
        [verified] = side.fake.wait_for(f"/negotiations/{provider_pid}/agreement/verification")
        assert message_errors(verified.body) == [], verified.body
        transit_key = json.loads((side.transit.settings.data_dir / "keys" / "public-key.jwk").read_text())
        verify_agreement_signature(
            message["agreement"], verified.body[SIGNATURE], transit_key, expected_kid_did=side.transit.did
        )
        wait_for(side.client, negotiation_id, "VERIFIED")
        refused_out_of_turn("VERIFIED", (f"/{consumer_pid}/agreement", side.agreement_message(consumer_pid)))

        assert (
            side.send(f"/{consumer_pid}/events", _event("FINALIZED", provider_pid, consumer_pid)).status_code
            == 200
        )
        done = negotiation(side.client, negotiation_id)
        assert done["state"] == "FINALIZED"
        assert done["contractAgreementId"] == message["agreement"]["@id"]
        [stored] = agreement_rows(side.transit.core.engine)
        city_key = json.loads((side.city.settings.data_dir / "keys" / "public-key.jwk").read_text())
        verify_agreement_signature(
            json.loads(stored.agreement),
            stored.provider_signature or "",
            city_key,
            expected_kid_did=side.city.did,
        )
        verify_agreement_signature(
            json.loads(stored.agreement),
            stored.consumer_signature or "",
            transit_key,
            expected_kid_did=side.transit.did,
        )
        refused_out_of_turn(
            "FINALIZED", (f"/{consumer_pid}/termination", _termination(provider_pid, consumer_pid))
        )
        state_object(_get(side.client, side.city, side.transit, consumer_pid), 200, "FINALIZED")


def test_consumer_refuses_agreements_that_are_not_for_it(make_connector: MakeConnector) -> None:
    with consumer_side(make_connector) as side:
        negotiation_id, consumer_pid = side.start()
        wait_for(side.client, negotiation_id, "REQUESTED")
        before = _snapshot(side.transit)
        good = side.agreement_message(consumer_pid)
        tampered = json.loads(json.dumps(good))
        tampered["agreement"]["permission"] = [{"action": "modify"}]
        other_asset = side.agreement_message(consumer_pid, "timetable")
        for body, needle in (
            (tampered, "does not verify"),
            (other_asset, "timetable"),
            ({**good, "agreement": {**good["agreement"], "assignee": side.utility.did}}, "assignee"),
        ):
            negotiation_error(side.send(f"/{consumer_pid}/agreement", body), 400, needle)
            assert _snapshot(side.transit) == before
        assert side.send(f"/{consumer_pid}/agreement", good).status_code == 200
        wait_for(side.client, negotiation_id, "VERIFIED")


def test_consumer_takes_an_initial_offer_from_a_provider(make_connector: MakeConnector) -> None:
    with consumer_side(make_connector) as side, fake_peer() as elsewhere:
        provider_pid = _pid()
        offer = {"@id": "offer-stops", "@type": "Offer", "target": "stops", "permission": [{"action": "use"}]}
        body = dsp(
            "ContractOfferMessage", providerPid=provider_pid, offer=offer, callbackAddress=side.fake.dsp_url
        )
        assert message_errors(body) == []
        negotiation_error(
            side.send("/offers", {**body, "callbackAddress": elsewhere.dsp_url}), 400, "callbackAddress"
        )
        assert all_negotiations(side.transit.core.engine) == []
        answer = state_object(side.send("/offers", body), 201, "OFFERED")
        assert answer["providerPid"] == provider_pid
        [row] = all_negotiations(side.transit.core.engine)
        assert (row["role"], row["state"], row["approval"]) == ("consumer", "OFFERED", "manual")
        acted(side.client, row["id"], "accept")
        [accepted] = side.fake.wait_for(f"/negotiations/{provider_pid}/events")
        assert accepted.body["consumerPid"] == answer["consumerPid"]
        assert accepted.body["eventType"] == "ACCEPTED"
        wait_for(side.client, row["id"], "ACCEPTED")
        assert elsewhere.hits == []


@pytest.mark.parametrize("status", [200, 204])
def test_consumer_takes_200_and_204_where_201_is_specified(
    make_connector: MakeConnector, status: int
) -> None:
    with consumer_side(make_connector, status=status) as side:
        negotiation_id, consumer_pid = side.start()
        found = wait_for(side.client, negotiation_id, "REQUESTED")
        assert found["providerPid"] == (side.provider_pids[consumer_pid] if status == 200 else None)
        # Without a body, the provider's first message tells transit its pid.
        response = side.send(f"/{consumer_pid}/agreement", side.agreement_message(consumer_pid))
        assert response.status_code == 200, response.text
        wait_for(side.client, negotiation_id, "VERIFIED")
        assert negotiation(side.client, negotiation_id)["providerPid"] == side.provider_pids[consumer_pid]


def test_a_callback_overtaking_the_recorded_answer_waits_for_it(
    make_connector: MakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An automatic provider sends its agreement right after answering the request; it may arrive
    before the consumer has recorded the answer. It must be taken, not refused."""

    def slowly_delivered(*args: Any, **kwargs: Any) -> None:
        time.sleep(1.5)
        delivered(*args, **kwargs)

    monkeypatch.setattr("connector.negotiation_worker.delivered", slowly_delivered)
    with consumer_side(make_connector) as side:
        negotiation_id, consumer_pid = side.start()
        assert negotiation(side.client, negotiation_id)["state"] == "INITIAL", (
            "the answer is not recorded yet"
        )
        # Asked meanwhile, transit shows city what city knows: REQUESTED (DSP has no INITIAL).
        state_object(_get(side.client, side.city, side.transit, consumer_pid), 200, "REQUESTED")
        response = side.send(f"/{consumer_pid}/agreement", side.agreement_message(consumer_pid))
        assert response.status_code == 200, response.text
        wait_for(side.client, negotiation_id, "VERIFIED")


def test_a_verification_overtaking_the_recorded_agreement_is_not_lost(
    make_connector: MakeConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer's verification arriving while the provider is still recording the delivered
    agreement must wait for that record, not be applied and then overwritten by it (the negotiation
    would stay AGREED on the provider, FINALIZED nowhere)."""
    from contracts.agreements import store_agreement as stored_agreement

    recorded_late = threading.Event()

    def slowly_stored(*args: Any, **kwargs: Any) -> Any:
        record = stored_agreement(*args, **kwargs)  # the row's move to AGREED is not recorded yet
        time.sleep(1.5)
        recorded_late.set()
        return record

    monkeypatch.setattr(negotiations_module, "store_agreement", slowly_stored)
    with provider_side(make_connector) as side:
        consumer_pid = _pid()
        provider_pid = state_object(side.request(consumerPid=consumer_pid), 201, "REQUESTED")["providerPid"]
        [hit] = side.fake.wait_for(f"/negotiations/{consumer_pid}/agreement")
        time.sleep(0.3)  # the provider is now recording the delivery
        response = side.send(
            f"/{provider_pid}/agreement/verification",
            _verification(side, provider_pid, consumer_pid, hit.body["agreement"]),
        )
        assert response.status_code == 200, response.text
        [finalized] = side.fake.wait_for(f"/negotiations/{consumer_pid}/events")
        assert finalized.body["eventType"] == "FINALIZED"
        side.wait_state(provider_pid, "FINALIZED")
        assert recorded_late.wait(10)
        time.sleep(0.5)  # the slow recording has committed: it must not have moved the row back
        state_object(side.state(provider_pid), 200, "FINALIZED")


def test_consumer_counter_signs_by_itself_only_the_terms_it_asked_for(make_connector: MakeConnector) -> None:
    """An automatic consumer verifies an agreement whose terms are those of the offer, however written;
    other terms (here: a duty to pay) wait for an operator, who may still verify."""
    with consumer_side(make_connector) as side:
        # The same terms, written otherwise (a prefixed action, an empty constraint list): verified.
        negotiation_id, consumer_pid = side.start()
        wait_for(side.client, negotiation_id, "REQUESTED")
        same = side.agreement_message(consumer_pid, permission=[{"action": "odrl:use", "constraint": []}])
        assert side.send(f"/{consumer_pid}/agreement", same).status_code == 200
        side.fake.wait_for(f"/negotiations/{side.provider_pids[consumer_pid]}/agreement/verification")
        assert "errorDetail" not in wait_for(side.client, negotiation_id, "VERIFIED")

        # A duty the offer never had: AGREED, nothing sent, the reason shown.
        negotiation_id, consumer_pid = side.start()
        provider_pid = side.provider_pids[consumer_pid]
        wait_for(side.client, negotiation_id, "REQUESTED")
        more = side.agreement_message(
            consumer_pid, permission=[{"action": "use", "duty": [{"action": "compensate"}]}]
        )
        assert side.send(f"/{consumer_pid}/agreement", more).status_code == 200
        found = negotiation(side.client, negotiation_id)
        assert found["state"] == "AGREED"
        assert "not those of the offer" in found["errorDetail"], found
        time.sleep(0.5)  # the worker would have sent a verification by now
        assert side.fake.posted(f"/negotiations/{provider_pid}/agreement/verification") == []

        # The operator reads the terms and verifies: the verification goes, signed; the note is gone.
        acted(side.client, negotiation_id, "verify")
        [hit] = side.fake.wait_for(f"/negotiations/{provider_pid}/agreement/verification")
        assert isinstance(hit.body.get(SIGNATURE), str)
        found = wait_for(side.client, negotiation_id, "VERIFIED")
        assert "errorDetail" not in found, found


def test_consumer_accepts_by_itself_a_counter_offer_of_the_terms_it_asked_for(
    make_connector: MakeConnector,
) -> None:
    with consumer_side(make_connector) as side:
        negotiation_id, consumer_pid = side.start()
        provider_pid = side.provider_pids[consumer_pid]
        wait_for(side.client, negotiation_id, "REQUESTED")
        offer = {"@id": "offer-stops-2", "@type": "Offer", "target": "stops",
                 "permission": [{"action": "odrl:use", "constraint": []}]}  # fmt: skip
        offered = dsp("ContractOfferMessage", providerPid=provider_pid, consumerPid=consumer_pid, offer=offer)
        assert side.send(f"/{consumer_pid}/offers", offered).status_code == 200
        [hit] = side.fake.wait_for(f"/negotiations/{provider_pid}/events")
        assert hit.body["eventType"] == "ACCEPTED"
        assert "errorDetail" not in wait_for(side.client, negotiation_id, "ACCEPTED")
