"""Lost answers: a message sent again, and the counter-party's next message overtaking an answer.

Message by message (in-process connectors, the test playing the other side as
in test_negotiation_protocol): an initial request or offer sent again is
answered as the first time; any other message that repeats the one that
produced the receiver's state is not allowed in that state, so it is a 409
naming it a repeat and changes nothing (no second callback, log entry or
signature), as is a message that conflicts. Then the sender's side: a refusal after a lost answer
is judged by the counter-party's state. End to end, two ``tessera serve``
processes talk through proxies that forward a message and drop its answer
(once with the sender killed -9 before the answer reaches it); each negotiation
ends FINALIZED on both sides with both signatures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from connector import negotiation_worker
from connector.translog.models import LogLeafRow
from contracts.signing import agreement_key_id, sign_agreement
from tests.catalog_helpers import bearer, management
from tests.conftest import CliResult, Participant, free_port, private_key_of
from tests.negotiation_helpers import (
    DSP_NEGOTIATIONS,
    Hit,
    Node,
    acted,
    agreement_rows,
    all_negotiations,
    assert_signed_by_both,
    catalog_offer,
    contract_request,
    counterpart,
    dsp,
    fake_peer,
    negotiation,
    negotiation_error,
    publish,
    start_negotiation,
    state_object,
    trust_address,
    wait_for,
    wait_until,
)
from tests.test_negotiation_protocol import (
    SIGNATURE,
    _counter_request,
    _event,
    _pid,
    _quiet,
    _termination,
    _verification,
    consumer_side,
    provider_side,
)
from tests.test_negotiation_reliability import Process, _start_all

MakeConnector = Callable[..., Participant]


def _leaves(participant: Participant) -> int:
    with Session(participant.core.engine) as session:
        return int(session.exec(select(func.count()).select_from(LogLeafRow)).one())


def _everything(participant: Participant) -> tuple[Any, ...]:
    """What neither a repeat nor a refusal may change: negotiations, agreements, log entries."""
    rows = _quiet(participant)
    agreements = [a.model_dump() for a in agreement_rows(participant.core.engine)]
    return rows, agreements, _leaves(participant)


def _same_answer_nothing_changed(
    participant: Participant, send: Callable[[], httpx.Response], status: int = 200
) -> httpx.Response:
    before = _everything(participant)
    response = send()
    assert response.status_code == status, response.text
    assert _everything(participant) == before
    return response


def _refused_nothing_changed(
    participant: Participant, send: Callable[[], httpx.Response], *needles: str
) -> None:
    before = _everything(participant)
    negotiation_error(send(), 409, *needles)
    assert _everything(participant) == before


def _counter_offer(provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    """city's counter-offer of the terms transit asks for in ``consumer_side``."""
    offer = {"@id": "offer-stops-2", "@type": "Offer", "target": "stops", "permission": [{"action": "use"}]}
    return dsp("ContractOfferMessage", providerPid=provider_pid, consumerPid=consumer_pid, offer=offer)


# ---------------------------------------------------------------- the provider receives a repeat: refused


