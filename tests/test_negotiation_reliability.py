"""Negotiation messages get through: retries with backoff, restarts, giving up, and leases.

Restarts are real: connectors killed (SIGKILL) or stopped and served again on
the same directory. Retry timing and giving up run in-process with a small
``MAX_ATTEMPTS`` and ``BASE_DELAY_MS``, against a fake counter-party. Leases
are raced by two workers (two replicas: separate engines, separate owner ids)
on one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from catalog.assets import now_millis as now_ms
from catalog.jsonld import EDC_NS
from connector import negotiation_worker
from connector.negotiation_worker import NegotiationWorker
from connector.negotiations import consumer_start
from contracts.models import NegotiationRow
from runtime.service import ServiceCore
from tests.catalog_helpers import management
from tests.conftest import Participant, free_port
from tests.helpers import Served, serving
from tests.negotiation_helpers import (
    NEGOTIATIONS,
    Hit,
    Node,
    acted,
    agreement_rows,
    all_negotiations,
    assert_signed_by_both,
    catalog_offer,
    connector_pair,
    contract_request,
    counterpart,
    dsp,
    fake_peer,
    negotiation,
    publish,
    start_negotiation,
    trust_address,
    wait_for,
    wait_until,
)

MakeConnector = Callable[..., Participant]


# ---------------------------------------------------------------- real restarts


class Process:
    """One ``tessera serve`` of a node that a test starts, kills and starts again."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.stack = ExitStack()
        self.served: Served | None = None

    def start(self) -> Process:
        self.served = self.stack.enter_context(serving(self.node.data_dir, self.node.port))
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye."""
        assert self.served is not None
        self.served.process.kill()
        self.served.process.wait(timeout=10)
        self.stack.close()

    def stop(self) -> None:
        """SIGTERM: the ordinary stop."""
        assert self.served is not None
        self.served.process.terminate()
        self.served.process.wait(timeout=10)
        self.stack.close()


def _start_all(*processes: Process) -> None:
    with ThreadPoolExecutor(max_workers=len(processes)) as pool:
        for future in [pool.submit(p.start) for p in processes]:
            future.result()


def _attempts(api: httpx.Client, negotiation_id: str) -> int:
    pending = negotiation(api, negotiation_id).get("pendingMessage")
    return int(pending["attempts"]) if pending else 0


@pytest.mark.slow
def test_messages_survive_counter_parties_down_and_connectors_killed(
    tmp_path: Path, tessera_cli: Callable[..., Any]
) -> None:
    city, transit = connector_pair(tmp_path, tessera_cli)
    city_process, transit_process = Process(city), Process(transit)
    try:
        _start_all(city_process, transit_process)
        with city.api() as capi, transit.api() as tapi:
            publish(capi, "resilient-stops", approval="manual")
            offer = catalog_offer(tapi, city.did, city.dsp_url, "resilient-stops")
            body = contract_request(city.did, city.dsp_url, offer, "resilient-stops", approval="manual")
            consumer_id = start_negotiation(tapi, body)
            consumer_pid = negotiation(tapi, consumer_id)["consumerPid"]
            provider_id = counterpart(capi, consumer_pid)["@id"]
            wait_for(tapi, consumer_id, "REQUESTED")

            # transit dies; city's operator agrees: the agreement waits, retried with backoff.
            transit_process.kill()
            acted(capi, provider_id, "agree")
            wait_until(lambda: _attempts(capi, provider_id) >= 2, what="two failed deliveries")
            waiting = negotiation(capi, provider_id)
            assert waiting["state"] == "REQUESTED", "the state moves only once the message is delivered"
            assert waiting["pendingMessage"]["type"] == "ContractAgreementMessage"
            assert waiting["errorDetail"].startswith("retrying ContractAgreementMessage"), waiting
            assert waiting["pendingMessage"]["nextAttemptAt"] > now_ms() - 1000

            # city is killed too, its agreement still undelivered; both start again: it is delivered.
            city_process.kill()
            _start_all(city_process, transit_process)
            wait_for(capi, provider_id, "AGREED", timeout=45)  # a killed worker's lease lasts 30 s
            wait_for(tapi, consumer_id, "AGREED")  # and waits for transit's operator to verify
            assert "pendingMessage" not in negotiation(capi, provider_id)

            # transit is killed while AGREED, and started again: nothing is lost, /verify works...
            transit_process.kill()
            transit_process.start()
            assert negotiation(tapi, consumer_id)["state"] == "AGREED"
            # ...even with city stopped: the verification waits for it.
            city_process.stop()
            acted(tapi, consumer_id, "verify")
            wait_until(lambda: _attempts(tapi, consumer_id) >= 2, what="two failed deliveries")
            assert negotiation(tapi, consumer_id)["state"] == "AGREED"
            city_process.start()
            wait_for(tapi, consumer_id, "VERIFIED", timeout=30)
            wait_for(capi, provider_id, "VERIFIED")
            acted(capi, provider_id, "finalize")
            wait_for(capi, provider_id, "FINALIZED")
            wait_for(tapi, consumer_id, "FINALIZED")
    finally:
        transit_process.stack.close()
        city_process.stack.close()

    # Both ends hold the agreement, signed by both.
    for node in (city, transit):
        engine = node.engine()
        try:
            [row] = agreement_rows(engine)
        finally:
            engine.dispose()
        assert_signed_by_both(row, (city.did, city.public_jwk), (transit.did, transit.public_jwk))


# ---------------------------------------------------------------- retries and giving up, in-process


def _offer(provider: Participant) -> dict[str, Any]:
    return {"@id": "offer-1", "@type": "Offer", "assigner": provider.did, "permission": [{"action": "use"}]}


def _start(client: Any, provider: Participant, address: str) -> str:
    body = {
        "@context": {"@vocab": EDC_NS},
        "@type": "ContractRequest",
        "counterPartyId": provider.did,
        "counterPartyAddress": address,
        "protocol": "dataspace-protocol-http:2025-1",
        "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", **_offer(provider), "target": "stops"},
    }
    response = client.post(NEGOTIATIONS, json=body)
    assert response.status_code == 200, response.text
    negotiation_id: str = response.json()["@id"]
    return negotiation_id


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(negotiation_worker, "MAX_ATTEMPTS", 4)
    monkeypatch.setattr(negotiation_worker, "BASE_DELAY_MS", 100)
    monkeypatch.setattr(negotiation_worker, "POLL_SECONDS", 0.02)


def test_failures_are_retried_with_exponential_backoff_then_given_up(
    make_connector: MakeConnector, quick_retries: None
) -> None:
    transit, city = make_connector("transit"), make_connector("city")
    busy = json.dumps({"error": "busy"})
    with fake_peer(lambda hit: (503, {"error": "busy"})) as fake, management(transit) as client:
        trust_address(transit, city, fake.dsp_url)
        negotiation_id = _start(client, city, fake.dsp_url)
        ended = wait_for(client, negotiation_id, "TERMINATED", timeout=10)
        hits = fake.posted("/negotiations/request")
        assert len(hits) == 4, [h.path for h in hits]
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(hits)]
        for index, gap in enumerate(gaps):
            assert gap >= 0.1 * 2**index - 0.005, f"attempt {index + 2} came {gap:.3f}s after the one before"
        detail = ended["errorDetail"]
        assert detail.startswith(f"could not deliver ContractRequestMessage to {city.did}: HTTP 503"), detail
        assert busy in detail, detail
        assert detail.endswith("(gave up after 4 attempts)"), detail
        assert "pendingMessage" not in ended
        time.sleep(0.3)
        assert len(fake.posted()) == 4, "nothing is sent after giving up"


def test_an_unreachable_counter_party_ends_the_negotiation_with_the_reason(
    make_connector: MakeConnector, quick_retries: None
) -> None:
    transit, city = make_connector("transit"), make_connector("city")
    nowhere = f"http://127.0.0.1:{free_port()}/dsp/2025-1"  # nothing listens there
    trust_address(transit, city, nowhere)
    with management(transit) as client:
        negotiation_id = _start(client, city, nowhere)
        ended = wait_for(client, negotiation_id, "TERMINATED", timeout=10)
    assert "could not deliver ContractRequestMessage" in ended["errorDetail"]
    assert "ConnectError" in ended["errorDetail"]
    assert "gave up after 4 attempts" in ended["errorDetail"]


@pytest.mark.parametrize(
    ("status", "final"), [(400, True), (409, True), (404, True), (429, False), (502, False)]
)
def test_a_refusal_is_final_at_once(
    make_connector: MakeConnector, quick_retries: None, status: int, final: bool
) -> None:
    transit, city = make_connector("transit"), make_connector("city")
    refusal = dsp(
        "ContractNegotiationError",
        providerPid="unknown",
        consumerPid="x",
        code=str(status),
        reason=["no thanks"],
    )
    with fake_peer(lambda hit: (status, refusal)) as fake, management(transit) as client:
        trust_address(transit, city, fake.dsp_url)
        negotiation_id = _start(client, city, fake.dsp_url)
        ended = wait_for(client, negotiation_id, "TERMINATED", timeout=10)
        assert f"HTTP {status}" in ended["errorDetail"]
        assert "no thanks" in ended["errorDetail"]
        if final:
            assert len(fake.posted()) == 1, "a refusal is not retried"
            assert "gave up" not in ended["errorDetail"]
        else:
            assert len(fake.posted()) == 4, "busy and gateway errors are retried"


def test_a_200_or_201_or_204_is_a_delivery(make_connector: MakeConnector) -> None:
    transit, city = make_connector("transit"), make_connector("city")
    statuses = iter([200, 201, 204])
    with fake_peer(lambda hit: (next(statuses), None)) as fake, management(transit) as client:
        trust_address(transit, city, fake.dsp_url)
        for count in (1, 2, 3):
            negotiation_id = _start(client, city, fake.dsp_url)
            found = wait_for(client, negotiation_id, "REQUESTED")
            assert "pendingMessage" not in found
            assert len(fake.posted()) == count


# ---------------------------------------------------------------- leases: two replicas, one database


def _requested(hit: Hit) -> tuple[int, Any]:
    """A provider's answer to an initial request: 201 with the negotiation REQUESTED."""
    consumer_pid = hit.body["consumerPid"]
    state = dsp(
        "ContractNegotiation",
        providerPid="urn:uuid:p-" + consumer_pid[-12:],
        consumerPid=consumer_pid,
        state="REQUESTED",
    )
    return 201, state


