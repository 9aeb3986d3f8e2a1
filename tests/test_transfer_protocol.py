"""DSP 2025-1 transfer messages against an in-process provider, the test playing the consumer.

city runs in-process with its workers; the test sends transit's messages
with transit's peer tokens, and a recording fake server stands at transit's
(and utility's) registered DSP address, receiving city's callbacks. The
agreements come from real negotiations played the same way. Every refusal is
a schema-valid ``TransferError`` with a 4xx status and changes nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from connector.dsp import schemas
from connector.dsp.transfer_messages import PURPOSE_MEMBER
from connector.transfer_models import TransferRow
from contracts.signing import agreement_key_id, sign_agreement
from tests.catalog_helpers import CATALOG_REQUEST, DSP_CATALOG, bearer, management
from tests.conftest import Participant, private_key_of
from tests.negotiation_helpers import FakePeer, dsp, fake_peer, publish, trust_address, wait_until
from tests.transfer_helpers import DSP_TRANSFERS

MakeConnector = Callable[..., Participant]
SIGNATURE = "https://w3id.org/tessera/v1/ns/signature"


def _pid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


@dataclass
class Provider:
    city: Participant
    transit: Participant
    utility: Participant
    fake: FakePeer
    client: TestClient

    def send(self, path: str, body: Any, sender: Participant | None = None) -> httpx.Response:
        sender = sender or self.transit
        response: httpx.Response = self.client.post(
            f"{DSP_TRANSFERS}{path}", json=body, headers=bearer(sender, self.city)
        )
        return response

    def state(self, pid: str, sender: Participant | None = None) -> httpx.Response:
        sender = sender or self.transit
        response: httpx.Response = self.client.get(
            f"{DSP_TRANSFERS}/{pid}", headers=bearer(sender, self.city)
        )
        return response

    def agree(self, asset_id: str, consumer: Participant | None = None) -> str:
        """A FINALIZED agreement for ``asset_id`` with ``consumer`` (transit), negotiated over DSP."""
        consumer = consumer or self.transit
        catalog = self.client.post(
            DSP_CATALOG, json=CATALOG_REQUEST, headers=bearer(consumer, self.city)
        ).json()
        offer = next(d["hasPolicy"][0] for d in catalog["dataset"] if d["@id"] == asset_id)
        consumer_pid = _pid()
        request = dsp(
            "ContractRequestMessage",
            consumerPid=consumer_pid,
            offer={**offer, "target": asset_id},
            callbackAddress=self.fake.dsp_url,
        )
        answer = self.client.post(
            "/dsp/2025-1/negotiations/request", json=request, headers=bearer(consumer, self.city)
        )
        assert answer.status_code == 201, answer.text
        provider_pid = answer.json()["providerPid"]
        [hit] = self.fake.wait_for(f"/negotiations/{consumer_pid}/agreement")
        agreement = hit.body["agreement"]
        signature = sign_agreement(agreement, private_key_of(consumer), agreement_key_id(consumer.did))
        verification = dsp(
            "ContractAgreementVerificationMessage",
            providerPid=provider_pid,
            consumerPid=consumer_pid,
            **{SIGNATURE: signature},
        )
        response = self.client.post(
            f"/dsp/2025-1/negotiations/{provider_pid}/agreement/verification",
            json=verification,
            headers=bearer(consumer, self.city),
        )
        assert response.status_code == 200, response.text
        self.fake.wait_for(f"/negotiations/{consumer_pid}/events")
        agreement_id: str = agreement["@id"]
        return agreement_id

    def request(self, agreement_id: str, **members: Any) -> dict[str, Any]:
        return dsp(
            "TransferRequestMessage",
            consumerPid=members.pop("consumerPid", _pid()),
            agreementId=agreement_id,
            format=members.pop("format", "HttpData-PULL"),
            callbackAddress=members.pop("callbackAddress", self.fake.dsp_url),
            **members,
        )

    def rows(self) -> list[dict[str, Any]]:
        """Every transfer row, once no message is being delivered."""
        found: list[dict[str, Any]] = []

        def idle() -> bool:
            with Session(self.city.core.engine) as session:
                found[:] = [
                    r.model_dump() for r in session.exec(select(TransferRow).order_by(TransferRow.id))
                ]
            return all(r["lease_owner"] is None for r in found)

        wait_until(idle, what="the transfer outbox to be idle")
        return found

    def transfer_posts(self, suffix: str) -> list[Any]:
        with self.fake.lock:
            return [
                h
                for h in self.fake.hits
                if h.method == "POST" and "/transfers/" in h.path and h.path.endswith(suffix)
            ]


@contextmanager
def provider(make_connector: MakeConnector, database_url: str | None = None) -> Iterator[Provider]:
    city = make_connector("city", database_url=database_url)
    transit, utility = make_connector("transit"), make_connector("utility")
    with fake_peer() as fake, management(city) as client:
        trust_address(city, transit, fake.dsp_url)
        trust_address(city, utility, fake.dsp_url)
        publish(client, "stops")
        publish(client, "manual-stops")
        definition = client.get("/management/v3/contractdefinitions/offer-manual-stops").json()
        definition["transferApproval"] = "manual"
        assert client.put("/management/v3/contractdefinitions", json=definition).status_code == 204
        yield Provider(city, transit, utility, fake, client)


def transfer_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body: dict[str, Any] = response.json()
    assert body["@type"] == "TransferError", body
    assert schemas.errors("transfer-error-schema", body) == [], body
    reasons = " ".join(str(r) for r in body["reason"])
    for needle in needles:
        assert needle in reasons, f"{reasons!r} does not name {needle!r}"
    return body


def transfer_process(response: httpx.Response, status: int, state: str) -> dict[str, Any]:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body: dict[str, Any] = response.json()
    assert schemas.errors("transfer-process-schema", body) == [], body
    assert body["state"] == state, body
    return body


def test_a_request_is_answered_201_before_the_start_and_repeats_are_idempotent(
    make_connector: MakeConnector, database_url: str
) -> None:
    with provider(make_connector, database_url) as side:
        agreement_id = side.agree("stops")
        message = side.request(agreement_id, **{PURPOSE_MEMBER: "planning"})
        answered_at = time.monotonic()
        first = transfer_process(side.send("/request", message), 201, "REQUESTED")
        consumer_pid = message["consumerPid"]
        assert first["consumerPid"] == consumer_pid
        hits = wait_until(lambda: side.transfer_posts(f"/transfers/{consumer_pid}/start"), what="the start")
        assert hits[0].at > answered_at
        body = hits[0].body
        assert schemas.errors("transfer-start-message-schema", body) == [], body
        assert (body["providerPid"], body["consumerPid"]) == (first["providerPid"], consumer_pid)
        assert body["dataAddress"]["endpoint"].endswith(f"/public/transfers/{side.rows()[0]['id']}")

        again = transfer_process(side.send("/request", message), 201, "STARTED")
        assert again["providerPid"] == first["providerPid"]
        [row] = side.rows()
        assert (row["purpose"], row["state"]) == ("planning", "STARTED")
        transfer_process(side.state(first["providerPid"]), 200, "STARTED")


def test_requests_that_the_agreement_does_not_allow_are_refused_and_change_nothing(
    make_connector: MakeConnector, database_url: str
) -> None:
    with provider(make_connector, database_url) as side:
        transit_agreement = side.agree("stops")
        utility_agreement = side.agree("stops", consumer=side.utility)
        before = side.rows()
        cases = [
            (side.request(utility_agreement), "no agreement"),  # someone else's
            (side.request("urn:uuid:never-made"), "no agreement"),
            (side.request(transit_agreement, format="Carrier-Pigeon"), "format"),
            (side.request(transit_agreement, consumerPid="urn:" + "x" * 300), "consumerPid is longer"),
            (side.request(transit_agreement, callbackAddress="http://evil.example/dsp"), "callbackAddress"),
            (
                side.request(
                    transit_agreement,
                    format="HttpData-PUSH",
                    dataAddress={
                        "@type": "DataAddress",
                        "endpointType": "HTTP",
                        "endpoint": "http://evil.example/in",
                    },
                ),
                "outside your registered address space",
            ),
            (
                side.request(transit_agreement, format="HttpData-PUSH"),
                "outside your registered address space",
            ),
            ({**side.request(transit_agreement), "agreementId": None}, "agreementId"),
            (
                {k: v for k, v in side.request(transit_agreement).items() if k != "callbackAddress"},
                "callbackAddress",
            ),
            ({**side.request(transit_agreement), "@type": "TransferStartMessage"}, "TransferRequestMessage"),
        ]
        for message, needle in cases:
            transfer_error(side.send("/request", message), 400, needle)
        assert side.rows() == before
        assert side.transfer_posts("") == []

        unauthenticated = side.client.post(f"{DSP_TRANSFERS}/request", json=side.request(transit_agreement))
        transfer_error(unauthenticated, 401)


def test_transitions_the_state_machine_forbids_are_400_and_unknown_pids_404(
    make_connector: MakeConnector, database_url: str
) -> None:
    with provider(make_connector, database_url) as side:
        agreement_id = side.agree("manual-stops")
        message = side.request(agreement_id)
        requested = transfer_process(side.send("/request", message), 201, "REQUESTED")
        pids = {"providerPid": requested["providerPid"], "consumerPid": message["consumerPid"]}
        provider_pid = requested["providerPid"]
        before = side.rows()
        assert before[0]["approval"] == "manual"

        for suffix, kind in (
            ("start", "TransferStartMessage"),  # only the provider starts a requested transfer
            ("completion", "TransferCompletionMessage"),
            ("suspension", "TransferSuspensionMessage"),
        ):
            transfer_error(side.send(f"/{provider_pid}/{suffix}", dsp(kind, **pids)), 400, "REQUESTED")
        mismatched = dsp("TransferTerminationMessage", providerPid=provider_pid, consumerPid=_pid())
        transfer_error(side.send(f"/{provider_pid}/termination", mismatched), 400, "do not match")
        assert side.rows() == before

        transfer_error(
            side.send("/urn:uuid:unknown/termination", dsp("TransferTerminationMessage", **pids)), 404
        )
        foreign = side.send(
            f"/{provider_pid}/termination", dsp("TransferTerminationMessage", **pids), side.utility
        )
        transfer_error(foreign, 404)
        transfer_error(side.state(provider_pid, side.utility), 404)
        assert side.rows() == before

        terminated = side.send(
            f"/{provider_pid}/termination",
            dsp("TransferTerminationMessage", **pids, code="consumer", reason=["changed our mind"]),
        )
        assert terminated.status_code == 200, terminated.text
        [row] = side.rows()
        assert row["state"] == "TERMINATED"
        assert "changed our mind" in row["error_detail"]
        transfer_process(side.state(provider_pid), 200, "TERMINATED")  # finished transfers stay readable
        again = side.send(f"/{provider_pid}/termination", dsp("TransferTerminationMessage", **pids))
        transfer_error(again, 400, "TERMINATED")


def test_the_consumer_suspends_and_resumes_a_started_transfer(make_connector: MakeConnector) -> None:
    with provider(make_connector) as side:
        agreement_id = side.agree("stops")
        message = side.request(agreement_id)
        provider_pid = transfer_process(side.send("/request", message), 201, "REQUESTED")["providerPid"]
        pids = {"providerPid": provider_pid, "consumerPid": message["consumerPid"]}
        wait_until(lambda: side.state(provider_pid).json()["state"] == "STARTED", what="STARTED")

        assert (
            side.send(f"/{provider_pid}/suspension", dsp("TransferSuspensionMessage", **pids)).status_code
            == 200
        )
        transfer_process(side.state(provider_pid), 200, "SUSPENDED")
        transfer_error(
            side.send(f"/{provider_pid}/completion", dsp("TransferCompletionMessage", **pids)), 400
        )
        assert side.send(f"/{provider_pid}/start", dsp("TransferStartMessage", **pids)).status_code == 200
        transfer_process(side.state(provider_pid), 200, "STARTED")
        assert (
            side.send(f"/{provider_pid}/completion", dsp("TransferCompletionMessage", **pids)).status_code
            == 200
        )
        transfer_process(side.state(provider_pid), 200, "COMPLETED")


@pytest.mark.parametrize("size", [300 * 1024])
def test_oversized_messages_are_refused(make_connector: MakeConnector, size: int) -> None:
    with provider(make_connector) as side:
        message = side.request("urn:uuid:x", padding="x" * size)
        transfer_error(side.send("/request", message), 413)


def _file_asset(side: Provider, asset_id: str, content: bytes, transfer_approval: str) -> None:
    """``asset_id``: a file in city's data directory, offered under its own definition."""
    path = side.city.settings.data_dir / f"{asset_id}.csv"
    path.write_bytes(content)
    publish(side.client, asset_id)
    asset = side.client.get(f"/management/v3/assets/{asset_id}").json()
    asset["dataAddress"] = {"@type": "DataAddress", "type": "File", "path": str(path)}
    assert side.client.put("/management/v3/assets", json=asset).status_code == 204
    definition = side.client.get(f"/management/v3/contractdefinitions/offer-{asset_id}").json()
    definition["transferApproval"] = transfer_approval
    assert side.client.put("/management/v3/contractdefinitions", json=definition).status_code == 204


