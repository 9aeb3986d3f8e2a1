"""EDR negotiations on a real database (SQLite and PostgreSQL): each one starts exactly one transfer.

The step under test is ``advance``: the worker's poll and the DSP route's kick
(and, with PostgreSQL, other replicas) may run it for the same negotiation at
once. Here four threads do, against one connector database; the negotiation
and its agreement are stored as a FINALIZED negotiation leaves them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlmodel import Session, select

from catalog.assets import now_millis
from connector import edr_negotiations
from connector.edr_models import FAILED, NEGOTIATING, TRANSFER_REQUESTED, EdrNegotiationRow
from connector.edr_negotiations import advance, agreed_purpose, negotiations_to_advance, start_edr_negotiation
from connector.transfer_models import TransferRow
from connector.transfers import consumer_request
from contracts.agreements import AgreementRecord, store_agreement
from contracts.models import NegotiationRow
from identity.trustlist import add_member
from tests.conftest import Participant
from tests.helpers import public_jwk_of


def _negotiation(transit: Participant, city: Participant, state: str, agreement_id: str | None) -> str:
    negotiation_id = str(uuid.uuid4())
    with Session(transit.core.engine) as session:
        session.add(
            NegotiationRow(
                id=negotiation_id,
                role="consumer",
                provider_pid=f"urn:uuid:{uuid.uuid4()}",
                consumer_pid=f"urn:uuid:{uuid.uuid4()}",
                counter_party_did=city.did,
                counter_party_address=city.settings.dsp_url,
                state=state,
                asset_id="bike-counts",
                offer=json.dumps({"@id": "offer-1", "target": "bike-counts"}),
                agreement_id=agreement_id,
                error_detail="the provider refused: membership" if state == "TERMINATED" else None,
                created_at=now_millis(),
                updated_at=now_millis(),
            )
        )
        session.add(
            EdrNegotiationRow(
                negotiation_id=negotiation_id,
                state=NEGOTIATING,
                purpose="planning",
                created_at=now_millis(),
                updated_at=now_millis(),
            )
        )
        session.commit()
    return negotiation_id


def _pair(make_connector: Callable[..., Participant], database_url: str) -> tuple[Participant, Participant]:
    city = make_connector("city")
    transit = make_connector("transit", database_url)
    with Session(transit.core.engine) as session:
        add_member(session, city.did, city.settings.dsp_url, public_jwk_of(city.settings.data_dir))
    return city, transit


def _agreement(transit: Participant, city: Participant, negotiation_id: str, agreement_id: str) -> None:
    with Session(transit.core.engine) as session:
        store_agreement(
            session,
            AgreementRecord(
                id=agreement_id,
                negotiation_id=negotiation_id,
                provider_did=city.did,
                consumer_did=transit.did,
                asset_id="bike-counts",
                agreement={"@id": agreement_id, "target": "bike-counts"},
                signed_at=now_millis(),
                provider_signature=None,
                consumer_signature=None,
            ),
        )


def _advance(transit: Participant, negotiation_id: str) -> str | None:
    with Session(transit.core.engine) as session:
        return advance(session, transit.core, negotiation_id)


def _edr(transit: Participant, negotiation_id: str) -> EdrNegotiationRow:
    with Session(transit.core.engine) as session:
        row = session.get(EdrNegotiationRow, negotiation_id)
        assert row is not None
        session.expunge(row)
        return row


def _transfers(transit: Participant) -> list[TransferRow]:
    with Session(transit.core.engine) as session:
        rows = list(session.scalars(select(TransferRow)))
        for row in rows:
            session.expunge(row)
        return rows


def test_concurrent_advances_start_exactly_one_transfer(
    make_connector: Callable[..., Participant], database_url: str
) -> None:
    city, transit = _pair(make_connector, database_url)
    agreement_id = f"urn:uuid:{uuid.uuid4()}"
    negotiation_id = _negotiation(transit, city, "FINALIZED", agreement_id)
    _agreement(transit, city, negotiation_id, agreement_id)
    with Session(transit.core.engine) as session:
        assert negotiations_to_advance(session) == [negotiation_id]

    with ThreadPoolExecutor(max_workers=4) as pool:
        started = [t for t in pool.map(lambda _: _advance(transit, negotiation_id), range(4)) if t]

    transfers = _transfers(transit)
    assert len(started) == 1, started
    assert [t.id for t in transfers] == started
    transfer = transfers[0]
    assert (transfer.role, transfer.agreement_id, transfer.purpose) == ("consumer", agreement_id, "planning")
    assert transfer.transfer_type == "HttpData-PULL"
    assert transfer.pending_message is not None  # the request waits in the outbox for the worker
    edr = _edr(transit, negotiation_id)
    assert (edr.state, edr.transfer_id) == (TRANSFER_REQUESTED, transfer.id)
    with Session(transit.core.engine) as session:
        assert negotiations_to_advance(session) == []
    assert _advance(transit, negotiation_id) is None  # nothing more, ever
    assert len(_transfers(transit)) == 1


def test_a_stop_before_the_transfer_is_linked_leaves_nothing_and_the_next_advance_starts_it(
    make_connector: Callable[..., Participant], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim, the new transfer and its link to the EDR negotiation are one commit: a stop in
    between (here: right after the transfer is created) keeps none of them, so the next poll starts
    exactly one transfer, linked (before, the claim and transfer were kept and the link was lost)."""
    city, transit = _pair(make_connector, database_url)
    agreement_id = f"urn:uuid:{uuid.uuid4()}"
    negotiation_id = _negotiation(transit, city, "FINALIZED", agreement_id)
    _agreement(transit, city, negotiation_id, agreement_id)
    requested = consumer_request

    def stopped_after(*args: Any, **kwargs: Any) -> Any:
        requested(*args, **kwargs)
        raise RuntimeError("stopped before the transfer is linked")

    monkeypatch.setattr(edr_negotiations, "consumer_request", stopped_after)
    with pytest.raises(RuntimeError, match="stopped before"):
        _advance(transit, negotiation_id)
    assert _transfers(transit) == []
    assert (_edr(transit, negotiation_id).state, _edr(transit, negotiation_id).transfer_id) == (
        NEGOTIATING,
        None,
    )

    monkeypatch.setattr(edr_negotiations, "consumer_request", requested)
    started = _advance(transit, negotiation_id)
    [transfer] = _transfers(transit)
    assert started == transfer.id
    assert (_edr(transit, negotiation_id).state, _edr(transit, negotiation_id).transfer_id) == (
        TRANSFER_REQUESTED,
        transfer.id,
    )