def test_two_workers_on_one_database_never_deliver_a_message_twice(
    make_connector: MakeConnector, pg_database_factory: Callable[[], str]
) -> None:
    transit = make_connector("transit", database_url=pg_database_factory())
    city = make_connector("city")
    count = 40
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def respond(hit: Hit) -> tuple[int, Any]:
        with lock:
            seen[hit.body["consumerPid"]] += 1
        time.sleep(0.02)  # a counter-party that takes a moment widens any window
        return _requested(hit)

    with fake_peer(respond) as fake:
        trust_address(transit, city, fake.dsp_url)
        ids = []
        with Session(transit.core.engine) as session:
            for _ in range(count):
                offer = {**_offer(city), "target": "stops"}
                row = consumer_start(session, transit.core, city.did, fake.dsp_url, offer, "automatic")
                ids.append(row.id)
            for row_id in ids:  # due now, not after the grace the HTTP answer's kick would get
                due = session.get(NegotiationRow, row_id)
                assert due is not None
                due.next_attempt_at = now_ms()
                session.add(due)
            session.commit()
        replica = ServiceCore.create(transit.settings)  # a second replica: its own engine and client
        workers = [
            NegotiationWorker(transit.core, owner="replica-a"),
            NegotiationWorker(replica, owner="replica-b"),
        ]

        async def race() -> None:
            # Each worker tries every negotiation, twice over, all at once; then both poll loops run.
            await asyncio.gather(*(w.deliver(i) for i in ids for w in (*workers, *workers)))
            loops = [asyncio.create_task(w.run()) for w in workers]
            await asyncio.to_thread(
                wait_until,
                lambda: (
                    not any(
                        r["pending_message"] or r["lease_owner"]
                        for r in all_negotiations(transit.core.engine)
                    )
                ),
                20,
                "every message to be delivered",
            )
            await asyncio.sleep(0.3)  # the loops keep polling: still nothing is sent twice
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await replica.peer_client.aclose()
            await transit.core.peer_client.aclose()

        try:
            asyncio.run(race())
        finally:
            replica.engine.dispose()
        rows = all_negotiations(transit.core.engine)
    assert len(rows) == count
    assert {r["state"] for r in rows} == {"REQUESTED"}
    assert all(r["pending_message"] is None and r["lease_owner"] is None for r in rows)
    assert len(seen) == count
    assert set(seen.values()) == {1}, Counter(seen.values())