def test_a_push_interrupted_by_a_restart_is_pushed_again_by_the_worker(make_connector: MakeConnector) -> None:
    content = b"stop,count\nS1,3\nS2,5\n"
    with provider(make_connector) as side:
        _file_asset(side, "pushed-stops", content, "manual")
        agreement_id = side.agree("pushed-stops")
        destination = {
            "@type": "DataAddress",
            "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
            "endpoint": side.fake.url + "/incoming",
            "endpointProperties": [
                {"@type": "EndpointProperty", "name": "authorization", "value": "sink-secret"},
                {"@type": "EndpointProperty", "name": "authType", "value": "bearer"},
            ],
        }
        message = side.request(agreement_id, format="HttpData-PUSH", dataAddress=destination)
        provider_pid = transfer_process(side.send("/request", message), 201, "REQUESTED")["providerPid"]
        # What a crash leaves behind right after the consumer acknowledged the start: STARTED, nothing sent yet.
        with Session(side.city.core.engine) as session:
            [row] = session.exec(select(TransferRow).where(TransferRow.provider_pid == provider_pid))
            row.state = "STARTED"
            session.add(row)
            session.commit()

        consumer_pid = message["consumerPid"]
        wait_until(
            lambda: side.transfer_posts(f"/transfers/{consumer_pid}/completion"), what="the completion"
        )
        [pushed] = [h for h in side.fake.hits if h.path == "/incoming"]
        assert pushed.headers["Authorization"] == "Bearer sink-secret"
        assert pushed.headers["Content-Type"] == "text/csv"  # (the bytes themselves: see the sink test)
        [row_after] = side.rows()
        assert (row_after["state"], row_after["bytes_transferred"]) == ("COMPLETED", len(content))
