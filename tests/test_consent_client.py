"""The connector-side consent client against a real consent service process.

Decisions by keyed hash, the change feed (server-sent events, resumed with
Last-Event-ID) dropping cached answers on withdrawal, and failing closed when
the service cannot be reached or answers garbage.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlmodel import Session

from consent import service
from consent.agreements import register_agreement
from consent.client import ConsentClient, ConsentRequestRefused, ConsentUnavailable
from consent.settings import ConsentSettings, load_consent_settings
from identity.keys import public_jwk
from identity.peer_client import PeerClient
from identity.trustlist import add_member
from runtime.database import make_engine
from runtime.service import prepare_database
from tests.conftest import free_port
from tests.consent_helpers import CITY, TRANSIT, signer, terms
from tests.helpers import Served, new_participant, serving

CARDS = {"alice": "4711-0001", "bob": "4711-0002", "carol": "4711-0003"}


@dataclass
class Running:
    settings: ConsentSettings
    engine: Engine
    served: Served
    transit: PeerClient
    city: PeerClient
    agreement: str
    citizens: dict[str, str]

    def withdraw(self, name: str) -> int:
        with Session(self.engine) as session:
            change = service.withdraw_consent(
                session,
                signer(),
                self.citizens[name],
                self.agreement,
                CITY,
                actor=f"citizen:{name}",
                method="page",
            )
        assert change.seq is not None
        return change.seq

    def client(self, **options: Any) -> ConsentClient:
        key = self._key()
        return ConsentClient(self.transit, self.settings.did, self.settings.api_url, key, **options)

    def _key(self) -> str:
        from consent.models import Organisation

        with Session(self.engine) as session:
            organisation = session.get(Organisation, TRANSIT)
            assert organisation is not None
            return organisation.pseudonym_key


@contextmanager
def running_consent_service(tmp_path: Path) -> Iterator[Running]:
    """``tessera serve`` of a consent service whose database holds transit's agreement and three citizens."""
    data_dir, port = new_participant(tmp_path, "consent", kind="consent")
    settings = load_consent_settings(data_dir)
    prepare_database(settings, "consent")
    engine = make_engine(settings.resolved_database_url)
    key, city_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sign = signer()
    with Session(engine) as session:
        add_member(session, TRANSIT, "https://transit.example/dsp/2025-1", public_jwk(key.public_key()))
        add_member(session, CITY, "https://city.example/dsp/2025-1", public_jwk(city_key.public_key()))
        agreement = register_agreement(session, TRANSIT, terms()).agreement_id
        citizens = {}
        for name, card in CARDS.items():
            citizens[name] = service.create_citizen(session)
            service.register_subject_identifier(session, citizens[name], TRANSIT, card, "card_id")
        service.give_consent(
            session, sign, citizens["alice"], agreement, CITY, actor="citizen:alice", method="page"
        )
        service.give_consent(
            session, sign, citizens["carol"], agreement, CITY, actor="citizen:carol", method="page"
        )
        service.refuse_consent(
            session, sign, citizens["bob"], agreement, CITY, actor="citizen:bob", method="page"
        )
    try:
        with serving(data_dir, port) as served:
            yield Running(
                settings,
                engine,
                served,
                PeerClient(TRANSIT, key),
                PeerClient(CITY, city_key),
                agreement,
                citizens,
            )
    finally:
        engine.dispose()


def test_client_decides_by_keyed_hash_and_the_feed_drops_withdrawn_answers(tmp_path: Path) -> None:
    with running_consent_service(tmp_path) as running:

        async def scenario() -> dict[str, Any]:
            fetched = await ConsentClient.connect(
                running.transit, running.settings.did, running.settings.api_url, cache_ttl=60
            )
            client = running.client(cache_ttl=60)  # a long TTL: only the feed can make the cache forget
            assert fetched.pseudonym("4711-0001") == client.pseudonym("4711-0001")
            follower = asyncio.create_task(client.follow_changes(retry_seconds=0.2))
            try:
                await asyncio.wait_for(client.feed_connected.wait(), 30)
                cards = [*CARDS.values(), "0000-0000"]
                first = await client.decide(CITY, "traffic-planning", "card-trips", cards)
                assert first.allowed == {"4711-0001", "4711-0003"}
                assert first.withheld == 2
                # The same question is now answered from the cache (no new decision id).
                cached = await client.decide(CITY, "traffic-planning", "card-trips", cards)
                assert cached.allowed == first.allowed
                assert cached.decision_ids == ()

                withdrawn_at = time.monotonic()
                await asyncio.to_thread(running.withdraw, "carol")

                async def carol_gone() -> bool:
                    answer = await client.decide(CITY, "traffic-planning", "card-trips", cards)
                    return answer.allowed == {"4711-0001"}

                deadline = time.monotonic() + 30
                while not await carol_gone():
                    assert time.monotonic() < deadline, "the cache kept serving a withdrawn consent"
                    await asyncio.sleep(0.02)
                latency = time.monotonic() - withdrawn_at
                fresh = await client.decide(CITY, "traffic-planning", "card-trips", cards, fresh=True)
                assert fresh.allowed == {"4711-0001"}
                assert len(fresh.decision_ids) == 1

                # What went out is reported by hash; the citizen sees it.
                reported = await client.report_transfer(
                    "tp-7",
                    CITY,
                    "traffic-planning",
                    "card-trips",
                    datetime.now(UTC),
                    {"4711-0001": 5, "0000-0000": 2},
                )
                assert reported == {"citizens": 1, "unmatched": 1}
                return {"latency": latency}
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
                await client.aclose()
                await fetched.aclose()

        result = asyncio.run(scenario())
        # A bound on the feed (poll 0.1 s + delivery); generous because the machine is shared.
        assert result["latency"] < 10
        with Session(running.engine) as session:
            (summary,) = service.transfers_of(session, running.citizens["alice"])
            assert (summary.transfer_id, summary.record_count) == ("tp-7", 5)
        log = running.served.log_path.read_text()
        assert "4711-0001" not in log
        assert "4711-0003" not in log


