"""Consent-gated release between real processes: a consent service, transit (provider), city (consumer).

City pulls transit's personal ``card-trips``-like files through transit's public data endpoint;
transit's connector asks the consent service (real process, real database: SQLite and
PostgreSQL) which card holders consented, and releases only their records. Withdrawals apply
to the next release at once; the consent service stopped means nothing personal leaves and
the transfer is terminated saying why; card numbers never appear in clear in the connectors'
JSON logs; the citizens see who received their data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

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
        assert "cannot be reached" in ended["errorDetail"]
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
