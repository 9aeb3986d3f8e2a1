"""The consent service's connector-facing API in its real ASGI app, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from consent import service
from consent.hashing import subject_hash
from tests.consent_helpers import (
    API,
    CITY,
    TERMS,
    UTILITY,
    Connector,
    ConsentService,
    consent_service,
    register,
    signer,
)

CARDS = {"alice": "4711-0001", "bob": "4711-0002", "carol": "4711-0003", "dave": "4711-0004"}


def _key(client: TestClient, svc: ConsentService, controller: Connector) -> str:
    response = client.get(f"{API}/pseudonymisation-key", headers=controller.auth(svc.did))
    assert response.status_code == 200
    assert response.json()["algorithm"] == "HMAC-SHA256"
    key: str = response.json()["key"]
    return key


def _decide(client: TestClient, svc: ConsentService, caller: Connector, **fields: Any) -> Any:
    body = {
        "controller": caller.did,
        "recipient": CITY,
        "purpose": "traffic-planning",
        "dataset": "card-trips",
    }
    body.update(fields)
    return client.post(f"{API}/decisions", json=body, headers=caller.auth(svc.did))


def _citizens(svc: ConsentService, controller: str, agreement: str) -> dict[str, str]:
    """alice gives consent, bob refuses, carol gives, dave registered his card but decided nothing."""
    sign = signer()
    ids: dict[str, str] = {}
    with svc.session() as session:
        for name, card in CARDS.items():
            ids[name] = service.create_citizen(session)
            service.register_subject_identifier(session, ids[name], controller, card, "card_id")
        page = "self-service-page"
        service.give_consent(session, sign, ids["alice"], agreement, CITY, actor="citizen:alice", method=page)
        service.refuse_consent(session, sign, ids["bob"], agreement, CITY, actor="citizen:bob", method=page)
        service.give_consent(session, sign, ids["carol"], agreement, CITY, actor="citizen:carol", method=page)
    return ids


def test_controllers_register_and_revise_their_agreements(tmp_path: Path, database_url: str) -> None:
    with consent_service(tmp_path, database_url) as svc, TestClient(svc.app()) as client:
        transit, city = svc.join("transit"), svc.join("city")
        created = register(client, svc, transit)
        assert (created["version"], created["controller"], created["purpose"]) == (
            1,
            transit.did,
            "traffic-planning",
        )
        assert len(created["content_hash"]) == 64

        again = client.post(f"{API}/agreements", json=TERMS, headers=transit.auth(svc.did))
        assert again.status_code == 409
        assert again.json()["error"] == "conflict"

        revised_terms = copy.deepcopy(TERMS)
        revised_terms["data_categories"] = ["dpv:Location"]
        url = f"{API}/agreements/{created['id']}"
        foreign = client.put(url, json={"terms": revised_terms}, headers=city.auth(svc.did))
        assert foreign.status_code == 404  # not the controller: as if it did not exist
        revised = client.put(url, json={"terms": revised_terms}, headers=transit.auth(svc.did))
        assert revised.status_code == 200, revised.text
        assert (revised.json()["version"], revised.json()["min_consent_version"]) == (2, 2)
        assert revised.json()["content_hash"] != created["content_hash"]

        detail = client.get(url, headers=transit.auth(svc.did)).json()
        assert [r["version"] for r in detail["revisions"]] == [1, 2]
        assert client.get(url, headers=city.auth(svc.did)).status_code == 404
        assert client.get(f"{API}/agreements", headers=city.auth(svc.did)).json() == {"agreements": []}
        assert (
            client.get(f"{API}/agreements", headers=transit.auth(svc.did)).json()["agreements"][0]["version"]
            == 2
        )

        for bad in (
            {k: v for k, v in TERMS.items() if k != "purpose"},
            {**TERMS, "surprise": 1},
            {**TERMS, "name": "other", "retention": "one year"},
            {**TERMS, "name": "other", "recipients": []},
            {**TERMS, "name": "other", "recipients": [{"did": "not a did", "name": "x"}]},
        ):
            refused = client.post(f"{API}/agreements", json=bad, headers=transit.auth(svc.did))
            assert refused.status_code == 422, bad
            assert refused.headers["content-type"] == "application/json"
        assert client.post(f"{API}/agreements", json=TERMS).status_code == 401


def test_batch_decisions_release_only_valid_consent(tmp_path: Path, database_url: str) -> None:
    with consent_service(tmp_path, database_url) as svc, TestClient(svc.app()) as client:
        transit = svc.join("transit")
        agreement = register(client, svc, transit)["id"]
        key = _key(client, svc, transit)
        ids = _citizens(svc, transit.did, agreement)
        hashes = {name: subject_hash(key, card) for name, card in CARDS.items()}
        unknown = subject_hash(key, "9999-9999")
        asked = [*hashes.values(), unknown]

        first = _decide(client, svc, transit, subjects=asked)
        assert first.status_code == 200, first.text
        body = first.json()
        assert set(body["allowed"]) == {hashes["alice"], hashes["carol"]}
        assert body["withheld"] == 3
        assert body["agreements"] == [{"id": agreement, "version": 1}]
        assert len(body["decision_id"]) == 32

        with svc.session() as session:  # carol withdraws (as on the page)
            service.withdraw_consent(
                session,
                signer(),
                ids["carol"],
                agreement,
                CITY,
                actor="citizen:carol",
                method="self-service-page",
            )
        second = _decide(client, svc, transit, subjects=asked).json()
        assert second["allowed"] == [hashes["alice"]]
        assert second["revision"] > body["revision"]
        assert second["decision_id"] != body["decision_id"]

        # Another recipient of the same agreement: nobody consented to it.
        assert _decide(client, svc, transit, recipient=UTILITY, subjects=asked).json()["allowed"] == []

        # Alice removes her card: its hash no longer stands for anyone; registered again, it does.
        with svc.session() as session:
            service.remove_subject_identifier(session, ids["alice"], transit.did, hashes["alice"])
        assert _decide(client, svc, transit, subjects=asked).json()["allowed"] == []
        with svc.session() as session:
            service.register_subject_identifier(session, ids["alice"], transit.did, CARDS["alice"], "card_id")
        assert _decide(client, svc, transit, subjects=asked).json()["allowed"] == [hashes["alice"]]

        # A material revision of the agreement: consent given for revision 1 no longer counts.
        revised = copy.deepcopy(TERMS)
        revised["data_categories"] = ["dpv:Location", "dpv:Age"]
        url = f"{API}/agreements/{agreement}"
        assert client.put(url, json={"terms": revised}, headers=transit.auth(svc.did)).status_code == 200
        after = _decide(client, svc, transit, subjects=asked).json()
        assert after["allowed"] == []
        assert after["agreements"] == [{"id": agreement, "version": 2}]


def test_questions_without_an_agreement_are_refused(tmp_path: Path, database_url: str) -> None:
    with consent_service(tmp_path, database_url) as svc, TestClient(svc.app()) as client:
        transit, city = svc.join("transit"), svc.join("city")
        register(client, svc, transit)
        subjects = ["ab" * 32]
        cases = {
            "purpose": (
                _decide(client, svc, transit, purpose="marketing", subjects=subjects),
                403,
                "no_agreement",
            ),
            "recipient": (
                _decide(client, svc, transit, recipient="did:web:broker.example", subjects=subjects),
                403,
                "no_agreement",
            ),
            "dataset": (
                _decide(client, svc, transit, dataset="bank-accounts", subjects=subjects),
                403,
                "no_agreement",
            ),
            "someone else's data": (
                _decide(client, svc, city, controller=transit.did, subjects=subjects),
                403,
                "not_controller",
            ),
            "a controller without agreements": (
                _decide(client, svc, city, subjects=subjects),
                403,
                "no_agreement",
            ),
        }
        for case, (response, status, code) in cases.items():
            assert response.status_code == status, case
            assert response.json()["error"] == code, case
        assert "marketing" in cases["purpose"][0].json()["message"]


def test_malformed_decision_requests_get_json_errors(tmp_path: Path, database_url: str) -> None:
    with (
        consent_service(tmp_path, database_url, max_decision_subjects=5) as svc,
        TestClient(svc.app()) as client,
    ):
        transit = svc.join("transit")
        register(client, svc, transit)
        good = "cd" * 32
        bad_bodies: list[Any] = [
            {"subjects": ["4711-0001"]},  # a card number in clear is not a subject hash
            {"subjects": [good.upper()]},
            {"subjects": []},
            {"subjects": [good] * 6},  # more than the limit
            {"subjects": good},
            {"subjects": [good], "extra": True},
            {"subjects": [good], "purpose": "x y"},
            {"subjects": [good], "recipient": 7},
            {"subjects": ["cd" * 31 + "c d"]},  # whitespace that bytes.fromhex would skip
            {"subjects": ["é" * 64]},
        ]
        for fields in bad_bodies:
            response = _decide(client, svc, transit, **fields)
            assert response.status_code == 422, fields
            assert response.headers["content-type"] == "application/json"
        for raw in (b"{not json", b"[]", b"null", b""):
            response = client.post(
                f"{API}/decisions",
                content=raw,
                headers={**transit.auth(svc.did), "Content-Type": "application/json"},
            )
            assert response.status_code == 422, raw
            assert response.headers["content-type"] == "application/json"
        flood = {"subjects": [good] * 20_000}  # refused by its size, before it is parsed
        too_big = _decide(client, svc, transit, **flood)
        assert too_big.status_code == 413
        assert too_big.json()["error"] == "too_large"
        # Still answering well-formed questions afterwards.
        assert _decide(client, svc, transit, subjects=[good]).status_code == 200


def test_a_flood_of_decision_requests_is_rate_limited(tmp_path: Path) -> None:
    with (
        consent_service(tmp_path, decision_rate_per_second=0.5, decision_burst=3) as svc,
        TestClient(svc.app()) as client,
    ):
        transit, city = svc.join("transit"), svc.join("city")
        register(client, svc, transit)
        register(client, svc, city, controller_name="City", recipients=[{"did": UTILITY, "name": "Utility"}])
        statuses = [_decide(client, svc, transit, subjects=["ef" * 32]).status_code for _ in range(10)]
        assert statuses[:3] == [200, 200, 200]
        assert set(statuses[3:]) == {429}
        refused = _decide(client, svc, transit, subjects=["ef" * 32])
        assert refused.json()["error"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        # Each caller has its own bucket: the city is not slowed down by transit's flood.
        assert _decide(client, svc, city, recipient=UTILITY, subjects=["ef" * 32]).status_code == 200


def test_replicas_on_one_database_answer_alike(tmp_path: Path, database_url: str) -> None:
    with consent_service(tmp_path, database_url) as svc:
        from runtime.service import ServiceCore

        other = ServiceCore.create(svc.settings)  # a second replica: own engine, own index, same database
        try:
            with (
                TestClient(svc.app()) as first,
                TestClient(ConsentService(svc.settings, other).app()) as second,
            ):
                transit = svc.join("transit")
                agreement = register(first, svc, transit)["id"]
                key = _key(first, svc, transit)
                ids = _citizens(svc, transit.did, agreement)
                alice = subject_hash(key, CARDS["alice"])
                assert _decide(second, svc, transit, subjects=[alice]).json()["allowed"] == [alice]
                assert _decide(first, svc, transit, subjects=[alice]).json()["allowed"] == [alice]
                with svc.session() as session:
                    service.withdraw_everything(
                        session, signer(), ids["alice"], actor="citizen:alice", method="page"
                    )
                # Whichever replica answers next, it has seen the withdrawal.
                assert _decide(second, svc, transit, subjects=[alice]).json()["allowed"] == []
                assert _decide(first, svc, transit, subjects=[alice]).json()["allowed"] == []
        finally:
            other.engine.dispose()


def test_transfer_summaries_reach_the_right_citizen_only(tmp_path: Path, database_url: str) -> None:
    with consent_service(tmp_path, database_url) as svc, TestClient(svc.app()) as client:
        transit, city = svc.join("transit"), svc.join("city")
        agreement = register(client, svc, transit)["id"]
        key = _key(client, svc, transit)
        ids = _citizens(svc, transit.did, agreement)
        report: dict[str, Any] = {
            "transfer_id": "tp-1",
            "recipient": CITY,
            "purpose": "traffic-planning",
            "dataset": "card-trips",
            "transferred_at": "2026-11-21T10:00:00Z",
            "subjects": [
                {"subject": subject_hash(key, CARDS["alice"]), "records": 12},
                {"subject": subject_hash(key, "0000-0000"), "records": 3},
            ],
        }
        url = f"{API}/transfer-summaries"
        answer = client.post(url, json=report, headers=transit.auth(svc.did))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"citizens": 1, "unmatched": 1}
        report["subjects"][0]["records"] = 15  # a later, cumulative report replaces the figure
        assert client.post(url, json=report, headers=transit.auth(svc.did)).status_code == 200
        # The city holds no identifiers of these citizens: its report matches nobody.
        assert client.post(url, json=report, headers=city.auth(svc.did)).json() == {
            "citizens": 0,
            "unmatched": 2,
        }
        with svc.session() as session:
            (seen,) = service.transfers_of(session, ids["alice"])
            assert (seen.controller_did, seen.recipient_did, seen.record_count) == (transit.did, CITY, 15)
            assert service.transfers_of(session, ids["bob"]) == []
        for bad in (
            {**report, "subjects": []},
            {**report, "transferred_at": "yesterday"},
            {**report, "subjects": [{"subject": "x", "records": 1}]},
        ):
            assert client.post(url, json=bad, headers=transit.auth(svc.did)).status_code == 422