def test_change_feed_resumes_from_last_event_id(tmp_path: Path) -> None:
    with running_consent_service(tmp_path) as running:
        url = f"{running.settings.api_url}/changes"
        client = running.client()
        seq = running.withdraw("alice")
        headers = {
            "Authorization": running.transit.authorization_for(running.settings.did),
            "Last-Event-ID": str(seq - 1),
        }
        events = _read_feed(url, headers, until="consent")
        kind, ident, payload = events[-1]
        assert (kind, ident) == ("consent", seq)
        assert payload["state"] == "ConsentWithdrawn"
        assert payload["valid"] is False
        assert payload["purpose"] == "traffic-planning"
        assert payload["recipient"] == CITY
        assert payload["subjects"] == [client.pseudonym("4711-0001")]

        # Another member's feed from the same position holds none of transit's changes.
        city = {"Authorization": running.city.authorization_for(running.settings.did), "Last-Event-ID": "0"}
        theirs = _read_feed(url, city, until="head")
        assert {kind for kind, _, _ in theirs} == {"head"}
        assert theirs[-1][1] >= seq  # the stream went past transit's withdrawal without showing it
        assert "4711" not in json.dumps(theirs)
        assert client.pseudonym("4711-0001") not in json.dumps(theirs)

        # Without a token, or with a position that is not a number, the feed refuses.
        assert httpx.get(url, timeout=10).status_code == 401
        bad = {
            **headers,
            "Authorization": running.transit.authorization_for(running.settings.did),
            "Last-Event-ID": "x",
        }
        assert httpx.get(url, headers=bad, timeout=10).status_code == 422
        asyncio.run(client.aclose())


def _read_feed(url: str, headers: dict[str, str], *, until: str) -> list[tuple[str, int, dict[str, Any]]]:
    """Server-sent events from ``url`` up to the first of kind ``until`` after the opening one."""
    events: list[tuple[str, int, dict[str, Any]]] = []
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event, ident, data = "", 0, ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                ident = int(line[3:])
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "":
                events.append((event, ident, json.loads(data)))
                if event == until and len(events) > 1:  # the opening event only says where the stream starts
                    break
    return events


def _client_against(handler: Any) -> ConsentClient:
    peer = PeerClient("did:web:transit.example", Ed25519PrivateKey.generate())
    return ConsentClient(
        peer,
        "did:web:consent.example",
        "http://consent.example/api/v1",
        "A" * 43,
        transport=httpx.MockTransport(handler),
    )


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, b"<html>hello</html>", ConsentUnavailable),
        (200, b"[]", ConsentUnavailable),
        (500, b'{"error": "boom"}', ConsentUnavailable),
        (502, b"bad gateway", ConsentUnavailable),
        (
            403,
            b'{"error": "no_agreement", "message": "no agreement for purpose marketing"}',
            ConsentRequestRefused,
        ),
        (200, "answer with a stranger", ConsentUnavailable),
        (200, "answer about another purpose", ConsentUnavailable),
        (200, "answer without revision", ConsentUnavailable),
    ],
)
def test_client_fails_closed_on_garbage(status: int, body: bytes | str, error: type[Exception]) -> None:
    """What a broken or hostile service says never turns into a release."""

    def answer(request: httpx.Request) -> httpx.Response:
        asked = json.loads(request.content)
        valid = {
            **{k: asked[k] for k in ("controller", "recipient", "purpose", "dataset")},
            "decision_id": "d1",
            "revision": 4,
            "allowed": asked["subjects"][:1],
        }
        if body == "answer with a stranger":
            return httpx.Response(status, json={**valid, "allowed": ["ee" * 32]})
        if body == "answer about another purpose":
            return httpx.Response(status, json={**valid, "purpose": "marketing"})
        if body == "answer without revision":
            return httpx.Response(status, json={k: v for k, v in valid.items() if k != "revision"})
        assert isinstance(body, bytes)
        return httpx.Response(status, content=body)

    async def scenario() -> None:
        client = _client_against(answer)
        try:
            await client.decide(CITY, "traffic-planning", "card-trips", ["4711-0001"])
        finally:
            await client.aclose()

    with pytest.raises(error) as raised:
        asyncio.run(scenario())
    assert "4711-0001" not in str(raised.value)


def test_client_fails_closed_when_the_service_is_unreachable() -> None:
    peer = PeerClient("did:web:transit.example", Ed25519PrivateKey.generate())
    port = free_port()  # nothing listens there

    async def scenario() -> None:
        client = ConsentClient(peer, "did:web:consent.example", f"http://127.0.0.1:{port}/api/v1", "A" * 43)
        try:
            await client.decide(CITY, "traffic-planning", "card-trips", ["4711-0001"])
        finally:
            await client.aclose()

    with pytest.raises(ConsentUnavailable, match="cannot be reached"):
        asyncio.run(scenario())