def test_provider_refuses_repeats_and_conflicts_and_answers_a_repeated_initial_request_as_before(
    make_connector: MakeConnector,
) -> None:
    with provider_side(make_connector, approval="manual") as side:
        consumer_pid = _pid()
        provider_pid = state_object(side.request(consumerPid=consumer_pid), 201)["providerPid"]
        [row] = all_negotiations(side.city.core.engine)

        # The initial request again: the same negotiation.
        again = _same_answer_nothing_changed(side.city, lambda: side.request(consumerPid=consumer_pid), 201)
        assert state_object(again, 201, "REQUESTED")["providerPid"] == provider_pid
        # The same consumerPid for another offer, or with another callback address, is another
        # negotiation: refused, not answered as this one.
        _refused_nothing_changed(
            side.city, lambda: side.request("timetable", consumerPid=consumer_pid), consumer_pid
        )
        elsewhere = side.fake.dsp_url.rstrip("/") + "/elsewhere"
        _refused_nothing_changed(
            side.city, lambda: side.request(consumerPid=consumer_pid, callbackAddress=elsewhere), consumer_pid
        )

        # A counter-request (after city's counter-offer), then the same again; other terms are a conflict.
        acted(
            side.client,
            row["id"],
            "offer",
            {"policy": {"@id": "counter-1", "permission": [{"action": "use"}]}},
        )
        side.wait_state(provider_pid, "OFFERED")
        request = _counter_request(side, provider_pid, consumer_pid)
        assert side.send(f"/{provider_pid}/request", request).status_code == 200
        _refused_nothing_changed(side.city, lambda: side.send(f"/{provider_pid}/request", request), "repeats")
        other = _counter_request(side, provider_pid, consumer_pid, "timetable")
        _refused_nothing_changed(side.city, lambda: side.send(f"/{provider_pid}/request", other), "REQUESTED")

        # ACCEPTED (after a second counter-offer), then again; a consumer's FINALIZED is still refused.
        acted(
            side.client,
            row["id"],
            "offer",
            {"policy": {"@id": "counter-2", "permission": [{"action": "use"}]}},
        )
        side.wait_state(provider_pid, "OFFERED")
        accepted = _event("ACCEPTED", provider_pid, consumer_pid)
        assert side.send(f"/{provider_pid}/events", accepted).status_code == 200
        _refused_nothing_changed(side.city, lambda: side.send(f"/{provider_pid}/events", accepted), "repeats")
        finalized = _event("FINALIZED", provider_pid, consumer_pid)
        _refused_nothing_changed(
            side.city, lambda: side.send(f"/{provider_pid}/events", finalized), "consumer"
        )

        # The verification, then again: one consumer signature, stored once; another signature conflicts.
        acted(side.client, row["id"], "agree")
        [hit] = side.fake.wait_for(f"/negotiations/{consumer_pid}/agreement")
        side.wait_state(provider_pid, "AGREED")
        agreement = hit.body["agreement"]
        verification = _verification(side, provider_pid, consumer_pid, agreement)
        path = f"/{provider_pid}/agreement/verification"
        assert side.send(path, verification).status_code == 200
        state_object(side.state(provider_pid), 200, "VERIFIED")
        _refused_nothing_changed(side.city, lambda: side.send(path, verification), "repeats")
        forged = {**verification, SIGNATURE: sign_agreement(agreement, private_key_of(side.utility),
                                                            agreement_key_id(side.utility.did))}  # fmt: skip
        _refused_nothing_changed(side.city, lambda: side.send(path, forged), "VERIFIED")
        [stored] = agreement_rows(side.city.core.engine)
        assert stored.consumer_signature == verification[SIGNATURE]
        assert len(side.fake.posted()) == 3, (
            "city called back once per message it sent (2 offers, 1 agreement)"
        )


def test_provider_refuses_a_repeated_termination(make_connector: MakeConnector) -> None:
    """The termination, then again: one log entry; another reason conflicts."""
    with provider_side(make_connector, approval="manual") as side:
        consumer_pid = _pid()
        provider_pid = state_object(side.request(consumerPid=consumer_pid), 201)["providerPid"]
        ended = _termination(provider_pid, consumer_pid, "found it elsewhere")
        path = f"/{provider_pid}/termination"
        leaves = _leaves(side.city)
        assert side.send(path, ended).status_code == 200
        assert _leaves(side.city) == leaves + 1
        _refused_nothing_changed(side.city, lambda: side.send(path, ended), "repeats")
        other_reason = _termination(provider_pid, consumer_pid, "too expensive")
        _refused_nothing_changed(side.city, lambda: side.send(path, other_reason), "TERMINATED")
        assert side.fake.posted() == []


# ---------------------------------------------------------------- the consumer receives a repeat: refused


