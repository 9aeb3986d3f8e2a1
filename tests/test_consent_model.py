"""The consent record model and the citizen service layer, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import TypedDict

import pytest
from sqlalchemy import text
from sqlmodel import Session

from consent import service
from consent.agreements import register_agreement, revise_agreement
from consent.errors import Conflict, HistoryTampered, InvalidInput, NotFound
from consent.hashing import content_hash, subject_hash
from consent.ledger import verify_history
from consent.models import AgreementRevision, Organisation
from consent.receipts import ReceiptError, verify_receipt
from identity.keys import public_jwk
from tests.consent_helpers import CITY, TRANSIT, UTILITY, consent_engine, signer, terms

DAY = 86_400_000


class Who(TypedDict):
    actor: str
    method: str


def actor(citizen: str) -> Who:
    return {"actor": f"citizen:{citizen}", "method": "self-service-page"}


def test_agreement_revisions_are_immutable_and_hashed(database_url: str) -> None:
    with consent_engine(database_url) as engine, Session(engine) as session:
        first = register_agreement(session, TRANSIT, terms())
        assert first.version == 1
        # The content hash is the SHA-256 of the RFC 8785 form of the stored content.
        assert first.content_hash == content_hash(json.loads(first.content))
        same = revise_agreement(session, TRANSIT, first.agreement_id, terms())
        assert (same.version, same.content_hash) == (1, first.content_hash)  # nothing changed, no revision

        changed = terms(notice={"text": "New wording.", "version": "1.1", "language": "en"})
        second = revise_agreement(session, TRANSIT, first.agreement_id, changed)
        assert second.version == 2
        assert second.content_hash != first.content_hash
        stored_first = session.get(AgreementRevision, (first.agreement_id, 1))
        assert stored_first is not None
        assert stored_first.content_hash == first.content_hash

        with pytest.raises(Conflict, match="name"):
            register_agreement(session, TRANSIT, terms())
        with pytest.raises(Conflict, match="purpose cannot change"):
            revise_agreement(session, TRANSIT, first.agreement_id, terms(purpose="marketing"))
        with pytest.raises(NotFound):  # another controller cannot revise it
            revise_agreement(session, CITY, first.agreement_id, changed)


def test_consent_lifecycle_with_dpv_states_receipts_and_history(database_url: str) -> None:
    sign = signer()
    with consent_engine(database_url) as engine, Session(engine) as session:
        agreement = register_agreement(session, TRANSIT, terms()).agreement_id
        alice = service.create_citizen(session)
        service.register_subject_identifier(session, alice, TRANSIT, "4711-0001", "card_id")

        before = service.switches(session, alice)
        assert [(s.recipient_did, s.state, s.on) for s in before] == [
            (CITY, "ConsentUnknown", False),
            (UTILITY, "ConsentUnknown", False),
        ]  # off until the citizen turns it on

        given = service.give_consent(session, sign, alice, agreement, CITY, **actor(alice))
        assert (given.state, given.on, given.changed) == ("ConsentGiven", True, True)
        again = service.give_consent(session, sign, alice, agreement, CITY, **actor(alice))
        assert again.changed is False
        assert again.receipt is None

        refused = service.set_consent(session, sign, alice, agreement, UTILITY, False, **actor(alice))
        assert refused.state == "ConsentRefused"
        withdrawn = service.set_consent(session, sign, alice, agreement, CITY, False, **actor(alice))
        assert withdrawn.state == "ConsentWithdrawn"
        assert withdrawn.on is False
        renewed = service.set_consent(session, sign, alice, agreement, CITY, True, **actor(alice))
        assert renewed.state == "RenewedConsentGiven"
        assert renewed.on

        states = [entry.state for entry in service.history(session, alice)]
        assert states == ["RenewedConsentGiven", "ConsentWithdrawn", "ConsentRefused", "ConsentGiven"]
        entry = service.history(session, alice)[0]
        assert (entry.actor, entry.method, entry.purpose, entry.controller_did) == (
            f"citizen:{alice}",
            "self-service-page",
            "traffic-planning",
            TRANSIT,
        )

        # The receipt: an EdDSA JWS by the service with the Kantara / 27560 fields.
        assert renewed.receipt is not None
        assert renewed.seq is not None
        claims = verify_receipt(renewed.receipt, public_jwk(sign.key.public_key()))
        assert claims["version"] == "KI-CR-v1.1.0"
        assert claims["piiPrincipalId"] == alice
        assert claims["piiControllers"][0]["did"] == TRANSIT
        purpose = claims["services"][0]["purposes"][0]
        assert purpose["purposeCategory"] == ["traffic-planning"]
        assert purpose["thirdPartyDid"] == CITY
        assert claims["consentRecord"]["state"] == "RenewedConsentGiven"
        assert claims["consentRecord"]["eventHash"] == entry.hash
        assert service.receipt_of(session, alice, renewed.seq) == renewed.receipt
        with pytest.raises(ReceiptError):  # another key did not sign it
            verify_receipt(renewed.receipt, public_jwk(signer().key.public_key()))
        forged = renewed.receipt.rsplit(".", 1)[0] + "." + "A" * 86
        with pytest.raises(ReceiptError):
            verify_receipt(forged, public_jwk(sign.key.public_key()))

        assert verify_history(session) == 4


def test_expiry_and_material_revisions_end_validity(database_url: str) -> None:
    sign = signer()
    with consent_engine(database_url) as engine, Session(engine) as session:
        agreement = register_agreement(session, TRANSIT, terms(consent_duration_days=30)).agreement_id
        bob = service.create_citizen(session)
        given = service.give_consent(session, sign, bob, agreement, CITY, now=1_000_000, **actor(bob))
        assert given.on
        (switch, _) = service.switches(session, bob, now=1_000_000 + 29 * DAY)
        assert switch.on
        assert switch.expires_at == 1_000_000 + 30 * DAY
        (switch, _) = service.switches(session, bob, now=1_000_000 + 30 * DAY)
        assert (switch.state, switch.on) == ("ConsentExpired", False)

        # The sweep writes the expiry down as an event.
        assert service.expire_due(session, sign, now=1_000_000 + 31 * DAY) == 1
        assert service.history(session, bob)[0].state == "ConsentExpired"
        renewed = service.give_consent(session, sign, bob, agreement, CITY, **actor(bob))
        assert renewed.state == "RenewedConsentGiven"

        # An editorial revision keeps consent; a material one asks the citizen again.
        note = {"text": "Clearer words.", "version": "1.0.1", "language": "en"}
        revise_agreement(
            session, TRANSIT, agreement, terms(consent_duration_days=30, notice=note), material=False
        )
        (switch, _) = service.switches(session, bob)
        assert switch.on
        assert switch.needs_review is False
        more = terms(
            consent_duration_days=30, data_categories=["dpv:Location", "dpv:TravelHistory", "dpv:Age"]
        )
        revise_agreement(session, TRANSIT, agreement, more)
        (switch, _) = service.switches(session, bob)
        assert (switch.state, switch.on, switch.needs_review) == ("ConsentInvalidated", False, True)
        again = service.give_consent(session, sign, bob, agreement, CITY, **actor(bob))
        assert again.on
        assert again.state == "RenewedConsentGiven"
        assert verify_history(session) == 4


def test_withdraw_everything_is_one_action(database_url: str) -> None:
    sign = signer()
    with consent_engine(database_url) as engine, Session(engine) as session:
        first = register_agreement(session, TRANSIT, terms()).agreement_id
        second = register_agreement(session, CITY, terms(name="energy", controller_name="City", purpose="energy-planning",
                                                         recipients=[{"did": UTILITY, "name": "Utility"}])).agreement_id  # fmt: skip
        carol = service.create_citizen(session)
        for agreement, recipient in ((first, CITY), (first, UTILITY), (second, UTILITY)):
            service.give_consent(session, sign, carol, agreement, recipient, **actor(carol))
        results = service.withdraw_everything(session, sign, carol, **actor(carol))
        assert sorted(r.state for r in results) == ["ConsentWithdrawn"] * 3
        assert all(r.receipt for r in results)
        assert not any(s.on for s in service.switches(session, carol))
        assert service.withdraw_everything(session, sign, carol, **actor(carol)) == []


def test_an_edited_history_is_detected(database_url: str) -> None:
    sign = signer()
    with consent_engine(database_url) as engine:
        with Session(engine) as session:
            agreement = register_agreement(session, TRANSIT, terms()).agreement_id
            dave = service.create_citizen(session)
            service.give_consent(session, sign, dave, agreement, CITY, **actor(dave))
            middle = service.withdraw_consent(session, sign, dave, agreement, CITY, **actor(dave))
            service.give_consent(session, sign, dave, agreement, CITY, **actor(dave))
            assert verify_history(session) == 3

        # Someone with database access rewrites the withdrawal as a consent.
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE consent_event SET state = 'ConsentGiven' WHERE seq = :seq"), {"seq": middle.seq}
            )
        with Session(engine) as session, pytest.raises(HistoryTampered) as edited:
            verify_history(session)
        assert edited.value.seq == middle.seq

        # Recomputing that event's hash does not help: the next event covers the old one.
        with Session(engine) as session:
            from consent.ledger import event_hash
            from consent.models import ConsentEvent

            event = session.get(ConsentEvent, middle.seq)
            assert event is not None
            event.hash = event_hash(event)
            session.add(event)
            session.commit()
        with Session(engine) as session, pytest.raises(HistoryTampered, match="does not follow"):
            verify_history(session)


def test_a_record_changed_behind_its_history_is_detected(database_url: str) -> None:
    """Decisions read the record's state columns; one rewritten without an event shows."""
    sign = signer()
    with consent_engine(database_url) as engine:
        with Session(engine) as session:
            agreement = register_agreement(session, TRANSIT, terms()).agreement_id
            gina = service.create_citizen(session)
            service.refuse_consent(session, sign, gina, agreement, CITY, **actor(gina))
            assert verify_history(session) == 1
        with engine.begin() as connection:
            connection.execute(text("UPDATE consent_record SET state = 'ConsentGiven'"))
        with Session(engine) as session, pytest.raises(HistoryTampered, match="does not match its history"):
            verify_history(session)


