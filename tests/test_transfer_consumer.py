"""The consumer's side of a transfer, in-process, with the test playing the provider.

transit runs in-process with its delivery worker; a recording fake server
stands at city's registered DSP address and answers transit's requests as
each test tells it to (unavailable, refusing, accepting). The test then sends
city's callbacks with city's peer tokens. transit's agreement with city is
stored directly (its negotiation is not what these tests are about).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from connector import transfer_worker
from connector.dsp import schemas
from connector.transfer_models import TransferRow
from connector.transfer_worker import TransferWorker
from connector.transfers import edr_of
from contracts.agreements import AgreementRecord, store_agreement
from runtime.service import ServiceCore
from tests.catalog_helpers import bearer, management, trust
from tests.conftest import Participant
from tests.negotiation_helpers import FakePeer, Hit, dsp, fake_peer, trust_address, wait_until
from tests.test_transfer_protocol import transfer_error
from tests.transfer_helpers import DSP_TRANSFERS, TRANSFERS, transfer_request

MakeConnector = Callable[..., Participant]
AGREEMENT = "urn:uuid:agreement-stops"
PROVIDER_PID = "urn:uuid:provider-side"


@dataclass
class Consumer:
    transit: Participant
    city: Participant  # the provider the test plays
    utility: Participant
    fake: FakePeer
    client: TestClient

    def request(self) -> str:
        response = self.client.post(
            TRANSFERS, json=transfer_request(self.fake.dsp_url, AGREEMENT, "HttpData-PULL")
        )
        assert response.status_code == 200, response.text
        transfer_id: str = response.json()["@id"]
        return transfer_id

    def transfer(self, transfer_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.client.get(f"{TRANSFERS}/{transfer_id}").json()
        return found

    def wait(self, transfer_id: str, state: str) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (
                    (t := self.transfer(transfer_id))["state"] == state and "pendingMessage" not in t and t
                ),
                what=f"the transfer to be {state}",
            )
        )

    def callback(self, path: str, body: Any, sender: Participant | None = None) -> httpx.Response:
        sender = sender or self.city
        response: httpx.Response = self.client.post(
            f"{DSP_TRANSFERS}{path}", json=body, headers=bearer(sender, self.transit)
        )
        return response

    def row(self, transfer_id: str) -> TransferRow:
        with Session(self.transit.core.engine) as session:
            row = session.get(TransferRow, transfer_id)
            assert row is not None
            session.expunge(row)
            return row

    def settled_row(self, transfer_id: str) -> TransferRow:
        """The row once the worker that delivered its last message has released its lease."""
        settled: TransferRow = wait_until(
            lambda: (row := self.row(transfer_id)).lease_owner is None and row,
            what="the transfer worker to release its lease",
        )
        return settled


@contextmanager
def consumer(make_connector: MakeConnector, respond: Callable[[Hit], tuple[int, Any]]) -> Iterator[Consumer]:
    transit = make_connector("transit")
    city, utility = make_connector("city"), make_connector("utility")
    with fake_peer(respond) as fake:
        trust_address(transit, city, fake.dsp_url)
        trust(transit, utility)
        agreement = {"@id": AGREEMENT, "@type": "Agreement", "target": "stops", "assigner": city.did,
                     "assignee": transit.did, "timestamp": "2026-11-21T10:00:00Z", "permission": [{"action": "use"}]}  # fmt: skip
        with Session(transit.core.engine) as session:
            store_agreement(
                session,
                AgreementRecord(AGREEMENT, "n-1", city.did, transit.did, "stops", agreement, 1, None, None),
            )
        with management(transit) as client:
            yield Consumer(transit, city, utility, fake, client)


def _accepting(failures: int) -> Callable[[Hit], tuple[int, Any]]:
    """A provider that is unavailable ``failures`` times, then accepts the request."""
    seen = {"requests": 0}

    def respond(hit: Hit) -> tuple[int, Any]:
        if not hit.path.endswith("/transfers/request"):
            return 200, None
        seen["requests"] += 1
        if seen["requests"] <= failures:
            return 503, {"error": "busy"}
        body = hit.body
        return 201, dsp(
            "TransferProcess", providerPid=PROVIDER_PID, consumerPid=body["consumerPid"], state="REQUESTED"
        )

    return respond


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer_worker, "BASE_DELAY_MS", 50)
    monkeypatch.setattr(transfer_worker, "POLL_SECONDS", 0.05)


def test_the_request_is_retried_until_the_provider_takes_it_then_the_callbacks_move_it(
    make_connector: MakeConnector, quick_retries: None
) -> None:
    with consumer(make_connector, _accepting(failures=2)) as side:
        transfer_id = side.request()
        side.wait(transfer_id, "REQUESTED")
        requests = [h for h in side.fake.hits if h.path.endswith("/transfers/request")]
        assert len(requests) == 3
        message = requests[-1].body
        assert schemas.errors("transfer-request-message-schema", message) == [], message
        assert (message["agreementId"], message["format"]) == (AGREEMENT, "HttpData-PULL")
        assert message["callbackAddress"] == side.transit.settings.dsp_url
        consumer_pid = message["consumerPid"]
        pids = {"providerPid": PROVIDER_PID, "consumerPid": consumer_pid}
        before = side.settled_row(transfer_id).model_dump()

        transfer_error(
            side.callback(f"/{consumer_pid}/start", dsp("TransferStartMessage", **pids)), 400, "dataAddress"
        )
        transfer_error(
            side.callback(f"/{consumer_pid}/completion", dsp("TransferCompletionMessage", **pids)), 400
        )
        transfer_error(side.callback("/urn:uuid:unknown/start", dsp("TransferStartMessage", **pids)), 404)
        foreign = side.callback(
            f"/{consumer_pid}/termination", dsp("TransferTerminationMessage", **pids), side.utility
        )
        transfer_error(foreign, 404)
        assert side.row(transfer_id).model_dump() == before

        address = {"@type": "DataAddress", "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
                   "endpoint": "http://city.example/public/transfers/t-1",
                   "endpointProperties": [{"@type": "EndpointProperty", "name": "authorization", "value": "tok"},
                                          {"@type": "EndpointProperty", "name": "authType", "value": "bearer"}]}  # fmt: skip
        started = side.callback(
            f"/{consumer_pid}/start", dsp("TransferStartMessage", **pids, dataAddress=address)
        )
        assert started.status_code == 200, started.text
        assert side.transfer(transfer_id)["state"] == "STARTED"
        assert edr_of(side.row(transfer_id)) == address
        state = side.client.get(f"{DSP_TRANSFERS}/{consumer_pid}", headers=bearer(side.city, side.transit))
        assert schemas.errors("transfer-process-schema", state.json()) == []
        assert state.json()["state"] == "STARTED"

        done = side.callback(f"/{consumer_pid}/completion", dsp("TransferCompletionMessage", **pids))
        assert done.status_code == 200, done.text
        assert side.transfer(transfer_id)["state"] == "COMPLETED"


def test_a_refused_request_terminates_at_once_with_the_providers_reason(
    make_connector: MakeConnector, quick_retries: None
) -> None:
    def refuse(hit: Hit) -> tuple[int, Any]:
        reason = ["there is no agreement between you and us"]
        return 400, dsp("TransferError", providerPid="unknown", consumerPid="x", code="400", reason=reason)

    with consumer(make_connector, refuse) as side:
        transfer_id = side.request()
        found = side.wait(transfer_id, "TERMINATED")
        assert "HTTP 400" in found["errorDetail"]
        assert "no agreement between you and us" in found["errorDetail"]
        assert len(side.fake.hits) == 1  # a refusal is final: not retried


def test_an_unreachable_provider_terminates_after_the_last_attempt(
    make_connector: MakeConnector, quick_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer_worker, "MAX_ATTEMPTS", 3)
    with consumer(make_connector, lambda hit: (503, None)) as side:
        transfer_id = side.request()
        found = side.wait(transfer_id, "TERMINATED")
        assert "gave up after 3 attempts" in found["errorDetail"]
        assert len(side.fake.hits) == 3
        assert json.loads(side.row(transfer_id).data_address or "null") is None


def test_two_workers_on_one_database_deliver_a_message_once(make_connector: MakeConnector) -> None:
    accept = _accepting(failures=0)

    def slowly(hit: Hit) -> tuple[int, Any]:
        time.sleep(0.3)  # long enough for every worker to try while the first delivery is in flight
        return accept(hit)

    with consumer(make_connector, slowly) as side:
        transfer_id = side.request()
        # Two more replicas of transit (their own engines and clients, the same database), racing the
        # app's own worker, each trying three times at once.
        cores = [ServiceCore.create(side.transit.settings) for _ in range(2)]
        replicas = [TransferWorker(core, owner=f"replica-{n}") for n, core in enumerate(cores)]

        async def race() -> None:
            try:
                await asyncio.gather(*(worker.deliver(transfer_id) for worker in replicas for _ in range(3)))
            finally:
                for core in cores:
                    await core.peer_client.aclose()

        try:
            asyncio.run(race())
        finally:
            for core in cores:
                core.engine.dispose()
        side.wait(transfer_id, "REQUESTED")
        assert len([h for h in side.fake.hits if h.path.endswith("/transfers/request")]) == 1