def test_consumer_refuses_repeats_and_conflicts(
    make_connector: MakeConnector,
) -> None:
    with consumer_side(make_connector) as side:
        negotiation_id, consumer_pid = side.start(approval="manual")
        provider_pid = side.provider_pids[consumer_pid]
        wait_for(side.client, negotiation_id, "REQUESTED")

        # A counter-offer, then the same again; other terms are a conflict.
        offered = _counter_offer(provider_pid, consumer_pid)
        offer = offered["offer"]
        path = f"/{consumer_pid}/offers"
        assert side.send(path, offered).status_code == 200
        _refused_nothing_changed(side.transit, lambda: side.send(path, offered), "repeats")
        other = {**offered, "offer": {**offer, "permission": [{"action": "distribute"}]}}
        _refused_nothing_changed(side.transit, lambda: side.send(path, other), "OFFERED")

        # The agreement (after transit accepts), then again: transit counter-signs once.
        acted(side.client, negotiation_id, "accept")
        wait_for(side.client, negotiation_id, "ACCEPTED")
        agreement = side.agreement_message(consumer_pid)
        path = f"/{consumer_pid}/agreement"
        assert side.send(path, agreement).status_code == 200
        [stored] = agreement_rows(side.transit.core.engine)
        _refused_nothing_changed(side.transit, lambda: side.send(path, agreement), "repeats")
        another = side.agreement_message(consumer_pid)  # a new agreement id
        _refused_nothing_changed(side.transit, lambda: side.send(path, another), "AGREED")
        assert agreement_rows(side.transit.core.engine) == [stored]

        # FINALIZED (after transit verifies), then again: one log entry, no second hook or message.
        acted(side.client, negotiation_id, "verify")
        wait_for(side.client, negotiation_id, "VERIFIED")
        finalized = _event("FINALIZED", provider_pid, consumer_pid)
        leaves = _leaves(side.transit)
        assert side.send(f"/{consumer_pid}/events", finalized).status_code == 200
        assert _leaves(side.transit) == leaves + 1
        sent = len(side.fake.posted())
        _refused_nothing_changed(
            side.transit, lambda: side.send(f"/{consumer_pid}/events", finalized), "repeats"
        )
        ended = _termination(provider_pid, consumer_pid)
        _refused_nothing_changed(
            side.transit, lambda: side.send(f"/{consumer_pid}/termination", ended), "FINALIZED"
        )
        assert len(side.fake.posted()) == sent

        # A termination, then again; another reason conflicts.
        negotiation_id, consumer_pid = side.start()
        provider_pid = side.provider_pids[consumer_pid]
        wait_for(side.client, negotiation_id, "REQUESTED")
        ended = _termination(provider_pid, consumer_pid, "no longer offered")
        path = f"/{consumer_pid}/termination"
        assert side.send(path, ended).status_code == 200
        _refused_nothing_changed(side.transit, lambda: side.send(path, ended), "repeats")
        other_reason = _termination(provider_pid, consumer_pid, "changed our mind")
        _refused_nothing_changed(side.transit, lambda: side.send(path, other_reason), "TERMINATED")


def test_consumer_takes_a_repeated_initial_offer_once(make_connector: MakeConnector) -> None:
    with consumer_side(make_connector) as side:
        provider_pid = _pid()
        offer = {"@id": "offer-stops", "@type": "Offer", "target": "stops", "permission": [{"action": "use"}]}
        body = dsp(
            "ContractOfferMessage", providerPid=provider_pid, offer=offer, callbackAddress=side.fake.dsp_url
        )
        first = state_object(side.send("/offers", body), 201, "OFFERED")
        again = _same_answer_nothing_changed(side.transit, lambda: side.send("/offers", body), 201)
        assert state_object(again, 201, "OFFERED") == first
        other = {**body, "offer": {**offer, "permission": [{"action": "distribute"}]}}
        before = _everything(side.transit)
        negotiation_error(side.send("/offers", other), 409, provider_pid)
        assert _everything(side.transit) == before
        assert len(all_negotiations(side.transit.core.engine)) == 1


# ---------------------------------------------------------------- the sender, after a lost answer


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(negotiation_worker, "MAX_ATTEMPTS", 4)
    monkeypatch.setattr(negotiation_worker, "BASE_DELAY_MS", 100)
    monkeypatch.setattr(negotiation_worker, "POLL_SECONDS", 0.02)


