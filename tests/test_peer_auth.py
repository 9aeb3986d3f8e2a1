"""Peer authentication as a peer experiences it: real HTTP into the connector app.

Every connector-to-connector request carries ``Authorization: Bearer <JWT>``,
a self-issued EdDSA token (iss = sub = sender DID, aud = receiver DID, iat,
exp at most five minutes later, unique jti). These tests send such tokens,
and every way of getting one wrong, to ``GET /dsp/2025-1/whoami`` of a real
connector app backed by a real database, and check what the caller sees
(status, JSON body, WWW-Authenticate, /metrics) and that a refused request
leaves no trace in the replay memory (``seen_token``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlmodel import Session

from connector.app import create_app
from connector.settings import load_connector_settings
from identity.keys import load_private_key, public_jwk
from identity.tokens import MAX_TOKEN_BYTES, issue_token
from identity.trustlist import remove_member
from runtime.participant import init_participant
from runtime.service import ServiceCore, prepare_database
from tests.conftest import CliResult, Participant, free_port
from tests.peer_helpers import (
    WHOAMI,
    Caller,
    b64url,
    b64url_decode,
    claims_for,
    new_caller,
    rejections,
    seen_token_count,
    seen_tokens,
    sign_ed25519,
    sign_hs256,
    signing_input,
    trust,
    trust_list,
    unverified_claims,
)

EDDSA = {"alg": "EdDSA", "typ": "JWT"}
# identity.tokens silences joserfc's RFC 9864 notice at import; pytest's per-test warning capture undoes that.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


@dataclass
class Space:
    """``receiver`` (a running connector app) trusts ``sender``; nobody trusts ``outsider``."""

    receiver: Participant
    sender: Caller
    outsider: Caller
    client: TestClient

    @property
    def sender_key(self) -> Ed25519PrivateKey:
        return self.sender.key

    @property
    def outsider_key(self) -> Ed25519PrivateKey:
        return self.outsider.key

    def token(self, **kwargs: Any) -> str:
        return issue_token(self.sender_key, self.sender.did, self.receiver.did, **kwargs)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return claims_for(self.sender.did, self.receiver.did, **overrides)

    def whoami(self, authorization: str | None) -> httpx.Response:
        headers = {} if authorization is None else {"Authorization": authorization}
        response: httpx.Response = self.client.get(WHOAMI, headers=headers)
        return response


@pytest.fixture
def space(make_connector: Callable[..., Participant], tmp_path: Path) -> Iterator[Space]:
    receiver = make_connector("city")
    sender = new_caller(tmp_path, "transit")
    trust(receiver, sender.did, sender.dsp_url, sender.key)
    with receiver.client() as client:
        yield Space(receiver, sender, new_caller(tmp_path, "outsider"), client)


@pytest.fixture(scope="module")
def shared_space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    """One connector for the many one-request cases below (they compare before and after)."""
    root = tmp_path_factory.mktemp("shared")
    init_participant(root / "city", "city", free_port())
    settings = load_connector_settings(root / "city")
    prepare_database(settings, "connector")
    receiver = Participant(settings, ServiceCore.create(settings))
    sender = new_caller(root, "transit")
    trust(receiver, sender.did, sender.dsp_url, sender.key)
    try:
        with receiver.client() as client:
            yield Space(receiver, sender, new_caller(root, "outsider"), client)
    finally:
        receiver.core.engine.dispose()


def rejections_added(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {
        reason: count - before.get(reason, 0)
        for reason, count in after.items()
        if count != before.get(reason)
    }


def assert_accepted(space: Space, authorization: str) -> None:
    """200 naming the sender, and the token's jti is now remembered."""
    token = authorization.split(" ", 1)[1]
    before = seen_token_count(space.receiver.core.engine)
    response = space.whoami(authorization)
    assert response.status_code == 200, response.text
    assert response.json() == {"peer": space.sender.did, "connector": space.receiver.did}
    assert seen_token_count(space.receiver.core.engine) == before + 1
    claims = unverified_claims(token)
    remembered = {(issuer, jti): expires for issuer, jti, expires in seen_tokens(space.receiver.core.engine)}
    # Remembered at least until the token expires (plus skew), so a replay within its life is caught.
    assert remembered[(space.sender.did, claims["jti"])] >= claims["exp"]


def assert_refused(response: httpx.Response, reason: str) -> None:
    """401, a JSON error body naming the reason, and a Bearer challenge."""
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "invalid_token"
    assert body["reason"] == reason
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge


# --- what a sender gets right ------------------------------------------------------------


def test_valid_token_is_accepted_and_the_answer_names_the_peer(space: Space) -> None:
    token = space.token()
    response = space.whoami(f"Bearer {token}")
    assert response.status_code == 200
    assert response.json() == {"peer": space.sender.did, "connector": space.receiver.did}
    claims = unverified_claims(token)
    assert seen_tokens(space.receiver.core.engine) == [(space.sender.did, claims["jti"], claims["exp"] + 30)]
    assert rejections(space.client) == {}


def test_every_fresh_token_is_accepted_once(space: Space) -> None:
    for _ in range(3):
        assert_accepted(space, f"Bearer {space.token()}")
    assert len({jti for _, jti, _ in seen_tokens(space.receiver.core.engine)}) == 3


def _largest_token_within(limit: int, key: Ed25519PrivateKey, claims: Callable[[], dict[str, Any]]) -> str:
    """The longest correctly signed token not longer than ``limit`` (grown with a padding claim)."""
    best, pad = "", 0
    while True:
        token = sign_ed25519(key, EDDSA, {**claims(), "pad": "x" * pad})
        if len(token) > limit:
            return best
        best, pad = token, pad + 1


ACCEPTED: dict[str, Callable[[Space], str]] = {
    "issued-by-the-product": lambda s: s.token(),
    "signed-independently": lambda s: sign_ed25519(s.sender_key, EDDSA, s.claims()),
    "alg-Ed25519-name": lambda s: sign_ed25519(s.sender_key, {"alg": "Ed25519"}, s.claims()),
    "lifetime-exactly-300s": lambda s: sign_ed25519(s.sender_key, EDDSA, s.claims(lifetime=300)),
    "expired-5s-ago-within-skew": lambda s: s.token(lifetime=95, now=time.time() - 100),
    "issued-15s-ahead-within-skew": lambda s: s.token(now=time.time() + 15),
    "nbf-in-the-past": lambda s: sign_ed25519(s.sender_key, EDDSA, s.claims(nbf=int(time.time()) - 10)),
    "aud-as-list": lambda s: sign_ed25519(
        s.sender_key, EDDSA, s.claims(aud=[s.outsider.did, s.receiver.did])
    ),
    "4096-byte-token": lambda s: _largest_token_within(MAX_TOKEN_BYTES, s.sender_key, s.claims),
}


@pytest.mark.parametrize("case", ACCEPTED, ids=list(ACCEPTED))
def test_correct_tokens_are_accepted(shared_space: Space, case: str) -> None:
    """Positive controls: the hand-made tokens below differ from these in one thing only."""
    space = shared_space
    token = ACCEPTED[case](space)
    if case == "4096-byte-token":
        assert MAX_TOKEN_BYTES - 2 <= len(token) <= MAX_TOKEN_BYTES
    counted = rejections(space.client)
    assert_accepted(space, f"Bearer {token}")
    assert rejections(space.client) == counted


# --- what a sender (or an attacker) gets wrong ----------------------------------------------


def _forge_signature(token: str) -> str:
    head, body, signature = token.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[10] ^= 0x01
    return f"{head}.{body}.{b64url(bytes(raw))}"


def _swap_claims(token: str, **changes: object) -> str:
    """The token's signature over claims that were changed afterwards."""
    head, body, signature = token.split(".")
    claims = {**json.loads(b64url_decode(body)), **changes}
    return f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _oversized(s: Space) -> str:
    token = sign_ed25519(s.sender_key, EDDSA, s.claims(pad="x" * MAX_TOKEN_BYTES))
    assert len(token) > MAX_TOKEN_BYTES
    return token


def _just_over_limit(s: Space) -> str:
    token = _largest_token_within(MAX_TOKEN_BYTES + 3, s.sender_key, s.claims)
    assert MAX_TOKEN_BYTES < len(token) <= MAX_TOKEN_BYTES + 3
    return token


def _attacker() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _self_keyed(s: Space) -> str:
    """Signed by an attacker who names the member and ships its own key in the header."""
    key = _attacker()
    return sign_ed25519(key, {**EDDSA, "jwk": public_jwk(key.public_key())}, s.claims())