def test_a_removed_event_is_detected(database_url: str) -> None:
    sign = signer()
    with consent_engine(database_url) as engine:
        with Session(engine) as session:
            agreement = register_agreement(session, TRANSIT, terms()).agreement_id
            erin = service.create_citizen(session)
            service.give_consent(session, sign, erin, agreement, CITY, **actor(erin))
            last = service.withdraw_consent(session, sign, erin, agreement, CITY, **actor(erin))
        with engine.begin() as connection:  # drop the newest event (the withdrawal) and roll the record back
            connection.execute(text("DELETE FROM consent_event WHERE seq = :seq"), {"seq": last.seq})
        with Session(engine) as session, pytest.raises(HistoryTampered):
            verify_history(session)


def test_citizens_see_and_change_only_their_own_records(database_url: str) -> None:
    sign = signer()
    with consent_engine(database_url) as engine, Session(engine) as session:
        agreement = register_agreement(session, TRANSIT, terms()).agreement_id
        alice, mallory = service.create_citizen(session), service.create_citizen(session)
        card = service.register_subject_identifier(session, alice, TRANSIT, "4711-0001", "card_id")
        given = service.give_consent(session, sign, alice, agreement, CITY, **actor(alice))
        assert given.seq is not None

        # Mallory's views hold nothing of Alice's.
        assert service.history(session, mallory) == []
        assert service.subject_identifiers(session, mallory) == []
        assert not any(s.on for s in service.switches(session, mallory))
        exported = service.export_citizen(session, mallory)
        assert alice not in json.dumps(exported)
        assert card.subject_hash not in json.dumps(exported)
        # ...and Mallory cannot reach Alice's things by id, nor claim her card.
        with pytest.raises(NotFound):
            service.receipt_of(session, mallory, given.seq)
        with pytest.raises(NotFound):
            service.remove_subject_identifier(session, mallory, TRANSIT, card.subject_hash)
        with pytest.raises(Conflict):
            service.register_subject_identifier(session, mallory, TRANSIT, " 4711-0001 ", "card_id")
        # Withdrawing everything as Mallory leaves Alice's consent on.
        assert service.withdraw_everything(session, sign, mallory, **actor(mallory)) == []
        assert [s.on for s in service.switches(session, alice)] == [True, False]

        # Alice's export has everything: identifiers, consents, history with receipts.
        mine = service.export_citizen(session, alice)
        assert mine["subject_identifiers"][0]["subject_hash"] == card.subject_hash
        assert "4711-0001" not in json.dumps(mine)  # the card number itself is never stored
        assert mine["history"][0]["receipt"] == given.receipt
        assert f"{agreement}:1" in mine["agreement_revisions"]

        with pytest.raises(NotFound):
            service.history(session, "no-such-citizen")
        with pytest.raises(InvalidInput):
            service.give_consent(session, sign, alice, agreement, CITY, actor="bad actor!", method="page")
        with pytest.raises(NotFound):
            service.give_consent(session, sign, alice, agreement, "did:web:stranger.example", **actor(alice))