@pytest.mark.parametrize(
    ("their_state", "ours"),
    [
        ("VERIFIED", "VERIFIED"),  # our verification arrived before: its answer was lost
        ("FINALIZED", "VERIFIED"),  # ...and the provider has finalized since (its event is on its way)
        ("AGREED", "TERMINATED"),  # where we are: the verification did not arrive, the refusal stands
        ("TERMINATED", "TERMINATED"),
    ],
)
def test_a_refused_message_is_judged_by_the_counter_partys_state(
    make_connector: MakeConnector, quick_retries: None, their_state: str, ours: str
) -> None:
    transit, city = make_connector("transit"), make_connector("city")
    pids: dict[str, str] = {}

    def respond(hit: Hit) -> tuple[int, Any]:
        if hit.method == "POST" and hit.path.endswith("/negotiations/request"):
            pids["consumer"], pids["provider"] = hit.body["consumerPid"], _pid()
            return 201, dsp("ContractNegotiation", providerPid=pids["provider"],
                            consumerPid=pids["consumer"], state="REQUESTED")  # fmt: skip
        if hit.path.endswith("/agreement/verification"):
            return 409, dsp("ContractNegotiationError", providerPid=pids["provider"],
                            consumerPid=pids["consumer"], code="409", reason=["not now"])  # fmt: skip
        if hit.method == "GET":
            return 200, dsp("ContractNegotiation", providerPid=pids["provider"],
                            consumerPid=pids["consumer"], state=their_state)  # fmt: skip
        return 200, None

    with fake_peer(respond) as fake, management(transit) as client:
        trust_address(transit, city, fake.dsp_url)
        policy = {"@id": "offer-1", "@type": "Offer", "assigner": city.did, "permission": [{"action": "use"}]}
        negotiation_id = start_negotiation(
            client,
            contract_request(city.did, fake.dsp_url, policy, "stops", approval="manual"),
        )
        wait_for(client, negotiation_id, "REQUESTED")
        agreement = {"@id": _pid(), "@type": "Agreement", "target": "stops", "assigner": city.did,
                     "assignee": transit.did, "timestamp": "2026-11-01T10:00:00Z",
                     "permission": [{"action": "use"}]}  # fmt: skip
        signed = sign_agreement(agreement, private_key_of(city), agreement_key_id(city.did))
        message = dsp("ContractAgreementMessage", providerPid=pids["provider"], consumerPid=pids["consumer"],
                      agreement=agreement, **{SIGNATURE: signed})  # fmt: skip
        response = client.post(f"{DSP_NEGOTIATIONS}/{pids['consumer']}/agreement", json=message,
                               headers=bearer(city, transit))  # fmt: skip
        assert response.status_code == 200, response.text
        acted(client, negotiation_id, "verify")
        found = wait_for(client, negotiation_id, ours, timeout=10)
        fake.wait_for("/agreement/verification")
        assert [h.method for h in fake.hits if h.method == "GET"] == ["GET"], "the state was asked once"
        assert len(fake.posted("/agreement/verification")) == 1, "a refusal is not retried"
        if ours == "TERMINATED":
            assert "HTTP 409" in found["errorDetail"], found
            return
        assert "pendingMessage" not in found, found
        assert "errorDetail" not in found, found
        # The provider's FINALIZED event, when it comes, is taken.
        finalized = _event("FINALIZED", pids["provider"], pids["consumer"])
        response = client.post(f"{DSP_NEGOTIATIONS}/{pids['consumer']}/events", json=finalized,
                               headers=bearer(city, transit))  # fmt: skip
        assert response.status_code == 200, response.text
        assert negotiation(client, negotiation_id)["state"] == "FINALIZED"


def test_the_counter_partys_next_message_shows_our_message_arrived(
    make_connector: MakeConnector, quick_retries: None
) -> None:
    """city's agreement was applied but its answer never came (here: 503 every time, so city keeps
    retrying); transit's verification can only follow the agreement, so city takes both."""
    with provider_side(make_connector) as side:
        side.fake.respond = lambda hit: (503, {"busy": True})
        consumer_pid = _pid()
        provider_pid = state_object(side.request(consumerPid=consumer_pid), 201)["providerPid"]
        [hit] = side.fake.wait_for(f"/negotiations/{consumer_pid}/agreement")
        assert state_object(side.state(provider_pid))["state"] == "REQUESTED", "not delivered yet"
        side.fake.respond = lambda hit: (200, None)
        verification = _verification(side, provider_pid, consumer_pid, hit.body["agreement"])
        response = side.send(f"/{provider_pid}/agreement/verification", verification)
        assert response.status_code == 200, response.text
        side.wait_state(provider_pid, "FINALIZED")
        [stored] = agreement_rows(side.city.core.engine)
        assert stored.provider_signature == hit.body[SIGNATURE]
        assert stored.consumer_signature == verification[SIGNATURE]
        [row] = all_negotiations(side.city.core.engine)
        assert row["error_detail"] is None, row
        assert {h.body["@type"] for h in side.fake.posted()} == {
            "ContractAgreementMessage",
            "ContractNegotiationEventMessage",
        }


