"""Consent-gated release between real processes: a consent service, transit (provider), city (consumer).

City pulls transit's personal ``card-trips``-like files through transit's public data endpoint;
transit's connector asks the consent service (real process, real database: SQLite and
PostgreSQL) which card holders consented, and releases only their records. Withdrawals apply
to the next release at once; the consent service stopped means nothing personal leaves and
the transfer is terminated saying why; card numbers never appear in clear in the connectors'
JSON logs; the citizens see who received their data.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import httpx
import pytest

from tests.consent_gate_helpers import PURPOSE, ConsentSpace, cards_of, consent_space, trips
from tests.transfer_helpers import transfer, wait_state, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def space(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsentSpace]:
    factory: Callable[[], str] | None = None
    if request.param == "postgresql":
        factory = request.getfixturevalue("pg_database_factory")
    with consent_space(
        tmp_path_factory.mktemp(f"consent-gate-{request.param}"), request.param, factory
    ) as made:
        yield made


def _cards(space: ConsentSpace, prefix: str, *names: str) -> dict[str, str]:
    """A citizen per name holding card ``<prefix>-<name>``; name -> card id."""
    cards = {}
    for name in names:
        card = f"{prefix}-card-{name}"
        space.citizen(f"{prefix}-{name}", card)
        cards[name] = card
    return cards


def _started_pull(space: ConsentSpace, asset_id: str, purpose: str = PURPOSE) -> tuple[str, str]:
    _agreement, consumer_id, provider_id = space.pair.pull_started(asset_id, purpose=purpose)
    return consumer_id, provider_id


def test_only_subjects_with_valid_consent_are_released(space: ConsentSpace) -> None:
    cards = _cards(space, "mix", "alice", "bob", "carol", "erin")
    citizens = space.citizens
    space.switch(citizens["mix-alice"], "give")
    space.switch(citizens["mix-bob"], "refuse")
    space.switch(citizens["mix-carol"], "give")
    space.switch(citizens["mix-carol"], "withdraw")
    long_ago = int((datetime.now(UTC) - timedelta(days=400)).timestamp() * 1000)
    space.switch(citizens["mix-erin"], "give", now=long_ago)  # 365 days of consent: expired
    records = trips(*cards.values(), "mix-card-unknown", each=4)
    records.append({"from": "Central", "to": "Harbour"})  # names no subject: withheld
    space.publish_trips("trips-mix", records)
    consumer_id, provider_id = _started_pull(space, "trips-mix")

    released = space.pull(consumer_id)

    assert cards_of(released) == {cards["alice"]: 4}
    assert released == [r for r in records if r.get("card_id") == cards["alice"]]  # whole, in order
    row = wait_until(lambda: (r := space.pair.provider_row(provider_id))["error_detail"] and r)
    assert row["error_detail"].startswith("17 personal record(s) withheld")
    assert transfer(space.pair.capi, provider_id)["state"] == "STARTED"  # withholding is not a failure

    # The citizen page shows who received alice's data: city, for traffic planning, 4 records.
    shown = wait_until(lambda: space.received(citizens["mix-alice"]), 30, "alice's transfer summary")
    assert [(s["recipient_did"], s["purpose"], s["dataset"], s["record_count"]) for s in shown] == [
        (space.consumer.did, PURPOSE, "trips-mix", 4)
    ]
    assert shown[0]["transfer_id"].startswith(provider_id)
    for other in ("mix-bob", "mix-carol", "mix-erin"):
        assert space.received(citizens[other]) == []


def test_a_withdrawal_applies_to_the_very_next_release(space: ConsentSpace) -> None:
    cards = _cards(space, "next", "alice", "carol")
    space.switch(space.citizens["next-alice"], "give")
    space.switch(space.citizens["next-carol"], "give")
    space.publish_trips("trips-next", trips(*cards.values(), each=2))
    consumer_id, _provider_id = _started_pull(space, "trips-next")
    assert cards_of(space.pull(consumer_id)) == {cards["alice"]: 2, cards["carol"]: 2}

    for _round in range(3):
        space.switch(space.citizens["next-carol"], "withdraw")  # the page has confirmed it
        assert cards_of(space.pull(consumer_id)) == {cards["alice"]: 2}  # no cache serves the old yes
        space.switch(space.citizens["next-carol"], "give")
        assert cards_of(space.pull(consumer_id)) == {cards["alice"]: 2, cards["carol"]: 2}


def test_an_agreement_that_does_not_bind_the_purpose_releases_nothing(space: ConsentSpace) -> None:
    cards = _cards(space, "loose", "alice")
    space.switch(space.citizens["loose-alice"], "give")
    space.publish_trips("trips-loose", trips(*cards.values()), purposes=None)
    consumer_id, provider_id = _started_pull(space, "trips-loose")

    assert space.pull(consumer_id) == []
    ended = wait_state(space.pair.capi, provider_id, "TERMINATED")
    assert "does not restrict the purpose" in ended["errorDetail"]
    wait_state(space.pair.tapi, consumer_id, "TERMINATED")


def test_a_purpose_without_a_consent_agreement_is_refused_and_terminates(space: ConsentSpace) -> None:
    cards = _cards(space, "other", "alice")
    space.switch(space.citizens["other-alice"], "give")
    space.publish_trips("trips-other", trips(*cards.values()), purposes=(PURPOSE, "marketing"))
    consumer_id, provider_id = _started_pull(space, "trips-other", purpose="marketing")

    assert space.pull(consumer_id) == []
    ended = wait_state(space.pair.capi, provider_id, "TERMINATED")
    assert "consent service refused" in ended["errorDetail"]
    assert "marketing" in ended["errorDetail"]


def test_consent_service_down_releases_nothing_and_says_why(space: ConsentSpace) -> None:
    cards = _cards(space, "down", "alice")
    space.switch(space.citizens["down-alice"], "give")
    space.publish_trips("trips-down", trips(*cards.values()))
    consumer_id, provider_id = _started_pull(space, "trips-down")
    space.stop_consent()
    try:
        assert space.pull(consumer_id) == []
        ended = wait_state(space.pair.capi, provider_id, "TERMINATED")
        assert "consent service unavailable" in ended["errorDetail"]
        assert "HTTP 502" in ended["errorDetail"]  # what the proxy in front says of the stopped service
        assert (
            "the personal-data gate" in wait_state(space.pair.tapi, consumer_id, "TERMINATED")["errorDetail"]
        )
    finally:
        space.start_consent()


def test_card_numbers_never_appear_in_the_connectors_logs(space: ConsentSpace) -> None:
    cards = _cards(space, "logs", "alice", "bob")
    space.switch(space.citizens["logs-alice"], "give")
    space.publish_trips("trips-logs", trips(*cards.values()))
    consumer_id, _ = _started_pull(space, "trips-logs")
    assert cards_of(space.pull(consumer_id)) == {cards["alice"]: 3}
    wait_until(lambda: space.received(space.citizens["logs-alice"]), 30, "the transfer summary")

    for node in (space.provider, space.consumer):
        log = node.data_dir.parent / f"{node.data_dir.name}-serve.log"
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        assert lines, f"{node.name} wrote no log"
        for line in lines:
            json.loads(line)  # JSON logs, one object a line
            assert "-card-" not in line, f"{node.name} logged a card number: {line}"
    sent = [line for line in (space.provider.data_dir.parent / "transit-serve.log").read_text().splitlines()]
    assert any("transfer summary sent" in line for line in sent)


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("html", "the consent service answered garbage: the consent service answered HTTP 200 without JSON"),
        ("foreign", "the consent service answered garbage: the decision allows a subject that was not asked"),
        ("slow", "consent service unavailable: the consent service cannot be reached: ReadTimeout"),
    ],
)
def test_garbage_or_silence_from_the_consent_service_releases_nothing(
    space: ConsentSpace, mode: str, says: str
) -> None:
    cards = _cards(space, f"bad-{mode}", "alice")
    space.switch(space.citizens[f"bad-{mode}-alice"], "give")
    space.publish_trips(f"trips-bad-{mode}", trips(*cards.values()))
    consumer_id, provider_id = _started_pull(space, f"trips-bad-{mode}")
    space.proxy.mode = mode
    try:
        assert space.pull(consumer_id) == []
        ended = wait_state(space.pair.capi, provider_id, "TERMINATED")
        assert says in ended["errorDetail"]
    finally:
        space.proxy.mode = "forward"


def _broker_up() -> bool:
    try:
        with socket.create_connection(BROKER, timeout=2):
            return True
    except OSError:
        return False


BROKER = ("127.0.0.1", 1883)
WITHDRAWAL_BOUND_SECONDS = 1.0  # docs/consent.md: a running live stream stops releasing within this


@pytest.mark.skipif(not _broker_up(), reason="no MQTT broker at 127.0.0.1:1883")
def test_a_withdrawal_stops_a_running_live_stream_within_the_bound(space: ConsentSpace) -> None:
    cards = _cards(space, "live", "alice", "carol")
    space.switch(space.citizens["live-alice"], "give")
    space.switch(space.citizens["live-carol"], "give")
    topic = f"tessera-test/{uuid.uuid4().hex}/trips"
    space.publish_personal("trips-live", {"type": "Mqtt", "broker": "127.0.0.1:1883", "topic": topic})
    consumer_id, provider_id = _started_pull(space, "trips-live")
    endpoint, token, _ = space.pair.edr(consumer_id)

    received: list[tuple[float, dict[str, Any]]] = []
    opened = threading.Event()

    def read() -> None:  # city's side: the live NDJSON stream, each line stamped when it arrived
        with httpx.stream(
            "GET", endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as response:
            assert response.status_code == 200
            opened.set()
            for line in response.iter_lines():
                if line.strip():
                    record = json.loads(line)
                    received.append((time.time(), record))
                    if record.get("end"):
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(60), "the live stream did not open"
    withdrawn_at = 0.0

    async def publish() -> None:
        nonlocal withdrawn_at
        async with aiomqtt.Client(*BROKER) as client:
            seq = 0
            started = time.time()
            while time.time() - started < 6.0:
                if withdrawn_at == 0.0 and time.time() - started >= 2.5:
                    await asyncio.to_thread(space.switch, space.citizens["live-carol"], "withdraw")
                    withdrawn_at = time.time()  # the page has confirmed the withdrawal by now
                for card in cards.values():
                    record = {"card_id": card, "seq": seq, "sent": time.time()}
                    await client.publish(topic, json.dumps(record).encode(), qos=1)
                seq += 1
                await asyncio.sleep(0.05)
            await client.publish(topic, json.dumps({"card_id": cards["alice"], "end": True}).encode(), qos=1)

    asyncio.run(publish())
    reader.join(60)
    assert not reader.is_alive(), "the live stream did not deliver the last message"

    alice = [r for _, r in received if r["card_id"] == cards["alice"] and "seq" in r]
    carol = [r for _, r in received if r["card_id"] == cards["carol"]]
    assert [r["seq"] for r in alice] == list(range(len(alice)))  # alice's: every one, in order
    assert len(alice) > 20
    assert any(r["sent"] < withdrawn_at - 1.0 for r in carol)  # carol's, before she withdrew
    late = [r for r in carol if r["sent"] > withdrawn_at + WITHDRAWAL_BOUND_SECONDS]
    assert late == [], f"released {len(late)} of carol's records published after the bound"
    last = max(r["sent"] for r in carol) - withdrawn_at
    print(f"\nlast carol record released was published {last:+.3f} s after the withdrawal")
    assert transfer(space.pair.capi, provider_id)["state"] == "STARTED"