# Each case: (Authorization header or None for no header, the reason the 401 must give).
REFUSED: dict[str, tuple[Callable[[Space], str | None], str]] = {
    "unknown-issuer": (
        lambda s: "Bearer " + issue_token(s.outsider_key, s.outsider.did, s.receiver.did),
        "unknown_issuer",
    ),
    "forged-signature": (lambda s: "Bearer " + _forge_signature(s.token()), "signature"),
    "claims-changed-after-signing": (
        lambda s: "Bearer " + _swap_claims(s.token(), jti="another-id"),
        "signature",
    ),
    "member-did-signed-with-wrong-key": (
        lambda s: "Bearer " + issue_token(_attacker(), s.sender.did, s.receiver.did),
        "signature",
    ),
    "member-did-signed-with-outsider-key": (
        lambda s: "Bearer " + issue_token(s.outsider_key, s.sender.did, s.receiver.did),
        "signature",
    ),
    "key-supplied-in-header": (lambda s: "Bearer " + _self_keyed(s), "header"),
    "wrong-audience": (
        lambda s: "Bearer " + issue_token(s.sender_key, s.sender.did, s.outsider.did),
        "audience",
    ),
    "audience-missing": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(aud=...)),
        "audience",
    ),
    "expired": (lambda s: "Bearer " + s.token(lifetime=60, now=time.time() - 100), "expired"),
    "not-yet-valid": (lambda s: "Bearer " + s.token(now=time.time() + 90), "not_yet_valid"),
    "nbf-in-the-future": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(nbf=int(time.time()) + 90)),
        "not_yet_valid",
    ),
    "lifetime-301s": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(lifetime=301)),
        "lifetime",
    ),
    "expires-before-issued": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(lifetime=-10)),
        "lifetime",
    ),
    "sub-is-not-iss": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(sub=s.outsider.did)),
        "claims",
    ),
    "sub-missing": (lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(sub=...)), "claims"),
    "jti-missing": (lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(jti=...)), "claims"),
    "jti-empty": (lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(jti="")), "claims"),
    "jti-not-a-string": (lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(jti=7)), "claims"),
    "jti-too-long": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(jti="j" * 129)),
        "claims",
    ),
    "iat-missing": (lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(iat=...)), "claims"),
    "exp-missing": (lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(exp=...)), "claims"),
    "exp-not-a-number": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(exp=float("nan"))),
        "claims",
    ),
    "iat-infinite": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, EDDSA, s.claims(iat=float("inf"))),
        "claims",
    ),
    "no-authorization-header": (lambda s: None, "missing"),
    "empty-authorization-header": (lambda s: "", "missing"),
    "token-without-bearer": (lambda s: s.token(), "malformed"),
    "basic-credentials": (lambda s: "Basic dHJhbnNpdDpzZWNyZXQ=", "malformed"),
    "bearer-without-token": (lambda s: "Bearer", "malformed"),
    "garbage": (lambda s: "Bearer not-a-token!", "malformed"),
    "two-parts": (lambda s: "Bearer " + s.token().rsplit(".", 1)[0], "malformed"),
    "three-garbage-parts": (lambda s: "Bearer aaaa.bbbb.cccc", "malformed"),
    "two-tokens": (lambda s: f"Bearer {s.token()} {s.token()}", "malformed"),
    "alg-none": (
        lambda s: "Bearer " + signing_input({"alg": "none", "typ": "JWT"}, s.claims()) + ".",
        "algorithm",
    ),
    "alg-none-with-valid-signature": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, {"alg": "none", "typ": "JWT"}, s.claims()),
        "algorithm",
    ),
    "hs256-public-key-bytes-as-secret": (
        lambda s: "Bearer " + sign_hs256(_public_bytes(s.sender_key), s.claims()),
        "algorithm",
    ),
    "hs256-public-jwk-as-secret": (
        lambda s: (
            "Bearer " + sign_hs256(json.dumps(public_jwk(s.sender_key.public_key())).encode(), s.claims())
        ),
        "algorithm",
    ),
    "es256-claimed": (
        lambda s: "Bearer " + sign_ed25519(s.sender_key, {"alg": "ES256", "typ": "JWT"}, s.claims()),
        "algorithm",
    ),
    "oversized": (lambda s: "Bearer " + _oversized(s), "oversized"),
    "one-byte-over-limit": (lambda s: "Bearer " + _just_over_limit(s), "oversized"),
    "oversized-junk": (lambda s: "Bearer " + "A" * 20_000, "oversized"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_bad_requests_are_refused_with_401_and_change_nothing(shared_space: Space, case: str) -> None:
    space = shared_space
    build, reason = REFUSED[case]
    # One good request first: the replay memory is in use, not trivially empty.
    assert_accepted(space, f"Bearer {space.token()}")
    engine = space.receiver.core.engine
    rows_before, members_before = seen_tokens(engine), trust_list(engine)
    counted = rejections(space.client)

    assert_refused(space.whoami(build(space)), reason)

    assert sorted(seen_tokens(engine)) == sorted(rows_before)
    assert trust_list(engine) == members_before
    assert rejections_added(counted, rejections(space.client)) == {reason: 1.0}
    # The refusal left the service working: the sender's next request is served.
    assert_accepted(space, f"Bearer {space.token()}")


def test_unprintable_issuer_or_jti_is_refused_not_a_server_error(
    make_connector: Callable[..., Participant], database_url: str, tmp_path: Path
) -> None:
    """Text a database cannot store or compare (NUL on PostgreSQL, lone surrogates anywhere)
    gets the same 401 as any other bad token: from a stranger (iss, read before any
    signature is checked) and from a member (jti, signed)."""
    receiver = make_connector("city", database_url=database_url)
    sender = new_caller(tmp_path, "transit")
    trust(receiver, sender.did, sender.dsp_url, sender.key)
    hostile = {
        "nul-iss": sign_ed25519(_attacker(), EDDSA, claims_for("did:web:a\u0000b", receiver.did)),
        "surrogate-iss": sign_ed25519(_attacker(), EDDSA, claims_for("did:web:\ud800", receiver.did)),
        "nul-jti": sign_ed25519(sender.key, EDDSA, claims_for(sender.did, receiver.did, jti="a\u0000b")),
        "surrogate-jti": sign_ed25519(sender.key, EDDSA, claims_for(sender.did, receiver.did, jti="\ud800")),
    }
    with TestClient(create_app(receiver.core), raise_server_exceptions=False) as client:
        statuses = {}
        for name, token in hostile.items():
            response = client.get(WHOAMI, headers={"Authorization": f"Bearer {token}"})
            statuses[name] = (response.status_code, response.json().get("reason"))
        assert statuses == dict.fromkeys(hostile, (401, "claims"))
        assert seen_token_count(receiver.core.engine) == 0
        good = issue_token(sender.key, sender.did, receiver.did)
        assert client.get(WHOAMI, headers={"Authorization": f"Bearer {good}"}).status_code == 200


def test_replayed_token_is_refused_and_remembered_once(space: Space) -> None:
    token = space.token()
    assert space.whoami(f"Bearer {token}").status_code == 200
    for _ in range(2):
        assert_refused(space.whoami(f"Bearer {token}"), "replayed")
    jti = unverified_claims(token)["jti"]
    rows = seen_tokens(space.receiver.core.engine)
    assert [row[:2] for row in rows] == [(space.sender.did, jti)]
    assert rejections(space.client) == {"replayed": 2.0}


def test_rejections_are_counted_by_reason(space: Space) -> None:
    space.whoami(None)
    space.whoami("Bearer x")
    space.whoami("Bearer x.y")
    space.whoami("Bearer " + issue_token(space.outsider_key, space.outsider.did, space.receiver.did))
    space.whoami(f"Bearer {space.token()}")
    assert rejections(space.client) == {"missing": 1.0, "malformed": 2.0, "unknown_issuer": 1.0}
    exposition = space.client.get("/metrics").text
    assert 'tessera_peer_auth_rejections_total{reason="malformed"} 2.0' in exposition


def test_removed_member_is_refused_at_once(space: Space) -> None:
    assert_accepted(space, f"Bearer {space.token()}")
    with Session(space.receiver.core.engine) as session:
        assert remove_member(session, space.sender.did)
    assert_refused(space.whoami(f"Bearer {space.token()}"), "unknown_issuer")


def test_member_key_is_pinned(space: Space) -> None:
    """After the operator pins a new key, tokens signed with the old one are refused."""
    new_key = Ed25519PrivateKey.generate()
    trust(space.receiver, space.sender.did, space.sender.dsp_url, new_key)
    assert_refused(space.whoami(f"Bearer {space.token()}"), "signature")
    response = space.whoami("Bearer " + issue_token(new_key, space.sender.did, space.receiver.did))
    assert response.status_code == 200


def test_clock_skew_setting_is_honoured(
    make_connector: Callable[..., Participant], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With clock_skew_seconds = 0, tokens the default 30 s skew would accept are refused."""
    sender = new_caller(tmp_path, "transit")
    monkeypatch.setenv("TESSERA_CLOCK_SKEW_SECONDS", "0")
    strict = make_connector("city")
    monkeypatch.delenv("TESSERA_CLOCK_SKEW_SECONDS")
    assert strict.settings.clock_skew_seconds == 0
    key = sender.key
    trust(strict, sender.did, sender.dsp_url, key)
    with strict.client() as client:

        def call(token: str) -> httpx.Response:
            response: httpx.Response = client.get(WHOAMI, headers={"Authorization": f"Bearer {token}"})
            return response

        assert_refused(
            call(issue_token(key, sender.did, strict.did, lifetime=95, now=time.time() - 100)), "expired"
        )
        assert_refused(call(issue_token(key, sender.did, strict.did, now=time.time() + 15)), "not_yet_valid")
        assert call(issue_token(key, sender.did, strict.did)).status_code == 200
        assert seen_token_count(strict.core.engine) == 1


# --- replicas: one connector, several processes, one database --------------------------------


@dataclass
class Replicas:
    sender: Caller
    sender_key: Ed25519PrivateKey
    receiver: Participant
    a: TestClient
    b: TestClient
    core_b: ServiceCore


@pytest.fixture
def replicas(
    make_connector: Callable[..., Participant], database_url: str, tmp_path: Path
) -> Iterator[Replicas]:
    """Two app instances of the SAME connector (same settings, key, DID) on one database."""
    receiver = make_connector("city", database_url=database_url)
    sender = new_caller(tmp_path, "transit")
    key = sender.key
    trust(receiver, sender.did, sender.dsp_url, key)
    core_b = ServiceCore.create(receiver.settings)  # its own engine, authenticator and metrics
    assert core_b.engine is not receiver.core.engine
    try:
        with receiver.client() as a, TestClient(create_app(core_b)) as b:
            yield Replicas(sender, key, receiver, a, b, core_b)
    finally:
        core_b.engine.dispose()


def test_token_accepted_by_one_replica_is_refused_by_another(replicas: Replicas) -> None:
    r = replicas
    token = issue_token(r.sender_key, r.sender.did, r.receiver.did)
    headers = {"Authorization": f"Bearer {token}"}
    first = r.a.get(WHOAMI, headers=headers)
    assert first.status_code == 200
    assert first.json()["peer"] == r.sender.did
    assert_refused(r.b.get(WHOAMI, headers=headers), "replayed")
    assert_refused(r.a.get(WHOAMI, headers=headers), "replayed")
    assert [row[:2] for row in seen_tokens(r.core_b.engine)] == [
        (r.sender.did, unverified_claims(token)["jti"])
    ]
    assert rejections(r.b) == {"replayed": 1.0}
    # Replica B serves fresh tokens normally.
    fresh = issue_token(r.sender_key, r.sender.did, r.receiver.did)
    assert r.b.get(WHOAMI, headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    assert seen_token_count(r.receiver.core.engine) == 2


def test_same_token_raced_at_both_replicas_is_accepted_exactly_once(replicas: Replicas) -> None:
    r = replicas
    token = issue_token(r.sender_key, r.sender.did, r.receiver.did)
    attempts = 8
    barrier = threading.Barrier(attempts)

    def send(index: int) -> int:
        client = r.a if index % 2 == 0 else r.b
        barrier.wait()
        response: httpx.Response = client.get(WHOAMI, headers={"Authorization": f"Bearer {token}"})
        return response.status_code

    with ThreadPoolExecutor(max_workers=attempts) as pool:
        statuses = sorted(pool.map(send, range(attempts)))
    assert statuses == [200] + [401] * (attempts - 1)
    assert seen_token_count(r.receiver.core.engine) == 1
    assert rejections(r.a).get("replayed", 0) + rejections(r.b).get("replayed", 0) == attempts - 1


# --- real processes: `tessera serve`, `tessera dataspace ping` --------------------------------


def _start_serve(data_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["PYTHONUNBUFFERED"] = "1"
    # No background catalog crawl or log witnessing: their calls would add to the rejection counts this
    # test checks (a witness round 5 s after start-up lands after the test removed alpha from beta's list).
    env["TESSERA_CATALOG_CRAWL_INTERVAL_SECONDS"] = "0"
    env["TESSERA_LOG_WITNESS_INTERVAL_SECONDS"] = "0"
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "connector", "serve", "--dir", str(data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def _wait_healthy(
    process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 30
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            response = httpx.get(f"{url}/health", timeout=1)
            if response.status_code == 200:
                health: dict[str, str] = response.json()
                return health
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not become healthy: {log_path.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_two_serve_processes_authenticate_each_other(
    tmp_path: Path, tessera_cli: Callable[..., CliResult]
) -> None:
    dirs = {"alpha": tmp_path / "alpha", "beta": tmp_path / "beta"}
    ports = {name: free_port() for name in dirs}
    with ThreadPoolExecutor(max_workers=2) as pool:
        inits = list(
            pool.map(
                lambda name: tessera_cli(
                    "init", "--name", name, "--port", str(ports[name]), "--dir", str(dirs[name])
                ),
                dirs,
            )
        )
    assert all(result.code == 0 for result in inits), inits
    settings = {name: load_connector_settings(path) for name, path in dirs.items()}
    a, b = settings["alpha"], settings["beta"]

    def add(me: str, other: str) -> CliResult:
        return tessera_cli(
            "dataspace", "add", "--dir", str(dirs[me]),
            "--did", settings[other].did,
            "--url", settings[other].dsp_url,
            "--key", str(dirs[other] / "keys" / "public-key.jwk"),
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=2) as pool:
        adds = list(pool.map(lambda pair: add(*pair), [("alpha", "beta"), ("beta", "alpha")]))
    assert all(result.code == 0 for result in adds), adds

    logs = {name: tmp_path / f"{name}.log" for name in dirs}
    processes = {}
    own_tokens: list[str] = []
    try:
        for name in dirs:
            processes[name] = _start_serve(dirs[name], logs[name])
        for name in dirs:
            health = _wait_healthy(processes[name], settings[name].public_url, logs[name])
            assert health["did"] == settings[name].did

        def ping(me: str, other: str) -> CliResult:
            return tessera_cli("dataspace", "ping", "--dir", str(dirs[me]), "--did", settings[other].did)

        with ThreadPoolExecutor(max_workers=2) as pool:
            ab, ba = pool.map(lambda pair: ping(*pair), [("alpha", "beta"), ("beta", "alpha")])
        assert ab.code == 0, ab
        assert f"it sees us as {a.did}" in " ".join(ab.stdout.split())  # rich may wrap
        assert ba.code == 0, ba
        assert f"it sees us as {b.did}" in " ".join(ba.stdout.split())

        # A token of alpha's, sent by hand over the wire: accepted once, its replay refused.
        key_a = load_private_key(a.resolved_private_key_file)
        whoami_b = f"{b.dsp_url}/whoami"
        own_tokens.append(issue_token(key_a, a.did, b.did))
        assert httpx.get(whoami_b, headers={"Authorization": f"Bearer {own_tokens[0]}"}).status_code == 200
        replay = httpx.get(whoami_b, headers={"Authorization": f"Bearer {own_tokens[0]}"})
        assert_refused(replay, "replayed")

        removed = tessera_cli("dataspace", "remove", "--dir", str(dirs["beta"]), "--did", a.did)
        assert removed.code == 0, removed

        refused = ping("alpha", "beta")
        assert refused.code != 0
        error_lines = refused.stderr.strip().splitlines()
        assert len(error_lines) == 1, refused.stderr
        assert error_lines[0].startswith("tessera: error:")
        assert "401" in error_lines[0]
        assert "unknown_issuer" in error_lines[0]

        own_tokens.append(issue_token(key_a, a.did, b.did))
        after = httpx.get(whoami_b, headers={"Authorization": f"Bearer {own_tokens[1]}"})
        assert_refused(after, "unknown_issuer")
        metrics = httpx.get(f"{b.public_url}/metrics").text
        assert 'tessera_peer_auth_rejections_total{reason="unknown_issuer"} 2.0' in metrics
        assert 'tessera_peer_auth_rejections_total{reason="replayed"} 1.0' in metrics
    finally:
        for process in processes.values():
            _stop(process)

    for name, path in logs.items():
        log = path.read_text()
        # The log did record these requests, so the absence checks below can fail.
        assert '"path": "/dsp/2025-1/whoami"' in log, log
        if name == "beta":
            assert "peer authentication refused" in log
        # Every token (the CLI's too, which we never see) is a JWS whose header starts "eyJ".
        assert "eyJ" not in log
        for token in own_tokens:
            for segment in token.split("."):
                assert segment not in log