def test_a_counter_offer_before_our_request_is_answered_shows_the_request_arrived(
    make_connector: MakeConnector,
) -> None:
    """city applied transit's request but its answer never came (503 every time); city's counter-offer
    can only follow the request, so transit takes both: the request delivered (city's pid from the
    offer), then the offer. It is not a new negotiation, nor a mismatch of pids."""
    with consumer_side(make_connector) as side:
        side.fake.respond = lambda hit: (503, {"busy": True})
        negotiation_id, consumer_pid = side.start(approval="manual")
        assert negotiation(side.client, negotiation_id)["state"] == "INITIAL"
        provider_pid = _pid()
        offered = _counter_offer(provider_pid, consumer_pid)
        response = side.send(f"/{consumer_pid}/offers", offered)
        assert response.status_code == 200, response.text
        found = negotiation(side.client, negotiation_id)
        assert (found["state"], found["providerPid"]) == ("OFFERED", provider_pid), found
        [row] = all_negotiations(side.transit.core.engine)
        assert row["pending_message"] is None, "the request is no longer waiting to be sent again"
        assert len(all_negotiations(side.transit.core.engine)) == 1


# ---------------------------------------------------------------- end to end, answers lost on the wire


@dataclass
class LossyProxy:
    """An HTTP proxy in front of one connector: forwards each request; drops chosen answers.

    The request reaches the connector and is applied; the sender sees the connection close
    without an answer, as after a timeout. ``drop`` holds the path endings whose first answer is
    dropped; ``before_drop`` runs just before (e.g. to kill the sender).
    """

    target: str
    port: int = field(default_factory=free_port)
    drop: set[str] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)
    before_drop: Callable[[str], None] = lambda path: None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def take(self, path: str) -> bool:
        with self.lock:
            for ending in sorted(self.drop):
                if path.endswith(ending):
                    self.drop.discard(ending)
                    self.dropped.append(path)
                    return True
        return False


@contextmanager
def lossy_proxy(proxy: LossyProxy) -> Iterator[LossyProxy]:
    forward = httpx.Client(base_url=proxy.target, timeout=30)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            answer = forward.request(self.command, self.path, content=body, headers=headers)
            if self.command == "POST" and proxy.take(self.path):
                proxy.before_drop(self.path)
                self.close_connection = True  # applied by the connector; the sender never hears back
                return
            self.send_response(answer.status_code)
            for name in ("content-type", "retry-after"):
                if name in answer.headers:
                    self.send_header(name, answer.headers[name])
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def do_GET(self) -> None:
            self._relay()

        def do_POST(self) -> None:
            self._relay()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", proxy.port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        forward.close()


def _proxied_pair(tmp_path: Path, cli: Callable[..., CliResult]) -> tuple[Node, Node, LossyProxy, LossyProxy]:
    """city and transit whose public (DSP) addresses are proxies in front of them."""
    nodes, proxies = [], []
    for name in ("city", "transit"):
        node = Node(name, tmp_path / name, free_port())
        proxy = LossyProxy(f"http://127.0.0.1:{node.port}")
        result = cli("init", "--dir", str(node.data_dir), "--name", name, "--port", str(node.port),
                     "--public-url", proxy.url)  # fmt: skip
        assert result.code == 0, result.stderr
        nodes.append(node)
        proxies.append(proxy)
    city, transit = nodes
    for receiver, member, memberships in ((city, transit, ["transport-operator"]), (transit, city, [])):
        args = ["dataspace", "add", "--dir", str(receiver.data_dir), "--did", member.did, "--url", member.dsp_url,
                "--key", str(member.data_dir / "keys" / "public-key.jwk")]  # fmt: skip
        for membership in memberships:
            args += ["--membership", membership]
        result = cli(*args)
        assert result.code == 0, result.stderr
    return city, transit, proxies[0], proxies[1]