def test_a_claimed_message_is_sent_by_its_kick_or_else_by_its_own_poll_and_never_by_another_replica(
    make_connector: MakeConnector,
) -> None:
    """A handler takes the lease in its own commit (``claim_on_commit``) so that its kick sends at once.

    A claim whose kick never comes (the client went away before its answer) holds the lease like a
    delivery in flight: another replica's poll leaves it alone, and the claiming worker's own poll
    sends it once it is due. A claim whose commit was rolled back claims nothing.
    """
    transit, city = make_connector("transit"), make_connector("city")
    hits: list[str] = []

    def respond(hit: Hit) -> tuple[int, Any]:
        hits.append(hit.body["consumerPid"])
        return _requested(hit)

    with fake_peer(respond) as fake:
        trust_address(transit, city, fake.dsp_url)
        replica = ServiceCore.create(transit.settings)
        claimer = NegotiationWorker(transit.core, owner="claimer")
        other = NegotiationWorker(replica, owner="other-replica")

        def start(*, rolled_back: bool = False) -> NegotiationRow:
            with Session(transit.core.engine, expire_on_commit=False) as session:
                claimer.claim_on_commit(session)
                offer = {**_offer(city), "target": "stops"}
                row = consumer_start(
                    session, transit.core, city.did, fake.dsp_url, offer, "automatic", commit=False
                )
                if rolled_back:
                    session.rollback()
                else:
                    session.commit()
                return row

        def stored(row: NegotiationRow) -> dict[str, Any]:
            return next(r for r in all_negotiations(transit.core.engine) if r["id"] == row.id)

        sent: list[str] = []

        async def scenario() -> None:
            kicked, forgotten = start(), start()
            sent.extend([kicked.consumer_pid or "", forgotten.consumer_pid or ""])
            start(rolled_back=True)
            assert stored(kicked)["lease_owner"] == stored(forgotten)["lease_owner"] == "claimer"
            assert set(claimer._claimed) == {kicked.id, forgotten.id}  # not the rolled-back one

            await claimer.kick(kicked.id)
            await asyncio.to_thread(
                wait_until, lambda: stored(kicked)["state"] == "REQUESTED", 5, "the kick to send"
            )
            assert kicked.consumer_pid in hits
            assert stored(kicked)["lease_owner"] is None  # released with the record of the delivery

            # The other claim's kick never comes. Another replica polls past its due time: the lease
            # is not its to take.
            other_loop = asyncio.create_task(other.run())
            await asyncio.sleep(2.0)
            assert forgotten.consumer_pid not in hits
            assert stored(forgotten)["lease_owner"] == "claimer"
            # The claiming worker's own poll takes it over, once, and sends it.
            own_loop = asyncio.create_task(claimer.run())
            await asyncio.to_thread(
                wait_until, lambda: stored(forgotten)["state"] == "REQUESTED", 5, "the claimer's poll to send"
            )
            await asyncio.sleep(0.6)  # both loops poll again: nothing is sent twice
            for loop in (other_loop, own_loop):
                loop.cancel()
            await asyncio.gather(other_loop, own_loop, return_exceptions=True)
            await replica.peer_client.aclose()
            await transit.core.peer_client.aclose()

        try:
            asyncio.run(scenario())
        finally:
            replica.engine.dispose()
    assert sorted(hits) == sorted(sent)  # each sent once
    rows = all_negotiations(transit.core.engine)
    assert len(rows) == 2  # the rolled-back one was never stored
    assert all(r["pending_message"] is None and r["lease_owner"] is None for r in rows)
