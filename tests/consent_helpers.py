"""Helpers for the consent service tests: databases, agreements, a signer, served apps."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from consent.agreements import AgreementTerms
from consent.receipts import ReceiptSigner
from runtime.database import make_engine
from runtime.migrate import upgrade

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