def _both_finalized(city: Node, transit: Node, capi: httpx.Client, tapi: httpx.Client, asset_id: str,
                    timeout: float) -> None:  # fmt: skip
    offer = catalog_offer(tapi, city.did, city.dsp_url, asset_id)
    consumer_id = start_negotiation(tapi, contract_request(city.did, city.dsp_url, offer, asset_id))
    provider_id = counterpart(capi, negotiation(tapi, consumer_id)["consumerPid"], timeout)["@id"]
    for api, negotiation_id in ((capi, provider_id), (tapi, consumer_id)):
        found = wait_for(api, negotiation_id, "FINALIZED", "TERMINATED", timeout=timeout)
        assert found["state"] == "FINALIZED", found
        assert "errorDetail" not in found, found


def _signed_by_both_on_both_sides(city: Node, transit: Node) -> None:
    for node in (city, transit):
        engine = node.engine()
        try:
            [row] = agreement_rows(engine)
        finally:
            engine.dispose()
        assert_signed_by_both(row, (city.did, city.public_jwk), (transit.did, transit.public_jwk))


@pytest.mark.slow
def test_every_answer_lost_once_still_ends_finalized_on_both_sides(
    tmp_path: Path, tessera_cli: Callable[..., CliResult]
) -> None:
    city, transit, city_proxy, transit_proxy = _proxied_pair(tmp_path, tessera_cli)
    city_proxy.drop = {"/negotiations/request", "/agreement/verification"}  # transit's messages to city
    transit_proxy.drop = {"/agreement", "/events"}  # city's messages to transit
    with ExitStack() as stack:
        stack.enter_context(lossy_proxy(city_proxy))
        stack.enter_context(lossy_proxy(transit_proxy))
        processes = [Process(city), Process(transit)]
        for process in processes:
            stack.callback(process.stack.close)
        _start_all(*processes)
        with city.api() as capi, transit.api() as tapi:
            publish(capi, "stops")
            _both_finalized(city, transit, capi, tapi, "stops", timeout=30)
    assert sorted(p.rsplit("/", 1)[-1] for p in city_proxy.dropped + transit_proxy.dropped) == [
        "agreement", "events", "request", "verification"]  # fmt: skip
    _signed_by_both_on_both_sides(city, transit)


@pytest.mark.slow
def test_a_sender_killed_before_it_hears_the_answer_resumes_to_finalized(
    tmp_path: Path, tessera_cli: Callable[..., CliResult]
) -> None:
    """transit's verification reaches city, which verifies and finalizes; transit is killed (-9)
    before the answer reaches it, and started again: it must not give up on city, nor city on it."""
    city, transit, city_proxy, transit_proxy = _proxied_pair(tmp_path, tessera_cli)
    processes = [Process(city), Process(transit)]
    city_proxy.drop = {"/agreement/verification"}
    city_proxy.before_drop = lambda path: processes[1].kill()
    with ExitStack() as stack:
        stack.enter_context(lossy_proxy(city_proxy))
        stack.enter_context(lossy_proxy(transit_proxy))
        for process in processes:
            stack.callback(process.stack.close)
        _start_all(*processes)
        with city.api() as capi:
            publish(capi, "stops")
            with transit.api() as tapi:
                offer = catalog_offer(tapi, city.did, city.dsp_url, "stops")
                consumer_id = start_negotiation(
                    tapi, contract_request(city.did, city.dsp_url, offer, "stops")
                )
                provider_id = counterpart(capi, negotiation(tapi, consumer_id)["consumerPid"])["@id"]
            wait_until(lambda: city_proxy.dropped, what="the verification's answer to be dropped")
            wait_until(lambda: processes[1].served is not None and processes[1].served.process.poll() is not None,
                       what="transit to be killed")  # fmt: skip
            processes[1].start()
            with transit.api() as tapi:
                # A killed worker's lease lasts 30 s: until then transit answers city "try again".
                for api, negotiation_id in ((capi, provider_id), (tapi, consumer_id)):
                    found = wait_for(api, negotiation_id, "FINALIZED", "TERMINATED", timeout=75)
                    assert found["state"] == "FINALIZED", found
    _signed_by_both_on_both_sides(city, transit)
