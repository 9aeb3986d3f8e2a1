"""Helpers for the consent service tests: databases, agreements, a signer, served apps."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from consent.agreements import AgreementTerms
from consent.app import create_app
from consent.receipts import ReceiptSigner
from consent.settings import CONSENT_API_PATH, ConsentSettings, load_consent_settings
from identity.keys import public_jwk
from identity.peer_client import PeerClient
from identity.trustlist import add_member
from runtime.database import make_engine
from runtime.migrate import upgrade
from runtime.service import ServiceCore, prepare_database
from tests.helpers import new_participant

API = CONSENT_API_PATH

TRANSIT = "did:web:transit.example"
CITY = "did:web:city.example"
UTILITY = "did:web:utility.example"
CONSENT = "did:web:consent.example"

TERMS: dict[str, Any] = {
    "name": "card-trips-planning",
    "controller_name": "Transit Authority",
    "purpose": "traffic-planning",
    "purpose_description": "Plan bus routes and timetables from where and when people travel.",
    "recipients": [{"did": CITY, "name": "City of Example"}, {"did": UTILITY, "name": "Example Utility"}],
    "data_categories": ["dpv:Location", "dpv:TravelHistory"],
    "datasets": ["card-trips"],
    "lawful_basis": "dpv:Consent",
    "retention": "P1Y",
    "consent_duration_days": 365,
    "notice": {
        "text": "Transit shares the trips of your card with the city to plan routes. You get a fare discount.",
        "version": "1.0",
        "language": "en",
    },
}


def terms(**changes: Any) -> AgreementTerms:
    body = copy.deepcopy(TERMS)
    body.update(changes)
    return AgreementTerms.model_validate(body)


def signer() -> ReceiptSigner:
    return ReceiptSigner(CONSENT, Ed25519PrivateKey.generate())


@contextmanager
def consent_engine(database_url: str) -> Iterator[Engine]:
    """A consent database built by the migrations."""
    upgrade("consent", database_url)
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@dataclass
class Connector:
    """A data-space member calling the consent service with self-issued tokens."""

    did: str
    key: Ed25519PrivateKey
    peer: PeerClient

    def auth(self, audience: str) -> dict[str, str]:
        return {"Authorization": self.peer.authorization_for(audience)}


@dataclass
class ConsentService:
    settings: ConsentSettings
    core: ServiceCore

    @property
    def did(self) -> str:
        return self.settings.did

    def app(self) -> FastAPI:
        return create_app(self.core)

    def session(self) -> Session:
        return Session(self.core.engine)

    def join(self, name: str) -> Connector:
        """A new member (its key, its DID on the service's trust list)."""
        key = Ed25519PrivateKey.generate()
        did = f"did:web:{name}.example"
        with Session(self.core.engine) as session:
            add_member(session, did, f"https://{name}.example/dsp/2025-1", public_jwk(key.public_key()))
        return Connector(did, key, PeerClient(did, key))


@contextmanager
def consent_service(
    tmp_path: Path, database_url: str | None = None, **settings: Any
) -> Iterator[ConsentService]:
    """A consent service participant with a migrated database (SQLite in its directory by default)."""
    data_dir, _port = new_participant(tmp_path, "consent", kind="consent")
    loaded = load_consent_settings(data_dir)
    if database_url is not None or settings:
        loaded = loaded.model_copy(update={"database_url": database_url or loaded.database_url, **settings})
    prepare_database(loaded, "consent")
    core = ServiceCore.create(loaded)
    try:
        yield ConsentService(loaded, core)
    finally:
        core.engine.dispose()


def register(
    client: TestClient, service: ConsentService, controller: Connector, **changes: Any
) -> dict[str, Any]:
    """Register the sample agreement (with ``changes``) as ``controller``; the API's answer."""
    body = copy.deepcopy(TERMS)
    body.update(changes)
    response = client.post(f"{API}/agreements", json=body, headers=controller.auth(service.did))
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer
