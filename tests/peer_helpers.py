"""Helpers for the peer-authentication tests: hand-made JWS tokens and database probes.

Tokens are signed here with ``cryptography`` directly, not with the product's
``issue_token``, so the tests can build exactly the malformed or hostile
tokens a real attacker would send, and so a token the product accepts is
known to interoperate with an independent signer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from connector.settings import ConnectorSettings
from identity.keys import load_private_key, public_jwk
from identity.replay import SeenToken
from identity.trustlist import add_member, list_members
from runtime.participant import init_participant
from runtime.settings import DSP_PATH, load_settings
from tests.conftest import Participant, free_port

WHOAMI = f"{DSP_PATH}/whoami"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_input(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())


def sign_ed25519(key: Ed25519PrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS over ``header`` and ``claims``, signed with ``key`` (whatever the header says)."""
    data = signing_input(header, claims)
    return data + "." + b64url(key.sign(data.encode("ascii")))


def sign_hs256(secret: bytes, claims: dict[str, Any]) -> str:
    """The classic algorithm-confusion token: HS256 with a public value as the HMAC secret."""
    data = signing_input({"alg": "HS256", "typ": "JWT"}, claims)
    return data + "." + b64url(hmac.new(secret, data.encode("ascii"), hashlib.sha256).digest())


def claims_for(
    issuer: str, audience: str, *, now: float | None = None, lifetime: int = 120, **overrides: Any
) -> dict[str, Any]:
    """Claims of a correct token; ``overrides`` replace (or, with value ``...``, drop) members."""
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": issuer,
        "aud": audience,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "jti": uuid.uuid4().hex,
    }
    for name, value in overrides.items():
        if value is ...:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def unverified_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return claims


def trust(receiver: Participant, did: str, dsp_url: str, key: Ed25519PrivateKey) -> None:
    """Put ``did`` (with the public half of ``key``) on ``receiver``'s trust list."""
    with Session(receiver.core.engine) as session:
        add_member(session, did, dsp_url, public_jwk(key.public_key()))


def trust_list(engine: Engine) -> list[tuple[str, str]]:
    with Session(engine) as session:
        return [(m.did, m.public_jwk["x"]) for m in list_members(session)]


def seen_token_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(SeenToken)).scalar_one())


def seen_tokens(engine: Engine) -> list[tuple[str, str, int]]:
    with Session(engine) as session:
        rows = session.execute(select(SeenToken.issuer, SeenToken.jti, SeenToken.expires_at)).all()  # type: ignore[call-overload]
        return [(row[0], row[1], row[2]) for row in rows]


def rejections(client: TestClient) -> dict[str, float]:
    """``tessera_peer_auth_rejections_total`` by reason, read from ``/metrics`` as Prometheus would."""
    response = client.get("/metrics")
    assert response.status_code == 200
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "tessera_peer_auth_rejections_total":
                counts[sample.labels["reason"]] = sample.value
    return counts


@dataclass(frozen=True)
class Caller:
    """A participant that only sends requests: its identity as ``tessera init`` made it, no database."""

    did: str
    dsp_url: str
    key: Ed25519PrivateKey


def new_caller(directory: Path, name: str) -> Caller:
    init_participant(directory / name, name, free_port())
    settings = load_settings(ConnectorSettings, directory / name)
    return Caller(settings.did, settings.dsp_url, load_private_key(settings.resolved_private_key_file))
