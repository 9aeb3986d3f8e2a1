"""A handler waiting for a delivery in flight (``runtime.outbox.settle``), against a real connector database.

The worker's record is a commit made on another connection (another thread, or
another replica's process); the waiting handler must see it: at once when the
worker announces it in this process, by re-reading when it does not, and never
wait past its limit.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from catalog.assets import now_millis
from contracts.models import NegotiationRow
from runtime import outbox
from tests.conftest import Participant

MakeConnector = Callable[..., Participant]


@pytest.fixture
def in_flight(make_connector: MakeConnector) -> tuple[Engine, str]:
    """A connector's database, and a negotiation whose queued message a worker is delivering now."""
    engine = make_connector("transit").core.engine
    return engine, _row_in_flight(engine)


def _row_in_flight(engine: Engine) -> str:
    """A negotiation whose queued message a worker is delivering now (its lease held)."""
    row = NegotiationRow(
        id=str(uuid.uuid4()),
        role="consumer",
        consumer_pid=f"urn:uuid:{uuid.uuid4()}",
        counter_party_did="did:web:provider.example",
        counter_party_address="https://provider.example/dsp",
        state="REQUESTED",
        offer="{}",
        created_at=now_millis(),
        updated_at=now_millis(),
        pending_message='{"message": "ACCEPTED"}',
        next_attempt_at=now_millis(),
        lease_owner="worker",
        lease_until=now_millis() + 30_000,
    )
    negotiation_id = row.id
    with Session(engine) as session:
        session.add(row)
        session.commit()
    return negotiation_id


def _record_delivery(
    engine: Engine, negotiation_id: str, *, announce: bool, after: float, announced_as: str | None = None
) -> threading.Thread:
    """In another thread, as the worker does: commit the outcome and release the lease, then announce it
    (as the record of ``announced_as``, when given, instead of the row's own)."""

    def record() -> None:
        time.sleep(after)
        with Session(engine) as session:
            row = session.get(NegotiationRow, negotiation_id)
            assert row is not None
            row.state, row.pending_message, row.lease_owner, row.lease_until = "ACCEPTED", None, None, None
            session.add(row)
            session.commit()
        if announce:
            outbox.records.announce(announced_as or negotiation_id)

    thread = threading.Thread(target=record)
    thread.start()
    return thread


def _settled(engine: Engine, negotiation_id: str) -> tuple[NegotiationRow, float]:
    with Session(engine) as session:
        row = session.get(NegotiationRow, negotiation_id)
        assert row is not None
        began = time.monotonic()
        settled = outbox.settle(session, row, lambda current: current.state == "ACCEPTED")
        return settled, time.monotonic() - began


def test_the_wait_ends_when_the_worker_announces_its_record(
    in_flight: tuple[Engine, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, negotiation_id = in_flight
    # Re-reads far apart: only the announcement can end the wait before the first one.
    monkeypatch.setattr(outbox, "REREAD_SECONDS", 20.0)
    monkeypatch.setattr(outbox, "IN_FLIGHT_WAIT_SECONDS", 60.0)
    worker = _record_delivery(engine, negotiation_id, announce=True, after=0.2)
    row, waited = _settled(engine, negotiation_id)
    worker.join()
    assert row.state == "ACCEPTED"
    assert row.pending_message is None
    assert waited < 10.0, f"woken by the announcement, not by the re-read after 20 s (waited {waited:.1f} s)"


def test_the_record_of_another_row_does_not_wake_the_wait(
    in_flight: tuple[Engine, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several negotiations in flight, each record wakes only the handler waiting for its row: the
    others keep waiting without re-reading theirs. Here the commit is announced under another row's
    id, so the waiter learns of it only by re-reading, which it does next when its limit is up."""
    engine, negotiation_id = in_flight
    monkeypatch.setattr(outbox, "REREAD_SECONDS", 20.0)
    monkeypatch.setattr(outbox, "IN_FLIGHT_WAIT_SECONDS", 0.8)
    worker = _record_delivery(engine, negotiation_id, announce=True, after=0.1, announced_as="another-row")
    row, waited = _settled(engine, negotiation_id)
    worker.join()
    assert waited >= 0.8, f"woken by another row's record after {waited:.2f} s"
    assert row.state == "ACCEPTED", "re-read once more at the limit"


def test_a_record_made_elsewhere_is_seen_by_re_reading(in_flight: tuple[Engine, str]) -> None:
    engine, negotiation_id = in_flight
    # Another replica's worker: its commit is never announced in this process.
    worker = _record_delivery(engine, negotiation_id, announce=False, after=0.2)
    row, _ = _settled(engine, negotiation_id)
    worker.join()
    assert (row.state, row.lease_until) == ("ACCEPTED", None)


def test_the_wait_stops_at_its_limit_and_returns_the_row_as_it_is(
    in_flight: tuple[Engine, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, negotiation_id = in_flight
    monkeypatch.setattr(outbox, "IN_FLIGHT_WAIT_SECONDS", 0.3)
    row, waited = _settled(engine, negotiation_id)
    assert row.state == "REQUESTED"
    assert row.pending_message is not None, "still in flight: the caller judges the message by it"
    assert waited >= 0.3


def test_nothing_is_waited_for_when_no_delivery_is_in_flight(in_flight: tuple[Engine, str]) -> None:
    engine, negotiation_id = in_flight
    with Session(engine) as session:
        row = session.get(NegotiationRow, negotiation_id)
        assert row is not None
        row.lease_until = now_millis() - 1  # its worker stopped; the lease has expired
        session.add(row)
        session.commit()
    row, waited = _settled(engine, negotiation_id)
    assert row.state == "REQUESTED"
    assert waited < 0.3
