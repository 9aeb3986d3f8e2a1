"""Citizen accounts and the abuse cases of the citizen pages, over HTTP against the consent service's app.

One consent service directory serves the module (made with ``tessera consent
init`` and ``tessera consent citizen add``); each test builds its own app on
it (so its own sign-in rate limits) and talks HTTP to it. Sign-in through
OpenID Connect goes to the test provider, a process of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete

from consent.accounts import AccountError, add_citizen, verify_password
from consent.app import create_app
from consent.receipts import verify_receipt
from consent.settings import load_consent_settings
from runtime.ratelimit import SignInAttempt
from runtime.service import ServiceCore
from tests.conftest import free_port
from tests.consent_pages_helpers import (
    CITY,
    UTILITY,
    ConsentService,
    Provider,
    create_consent_service,
    csrf_of,
    oidc_provider,
    run_tessera,
    tessera,
)
from tests.helpers import assert_one_line_error, public_jwk_of

SESSION = "tessera_citizen_session"


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def provider(ports: tuple[int, int]) -> Iterator[Provider]:
    consent_port, provider_port = ports
    with oidc_provider(
        f"http://127.0.0.1:{consent_port}/citizen/oidc/callback", port=provider_port
    ) as running:
        yield running


@pytest.fixture(scope="module")
def service(
    ports: tuple[int, int], provider: Provider, tmp_path_factory: pytest.TempPathFactory
) -> ConsentService:
    consent_port, _ = ports
    return create_consent_service(
        tmp_path_factory.mktemp("consent-accounts"), oidc_issuer=provider.base_url, port=consent_port
    )


@pytest.fixture
def app_core(service: ConsentService) -> Iterator[ServiceCore]:
    """The service's core and one app for the whole test, which starts a minute after the last: no
    sign-in attempt is still counted (the limits live in the shared database, runtime.ratelimit)."""
    core = ServiceCore.create(load_consent_settings(service.data_dir))
    with core.engine.begin() as connection:
        connection.execute(delete(SignInAttempt.metadata.tables["sign_in_attempt"]))
    _apps[id(core)] = create_app(core)
    try:
        yield core
    finally:
        del _apps[id(core)]
        core.engine.dispose()


_apps: dict[int, FastAPI] = {}


def client_for(core: ServiceCore, service: ConsentService, address: str = "10.0.0.1") -> TestClient:
    """A browser at ``address`` talking to the test's app."""
    return TestClient(_apps[id(core)], base_url=service.base_url, client=(address, 40000))


def sign_in(client: TestClient, name: str, password: str) -> httpx.Response:
    form = client.get("/citizen/sign-in")
    response: httpx.Response = client.post(
        "/citizen/sign-in",
        data={"csrf_token": csrf_of(form.text), "name": name, "password": password, "next": "/citizen"},
        follow_redirects=False,
    )
    return response


def signed_in(core: ServiceCore, service: ConsentService, name: str, address: str = "10.0.0.1") -> TestClient:
    client = client_for(core, service, address)
    response = sign_in(client, name, service.passwords[name])
    assert response.status_code == 303, response.text
    return client


def switch_forms(html: str) -> list[dict[str, str]]:
    """The hidden fields of every switch form on the choices page."""
    forms = re.findall(r'<form class="choice".*?</form>', html, re.S)
    return [dict(re.findall(r'name="(\w+)" value="([^"]*)"', form)) for form in forms]


def export_of(client: TestClient) -> dict[str, Any]:
    response = client.get("/citizen/export")
    assert response.status_code == 200
    exported: dict[str, Any] = response.json()
    exported.pop("exported_at")
    return exported


def turn(client: TestClient, recipient: str, on: bool, agreement: str) -> httpx.Response:
    page = client.get("/citizen")
    response: httpx.Response = client.post(
        "/citizen/choices",
        data={
            "csrf_token": csrf_of(page.text),
            "agreement": agreement,
            "recipient": recipient,
            "on": str(on).lower(),
        },
        follow_redirects=False,
    )
    return response