def test_a_stop_before_the_edr_row_is_saved_leaves_no_negotiation(
    make_connector: Callable[..., Participant], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The negotiation and its EDR row are one commit: a negotiation saved alone would never start
    its transfer."""
    city, transit = _pair(make_connector, database_url)

    def stopped(_offer: Any) -> str:
        raise RuntimeError("stopped before the EDR row is saved")

    monkeypatch.setattr(edr_negotiations, "agreed_purpose", stopped)
    offer = {"@id": "offer-1", "target": "bike-counts", "permission": [{"action": "use"}]}
    with Session(transit.core.engine) as session, pytest.raises(RuntimeError, match="stopped before"):
        start_edr_negotiation(
            session,
            transit.core,
            counter_party=city.did,
            address=city.settings.dsp_url,
            offer=offer,
            purpose=None,
            callback_addresses=None,
        )
    with Session(transit.core.engine) as session:
        assert list(session.scalars(select(NegotiationRow))) == []
        assert list(session.scalars(select(EdrNegotiationRow))) == []


def test_a_terminated_negotiation_or_a_refused_request_fails_with_the_reason(
    make_connector: Callable[..., Participant], database_url: str
) -> None:
    city, transit = _pair(make_connector, database_url)
    terminated = _negotiation(transit, city, "TERMINATED", None)
    assert _advance(transit, terminated) is None
    edr = _edr(transit, terminated)
    assert edr.state == FAILED
    assert "terminated" in (edr.error_detail or "")
    assert "membership" in (edr.error_detail or "")

    # FINALIZED, but the agreement it names is not ours: the transfer is refused before it leaves.
    orphan = _negotiation(transit, city, "FINALIZED", "urn:uuid:not-stored")
    assert _advance(transit, orphan) is None
    edr = _edr(transit, orphan)
    assert edr.state == FAILED
    assert "no agreement" in (edr.error_detail or "")
    assert _transfers(transit) == []

    still = _negotiation(transit, city, "REQUESTED", None)  # not finished: left alone
    assert _advance(transit, still) is None
    assert _edr(transit, still).state == NEGOTIATING


def test_the_declared_purpose_defaults_to_the_one_the_offer_names() -> None:
    def offer(*constraints: dict[str, str]) -> dict[str, object]:
        return {"permission": [{"action": "use", "constraint": list(constraints)}]}

    planning = {"leftOperand": "purpose", "operator": "eq", "rightOperand": "planning"}
    research = {"leftOperand": "purpose", "operator": "eq", "rightOperand": "research"}
    assert agreed_purpose(offer(planning)) == "planning"
    assert agreed_purpose(offer(planning, research)) is None  # two: the consumer must say which
    assert agreed_purpose(offer({**planning, "operator": "neq"})) is None
    assert agreed_purpose(offer()) is None