def test_subject_identifiers_are_stored_as_keyed_hashes_only(database_url: str) -> None:
    with consent_engine(database_url) as engine, Session(engine) as session:
        register_agreement(session, TRANSIT, terms())
        alice = service.create_citizen(session)
        view = service.register_subject_identifier(session, alice, TRANSIT, "4711-0001", "card_id")
        key = session.get(Organisation, TRANSIT)
        assert key is not None
        assert view.subject_hash == subject_hash(key.pseudonym_key, "4711-0001")
        assert view.hint == "0001"
        with engine.connect() as connection:
            dump = " ".join(
                str(row) for row in connection.execute(text("SELECT * FROM consent_subject_identifier"))
            )
            dump += " ".join(str(row) for row in connection.execute(text("SELECT * FROM consent_change")))
        assert "4711-0001" not in dump
        with pytest.raises(InvalidInput):
            service.register_subject_identifier(session, alice, TRANSIT, "", "card_id")
        with pytest.raises(InvalidInput):
            service.register_subject_hash(session, alice, TRANSIT, "not-a-hash", "card_id")


def test_concurrent_changes_keep_one_consistent_history(database_url: str) -> None:
    """Switches flipped from many sessions at once: each change is whole or refused (409), never half."""
    from concurrent.futures import ThreadPoolExecutor

    sign = signer()
    with consent_engine(database_url) as engine:
        with Session(engine) as session:
            agreement = register_agreement(session, TRANSIT, terms()).agreement_id
            frank = service.create_citizen(session)

        def flip(turn: int) -> str:
            with Session(engine) as session:
                try:
                    service.set_consent(session, sign, frank, agreement, CITY, turn % 2 == 0, **actor(frank))
                except Conflict:
                    return "conflict"
                return "ok"

        with ThreadPoolExecutor(max_workers=6) as pool:
            outcomes = list(pool.map(flip, range(30)))
        assert set(outcomes) <= {"ok", "conflict"}
        assert "ok" in outcomes
        with Session(engine) as session:
            events = verify_history(session)
            entries = service.history(session, frank)
            assert len(entries) == events
            (switch, _) = service.switches(session, frank)
            assert switch.state == entries[0].state  # the record says what its newest event says


def test_an_organisation_first_seen_by_many_requests_at_once_gets_one_key(database_url: str) -> None:
    """The first requests of a new connector race to create its row: all succeed, with one pseudonym key."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from consent.agreements import pseudonym_key_of

    newcomer = "did:web:newcomer.example"
    with consent_engine(database_url) as engine:
        start = threading.Barrier(6)

        def first_use(_: int) -> str:
            with Session(engine) as session:
                start.wait()
                return pseudonym_key_of(session, newcomer)

        with ThreadPoolExecutor(max_workers=6) as pool:
            keys = list(pool.map(first_use, range(6)))
        with Session(engine) as session:
            stored = session.get(Organisation, newcomer)
            assert stored is not None
        assert set(keys) == {stored.pseudonym_key}