# ---- accounts and the CLI -------------------------------------------------------------------


def test_citizen_add_prints_a_password_that_signs_in(service: ConsentService, app_core: ServiceCore) -> None:
    printed = tessera("consent", "citizen", "add", "dora", "--dir", str(service.data_dir))
    password = re.search(r"password \(shown once\): (\S+)", printed)
    assert password is not None
    assert len(password.group(1)) >= 12
    client = client_for(app_core, service, "10.9.0.1")
    assert sign_in(client, "dora", password.group(1)).status_code == 303
    assert client.get("/citizen").status_code == 200
    listed = tessera("consent", "citizen", "list", "--dir", str(service.data_dir))
    assert re.search(r"^dora\tcitizen-[0-9a-f-]{36}\tpassword$", listed, re.M), listed


def test_citizen_add_refuses_bad_names_duplicates_and_short_passwords(service: ConsentService) -> None:
    data_dir = str(service.data_dir)
    assert_one_line_error(
        run_tessera("consent", "citizen", "add", "alice", "--dir", data_dir), "alice", "exists already"
    )
    assert_one_line_error(
        run_tessera("consent", "citizen", "add", "Not A Name", "--dir", data_dir), "citizen name"
    )
    short = run_tessera(
        "consent", "citizen", "add", "erin", "--password-stdin", "--dir", data_dir, stdin="short\n"
    )
    assert_one_line_error(short, "password")
    empty = run_tessera("consent", "citizen", "add", "erin", "--password-stdin", "--dir", data_dir, stdin="")
    assert_one_line_error(empty, "password")
    listed = tessera("consent", "citizen", "list", "--dir", data_dir)
    assert "erin" not in listed
    assert "Not A Name" not in listed


def test_a_new_password_ends_every_session(service: ConsentService, app_core: ServiceCore) -> None:
    tessera(
        "consent",
        "citizen",
        "add",
        "ivan",
        "--password-stdin",
        "--dir",
        str(service.data_dir),
        stdin="ivan-password-1\n",
    )
    browser = client_for(app_core, service, "10.9.1.1")
    assert sign_in(browser, "ivan", "ivan-password-1").status_code == 303
    printed = tessera("consent", "citizen", "password", "ivan", "--dir", str(service.data_dir))
    new = re.search(r"password \(shown once\): (\S+)", printed)
    assert new is not None
    assert browser.get("/citizen", follow_redirects=False).status_code == 303  # signed out
    assert sign_in(client_for(app_core, service, "10.9.1.2"), "ivan", "ivan-password-1").status_code == 401
    assert sign_in(client_for(app_core, service, "10.9.1.3"), "ivan", new.group(1)).status_code == 303
    unknown = run_tessera("consent", "citizen", "password", "nobody", "--dir", str(service.data_dir))
    assert_one_line_error(unknown, "no citizen named 'nobody'")


def test_passwords_are_stored_as_argon2_hashes(app_core: ServiceCore) -> None:
    from sqlmodel import Session, select

    from consent.accounts import CitizenAccount

    with Session(app_core.engine) as session:
        add_citizen(session, "frank", password="frank-password-1")
        row = session.exec(select(CitizenAccount).where(CitizenAccount.name == "frank")).one()
        assert row.password_hash is not None
        assert row.password_hash.startswith("$argon2id$")
        assert "frank-password-1" not in row.password_hash
        assert verify_password(session, "frank", "frank-password-1") is not None
        assert verify_password(session, "frank", "frank-password-2") is None
        assert verify_password(session, "nobody", "frank-password-1") is None
        with pytest.raises(AccountError):
            add_citizen(session, "frank", password="another-password")


# ---- sessions ---------------------------------------------------------------------------------


def test_session_cookie_is_httponly_lax_and_rotated_at_sign_in(
    service: ConsentService, app_core: ServiceCore
) -> None:
    # An attacker plants a session id of their choosing in alice's browser before she signs in.
    victim = client_for(app_core, service, "10.1.0.2")
    victim.cookies.set(SESSION, "attacker-chosen-" + "x" * 27, domain="127.0.0.1", path="/citizen")
    chosen = sign_in(victim, "alice", service.passwords["alice"])
    assert chosen.status_code == 303
    assert victim.cookies[SESSION] != "attacker-chosen-" + "x" * 27
    # Or signs in as bob and plants bob's live session while alice's sign-in form is open.
    attacker = signed_in(app_core, service, "bob", "10.1.0.1")
    planted = attacker.cookies[SESSION]
    victim = client_for(app_core, service, "10.1.0.3")
    form = victim.get("/citizen/sign-in")
    victim.cookies.set(SESSION, planted, domain="127.0.0.1", path="/citizen")
    response = victim.post(
        "/citizen/sign-in",
        data={"csrf_token": csrf_of(form.text), "name": "alice", "password": service.passwords["alice"]},
        follow_redirects=False,
    )
    assert response.status_code == 303
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION + "="))
    parts = {part.strip() for part in cookie.split(";")}
    assert {"HttpOnly", "Path=/citizen", "SameSite=lax"} <= parts
    assert "Secure" not in parts  # the service's public URL is plain http
    fresh = cookie.split(";")[0].split("=", 1)[1]
    assert fresh != planted
    # The planted session ended with the sign-in that replaced it; the new one is alice's.
    assert attacker.get("/citizen", follow_redirects=False).status_code == 303
    page = victim.get("/citizen")
    assert "Hello, Alice." in page.text
    # An invented session id is no session either.
    stranger = client_for(app_core, service, "10.1.0.4")
    stranger.cookies.set(SESSION, "A" * 43, domain="127.0.0.1", path="/citizen")
    assert stranger.get("/citizen", follow_redirects=False).headers["location"] == "/citizen/sign-in"


def test_the_cookie_is_secure_behind_https(service: ConsentService) -> None:
    settings = load_consent_settings(service.data_dir)
    settings.public_url = "https://consent.example.org"
    core = ServiceCore.create(settings)
    try:
        with TestClient(create_app(core), base_url="https://consent.example.org") as client:
            response = sign_in(client, "alice", service.passwords["alice"])
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION + "="))
        assert "Secure" in {part.strip() for part in cookie.split(";")}
    finally:
        core.engine.dispose()


def test_sign_out_ends_the_session_on_the_server(service: ConsentService, app_core: ServiceCore) -> None:
    client = signed_in(app_core, service, "alice", "10.2.0.1")
    token = client.cookies[SESSION]
    page = client.get("/citizen")
    missing = client.post("/citizen/sign-out", data={}, follow_redirects=False)
    assert missing.status_code == 403
    assert client.get("/citizen").status_code == 200  # still signed in
    out = client.post("/citizen/sign-out", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/citizen/sign-in?signed_out=true")
    # The old cookie, replayed, is no session any more.
    replay = client_for(app_core, service, "10.2.0.2")
    replay.cookies.set(SESSION, token, domain="127.0.0.1", path="/citizen")
    assert replay.get("/citizen", follow_redirects=False).status_code == 303


def test_a_session_ends_when_it_expires(service: ConsentService, app_core: ServiceCore) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlmodel import Session

    from consent.citizen_sessions import CitizenSession, token_hash

    client = signed_in(app_core, service, "bob", "10.2.1.1")
    assert client.get("/citizen").status_code == 200
    with Session(app_core.engine) as session:  # two hours later
        row = session.get(CitizenSession, token_hash(client.cookies[SESSION]))
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
        session.commit()
    assert client.get("/citizen", follow_redirects=False).headers["location"] == "/citizen/sign-in"


def test_sign_in_brute_force_is_limited_with_retry_after(
    service: ConsentService, app_core: ServiceCore
) -> None:
    client = client_for(app_core, service, "10.3.0.1")
    form = client.get("/citizen/sign-in")
    token = csrf_of(form.text)
    statuses = [
        client.post(
            "/citizen/sign-in", data={"csrf_token": token, "name": "alice", "password": f"guess-{n}"}
        ).status_code
        for n in range(11)
    ]
    assert statuses == [401] * 10 + [429]
    limited = client.post(
        "/citizen/sign-in",
        data={"csrf_token": token, "name": "alice", "password": service.passwords["alice"]},
    )
    assert limited.status_code == 429  # even the right password, until the window has passed
    assert 0 < int(limited.headers["retry-after"]) <= 60
    assert "Too many sign-in attempts" in limited.text
    assert SESSION not in limited.cookies

    # Guessing one name from many addresses is limited too; other citizens still sign in.
    spread = [
        sign_in(client_for(app_core, service, f"10.4.0.{n}"), "bob", f"guess-{n}").status_code
        for n in range(11)
    ]
    assert spread == [401] * 10 + [429]
    from sqlmodel import Session

    with Session(app_core.engine) as session:
        add_citizen(session, "hanna", password="hanna-password-1")
    assert sign_in(client_for(app_core, service, "10.5.0.1"), "hanna", "hanna-password-1").status_code == 303


def test_sign_in_needs_its_csrf_token(service: ConsentService, app_core: ServiceCore) -> None:
    client = client_for(app_core, service, "10.6.0.1")
    client.get("/citizen/sign-in")
    for token in (None, "f" * 43):
        data = {"name": "alice", "password": service.passwords["alice"]}
        if token:
            data["csrf_token"] = token
        refused = client.post("/citizen/sign-in", data=data, follow_redirects=False)
        assert refused.status_code == 403
        assert SESSION not in refused.cookies
    elsewhere = client.post(
        "/citizen/sign-in", data={"next": "https://evil.example/"}, follow_redirects=False
    )
    assert elsewhere.status_code == 403


def test_after_sign_in_only_citizen_pages_are_a_destination(
    service: ConsentService, app_core: ServiceCore
) -> None:
    client = client_for(app_core, service, "10.6.0.2")
    form = client.get("/citizen/sign-in?next=https://evil.example/")
    response = client.post(
        "/citizen/sign-in",
        data={
            "csrf_token": csrf_of(form.text),
            "name": "alice",
            "password": service.passwords["alice"],
            "next": "//evil.example/citizen",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/citizen"


# ---- one citizen, another citizen's records -------------------------------------------------


def test_a_citizen_cannot_read_or_change_another_citizens_records(
    service: ConsentService, app_core: ServiceCore
) -> None:
    alice = signed_in(app_core, service, "alice", "10.7.0.1")
    bob = signed_in(app_core, service, "bob", "10.7.0.2")
    trips = service.agreements["trips"]
    given = turn(alice, CITY, True, trips)
    assert given.status_code == 303
    seq = parse_qs(urlsplit(given.headers["location"]).query)["saved"][0]
    alice_before = export_of(alice)
    alice_receipt = alice.get(f"/citizen/receipts/{seq}.jws")
    assert alice_receipt.status_code == 200

    # Bob asks for alice's receipt by its number, and for her confirmation.
    assert bob.get(f"/citizen/receipts/{seq}.jws").status_code == 404
    assert bob.get(f"/citizen/receipts/{seq}").status_code == 404
    confirmation = bob.get(f"/citizen?saved={seq}")
    assert confirmation.status_code == 200
    assert "Saved:" not in confirmation.text
    # Every page and the export bob sees holds none of alice's records.
    for path in (
        "/citizen",
        "/citizen/history",
        "/citizen/transfers",
        "/citizen/withdraw-all",
        "/citizen/export",
    ):
        text = bob.get(path).text
        assert service.citizen_ids["alice"] not in text, path
        assert alice_before["history"][-1]["hash"] not in text, path
        assert "transfer-0001" not in text, path
        assert "card-trips</td>" not in text, path
    bob_export = export_of(bob)
    assert bob_export["citizen"] == service.citizen_ids["bob"]
    assert bob_export["history"] == []
    assert bob_export["transfers"] == []
    # The forms carry no citizen id: whatever bob sends changes bob's records only.
    bob_page = bob.get("/citizen")
    for extra in ({"citizen": service.citizen_ids["alice"]}, {"citizen_id": service.citizen_ids["alice"]}):
        response = bob.post(
            "/citizen/choices",
            data={
                "csrf_token": csrf_of(bob_page.text),
                "agreement": trips,
                "recipient": CITY,
                "on": "false",
                **extra,
            },
            follow_redirects=False,
        )
        assert response.status_code == 303
    withdrawn = bob.post(
        "/citizen/withdraw-all",
        data={"csrf_token": csrf_of(bob_page.text), "confirm": "yes"},
        follow_redirects=False,
    )
    assert withdrawn.status_code == 303
    # Alice's CSRF token does not work in bob's session either.
    stolen = bob.post(
        "/citizen/withdraw-all",
        data={"csrf_token": csrf_of(alice.get("/citizen").text), "confirm": "yes"},
        follow_redirects=False,
    )
    assert stolen.status_code == 403
    assert export_of(alice) == alice_before
    assert [
        s["on"]
        for s in export_of(alice)["consents"]
        if s["recipient_did"] == CITY and s["agreement_id"] == trips
    ] == [True]


def test_forged_or_missing_csrf_changes_nothing(service: ConsentService, app_core: ServiceCore) -> None:
    alice = signed_in(app_core, service, "alice", "10.8.0.1")
    trips = service.agreements["trips"]
    before = export_of(alice)
    attempts = [
        ("/citizen/choices", {"agreement": trips, "recipient": UTILITY, "on": "true"}),
        ("/citizen/withdraw-all", {"confirm": "yes"}),
        ("/citizen/sign-out", {}),
    ]
    for path, data in attempts:
        for token in (None, "", "0" * 43, csrf_of(alice.get("/citizen").text)[:-1] + "x"):
            body = dict(data) if token is None else {**data, "csrf_token": token}
            response = alice.post(path, data=body, follow_redirects=False)
            assert response.status_code == 403, (path, token)
            assert "Request refused" in response.text
        # A JSON body is not a form: refused the same way.
        response = alice.post(path, content=json.dumps(data), headers={"Content-Type": "application/json"})
        assert response.status_code == 403, path
    assert export_of(alice) == before
    assert alice.get("/citizen").status_code == 200  # and still signed in


def test_bad_choices_are_refused_with_nothing_written(service: ConsentService, app_core: ServiceCore) -> None:
    alice = signed_in(app_core, service, "alice", "10.8.0.2")
    before = export_of(alice)
    token = csrf_of(alice.get("/citizen").text)
    trips = service.agreements["trips"]
    cases = [
        ({"agreement": "no-such-agreement", "recipient": CITY, "on": "true"}, 404),
        ({"agreement": trips, "recipient": "did:web:someone.else", "on": "true"}, 404),
        ({"agreement": trips, "recipient": CITY, "on": "maybe"}, 422),
        ({"agreement": trips, "recipient": CITY}, 422),
        ({"agreement": "x" * 5000, "recipient": CITY, "on": "true"}, 404),
    ]
    for data, status in cases:
        response = alice.post("/citizen/choices", data={"csrf_token": token, **data}, follow_redirects=False)
        assert response.status_code == status, (data, response.text[:300])
        assert "Nothing was changed" in response.text
    unconfirmed = alice.post("/citizen/withdraw-all", data={"csrf_token": token}, follow_redirects=False)
    assert unconfirmed.status_code == 422
    for receipt in ("abc", "-1", "99999999999999999999999", "0"):
        assert alice.get(f"/citizen/receipts/{receipt}").status_code == 404
    assert export_of(alice) == before


def test_pages_need_a_session(service: ConsentService, app_core: ServiceCore) -> None:
    client = client_for(app_core, service, "10.8.0.3")
    for path in (
        "/citizen",
        "/citizen/history",
        "/citizen/transfers",
        "/citizen/export",
        "/citizen/receipts/1.jws",
        "/citizen/withdraw-all",
    ):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/citizen/sign-in"), path
    for path in ("/citizen/choices", "/citizen/withdraw-all"):
        response = client.post(path, data={"confirm": "yes"}, follow_redirects=False)
        assert response.status_code == 303, path


def test_a_receipt_verifies_with_the_service_key(service: ConsentService, app_core: ServiceCore) -> None:
    bob = signed_in(app_core, service, "bob", "10.8.0.4")
    response = turn(bob, UTILITY, True, service.agreements["trips"])
    seq = parse_qs(urlsplit(response.headers["location"]).query)["saved"][0]
    download = bob.get(f"/citizen/receipts/{seq}.jws")
    assert download.headers["content-type"] == "application/jose"
    assert download.headers["content-disposition"] == f'attachment; filename="consent-receipt-{seq}.jws"'
    claims = verify_receipt(download.text, public_jwk_of(service.data_dir))
    assert claims["piiPrincipalId"] == service.citizen_ids["bob"]
    assert claims["consentRecord"]["state"] == "ConsentGiven"
    assert claims["services"][0]["purposes"][0]["thirdPartyDid"] == UTILITY
    tampered = download.text[:-4] + ("AAAA" if not download.text.endswith("AAAA") else "BBBB")
    with pytest.raises(Exception, match="signature"):
        verify_receipt(tampered, public_jwk_of(service.data_dir))


# ---- OpenID Connect --------------------------------------------------------------------------


def oidc_round_trip(client: TestClient, subject: str) -> httpx.Response:
    """Start at the sign-in page, sign in at the provider as ``subject``, come back; the callback's answer."""
    form = client.get("/citizen/sign-in")
    assert "Sign in with the test provider" in form.text
    start = client.post(
        "/citizen/oidc/start",
        data={"csrf_token": csrf_of(form.text), "next": "/citizen/history"},
        follow_redirects=False,
    )
    assert start.status_code == 303, start.text
    authorization = start.headers["location"]
    query = parse_qs(urlsplit(authorization).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["response_type"] == ["code"]
    assert len(query["state"][0]) >= 32
    assert len(query["nonce"][0]) >= 32
    with httpx.Client(timeout=10) as browser:
        provider_page = browser.get(authorization)
        assert provider_page.status_code == 200, provider_page.text
        fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', provider_page.text))
        approved = browser.post(
            authorization.split("?")[0], data={**fields, "subject": subject}, follow_redirects=False
        )
    callback = approved.headers["location"]
    assert callback.startswith(client.base_url.__str__() + "/citizen/oidc/callback?")
    response: httpx.Response = client.get(callback.removeprefix(str(client.base_url)), follow_redirects=False)
    return response


def test_oidc_sign_in_links_an_account_by_subject(
    service: ConsentService, app_core: ServiceCore, provider: Provider
) -> None:
    provider.misbehave("normal")
    first = client_for(app_core, service, "10.10.0.1")
    came_back = oidc_round_trip(first, "subject-4711")
    assert (came_back.status_code, came_back.headers["location"]) == (303, "/citizen/history")
    assert "Hello, Test citizen subject-4711." in first.get("/citizen").text
    first_id = export_of(first)["citizen"]
    # The same subject later (another browser) is the same citizen; another subject is someone else.
    again = client_for(app_core, service, "10.10.0.2")
    assert oidc_round_trip(again, "subject-4711").status_code == 303
    assert export_of(again)["citizen"] == first_id
    other = client_for(app_core, service, "10.10.0.3")
    assert oidc_round_trip(other, "subject-0815").status_code == 303
    assert export_of(other)["citizen"] != first_id


def test_oidc_subject_linked_by_the_operator_signs_in_to_that_account(
    service: ConsentService, app_core: ServiceCore, provider: Provider
) -> None:
    provider.misbehave("normal")
    tessera(
        "consent",
        "citizen",
        "add",
        "grace",
        "--oidc-subject",
        "grace-at-city",
        "--dir",
        str(service.data_dir),
    )
    client = client_for(app_core, service, "10.11.0.1")
    assert oidc_round_trip(client, "grace-at-city").status_code == 303
    listed = tessera("consent", "citizen", "list", "--dir", str(service.data_dir))
    grace = re.search(r"^grace\t(\S+)\tpassword,oidc$", listed, re.M)
    assert grace is not None, listed
    assert export_of(client)["citizen"] == grace.group(1)


@pytest.mark.parametrize("mode", ["wrong-nonce", "wrong-audience", "wrong-issuer", "expired", "foreign-key"])
def test_oidc_refuses_an_unacceptable_id_token(
    mode: str, service: ConsentService, app_core: ServiceCore, provider: Provider
) -> None:
    accounts_before = tessera("consent", "citizen", "list", "--dir", str(service.data_dir))
    provider.misbehave(mode)
    try:
        client = client_for(app_core, service, "10.12.0.1")
        came_back = oidc_round_trip(client, f"mallory-{mode}")
        assert came_back.status_code == 401, came_back.text
        assert SESSION not in came_back.cookies
        assert client.get("/citizen", follow_redirects=False).status_code == 303
        assert tessera("consent", "citizen", "list", "--dir", str(service.data_dir)) == accounts_before
    finally:
        provider.misbehave("normal")


def test_oidc_callback_needs_the_browser_that_started_it(
    service: ConsentService, app_core: ServiceCore, provider: Provider
) -> None:
    provider.misbehave("normal")
    victim = client_for(app_core, service, "10.13.0.1")
    form = victim.get("/citizen/sign-in")
    start = victim.post(
        "/citizen/oidc/start", data={"csrf_token": csrf_of(form.text)}, follow_redirects=False
    )
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    requests_before = provider.token_requests()
    # Another browser (no binding cookie) arriving with that state, a wrong state, or no code: refused.
    stranger = client_for(app_core, service, "10.13.0.2")
    assert (
        stranger.get(f"/citizen/oidc/callback?state={state}&code=abc", follow_redirects=False).status_code
        == 400
    )
    assert (
        victim.get("/citizen/oidc/callback?state=wrong&code=abc", follow_redirects=False).status_code == 400
    )
    # The pending sign-in is used up by the failed attempt: replaying the right state fails too.
    assert (
        victim.get(f"/citizen/oidc/callback?state={state}&code=abc", follow_redirects=False).status_code
        == 400
    )
    assert provider.token_requests() == requests_before  # the provider was never asked
    # Starting needs the sign-in form's token.
    assert victim.post("/citizen/oidc/start", data={}, follow_redirects=False).status_code == 403


def test_oidc_is_off_unless_configured(tmp_path: Path) -> None:
    plain = create_consent_service(tmp_path)
    core = ServiceCore.create(load_consent_settings(plain.data_dir))
    try:
        client = TestClient(create_app(core), base_url=plain.base_url)
        assert "Sign in with" not in client.get("/citizen/sign-in").text
        assert client.post("/citizen/oidc/start", data={}).status_code == 404
        assert client.get("/citizen/oidc/callback?state=a&code=b").status_code == 404
    finally:
        core.engine.dispose()
