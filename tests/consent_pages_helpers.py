"""Helpers for the citizen page tests: a consent service with citizens and agreements, and an OIDC provider.

Citizens are created the way an operator does it (``tessera consent citizen
add``). Data agreements and the connectors' transfer summaries are written
through the consent service's own service layer into its database before it
starts: they are the setting of these tests, not what they test. The OpenID
Connect provider is ``tests/oidc_provider.py`` in a process of its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session

from consent.accounts import find_by_name
from consent.agreements import register_agreement
from consent.ledger import now_millis
from consent.models import TransferSummary
from consent.settings import load_consent_settings
from runtime.database import make_engine
from runtime.service import prepare_database
from tests.conftest import CliResult, free_port
from tests.consent_helpers import terms
from tests.helpers import cli_env

TRANSIT = "did:web:transit.example"
CITY = "did:web:city.example"
UTILITY = "did:web:utility.example"
CLIENT_ID = "tessera-consent-pages"
CLIENT_SECRET = "s3cret-of-the-consent-service"
ALICE_PASSWORD = "alice-has-a-long-password"
PROVIDER_TIMEOUT = 30.0


def run_tessera(*args: str, stdin: str | None = None) -> CliResult:
    """The real ``tessera`` command in a subprocess, with ``stdin`` as its standard input."""
    completed = subprocess.run(
        [sys.executable, "-m", "connector", *args],
        capture_output=True,
        text=True,
        input=stdin or "",
        env=cli_env(),
        timeout=60,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def tessera(*args: str, stdin: str | None = None) -> str:
    result = run_tessera(*args, stdin=stdin)
    assert result.code == 0, f"tessera {' '.join(args)} failed: {result.stderr[-1500:]}"
    return result.stdout


@dataclass(frozen=True)
class Provider:
    base_url: str

    def misbehave(self, mode: str) -> None:
        response = httpx.post(f"{self.base_url}/test/misbehave", json={"mode": mode}, timeout=10)
        assert response.status_code == 200, response.text

    def token_requests(self) -> int:
        count: int = httpx.get(f"{self.base_url}/test/stats", timeout=10).json()["token_requests"]
        return count


@contextmanager
def oidc_provider(redirect_uri: str, port: int | None = None) -> Iterator[Provider]:
    """The test OpenID Connect provider in its own process, ready to answer."""
    port = port or free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.oidc_provider",
            "--port",
            str(port),
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            "--redirect-uri",
            redirect_uri,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + PROVIDER_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"the OIDC provider exited: {process.stderr.read() if process.stderr else ''!r}"
                )
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the OIDC provider did not start")
            time.sleep(0.1)
        yield Provider(base_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


@dataclass(frozen=True)
class ConsentService:
    data_dir: Path
    port: int
    passwords: dict[str, str]
    citizen_ids: dict[str, str]
    agreements: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def callback_url(self) -> str:
        return f"{self.base_url}/citizen/oidc/callback"


def create_consent_service(
    root: Path,
    *,
    oidc_issuer: str | None = None,
    port: int | None = None,
    more_citizens: tuple[str, ...] = (),
    transfers_for: tuple[str, ...] = ("alice",),
) -> ConsentService:
    """``tessera consent init``, OIDC settings, citizens alice, bob (and more), two organisations' agreements.

    Alice's password comes from standard input; the others' are generated and printed by the CLI.
    """
    port = port or free_port()
    data_dir = root / "consent"
    tessera("consent", "init", "--name", "consent", "--port", str(port), "--dir", str(data_dir))
    if oidc_issuer is not None:
        with (data_dir / "tessera.toml").open("a", encoding="utf-8") as config:
            config.write(
                f'oidc_issuer = "{oidc_issuer}"\noidc_client_id = "{CLIENT_ID}"\n'
                f'oidc_client_secret = "{CLIENT_SECRET}"\noidc_provider_name = "the test provider"\n'
            )
    tessera(
        "consent",
        "citizen",
        "add",
        "alice",
        "--display-name",
        "Alice",
        "--password-stdin",
        "--dir",
        str(data_dir),
        stdin=ALICE_PASSWORD + "\n",
    )
    passwords = {"alice": ALICE_PASSWORD}
    for name in ("bob", *more_citizens):
        printed = tessera("consent", "citizen", "add", name, "--dir", str(data_dir))
        match = re.search(r"password \(shown once\): (\S+)", printed)
        assert match is not None, printed
        passwords[name] = match.group(1)
    agreements, citizen_ids = seed(data_dir, list(passwords), transfers_for)
    return ConsentService(data_dir, port, passwords, citizen_ids, agreements)


def seed(
    data_dir: Path, citizens: list[str], transfers_for: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, str]]:
    """Transit's card-trips agreement (recipients city and utility), the city's parking one, transfers."""
    settings = load_consent_settings(data_dir)
    prepare_database(settings, "consent")
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            trips = register_agreement(
                session,
                TRANSIT,
                terms(
                    controller_name="Tessera Transit",
                    recipients=[
                        {"did": CITY, "name": "City of Tessera"},
                        {"did": UTILITY, "name": "Tessera Utility"},
                    ],
                ),
            )
            parking = register_agreement(
                session,
                CITY,
                terms(
                    name="parking-sessions",
                    controller_name="City of Tessera",
                    purpose="parking-planning",
                    purpose_description="Plan parking spaces from how long people park.",
                    recipients=[{"did": TRANSIT, "name": "Tessera Transit"}],
                    data_categories=["dpv:Location"],
                    datasets=["parking"],
                    retention="P6M",
                    consent_duration_days=None,
                    notice={
                        "text": "The city shares how long your car was parked with transit, to plan park-and-ride.",
                        "version": "2.1",
                        "language": "en",
                    },
                ),
            )
            ids = {}
            for name in citizens:
                account = find_by_name(session, name)
                assert account is not None
                ids[name] = account.id
            # What transit's connector reported about these citizens' trips (the connector API's job).
            for name in transfers_for:
                session.add(
                    TransferSummary(
                        citizen_id=ids[name],
                        controller_did=TRANSIT,
                        recipient_did=CITY,
                        purpose="traffic-planning",
                        dataset="card-trips",
                        transfer_id="transfer-0001",
                        record_count=42,
                        transferred_at=now_millis() - 3_600_000,
                        reported_at=now_millis(),
                    )
                )
            session.commit()
            return {"trips": trips.agreement_id, "parking": parking.agreement_id}, ids
    finally:
        engine.dispose()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, "no CSRF token on the page"
    return match.group(1)


def public_jwk_of_service(base_url: str) -> dict[str, Any]:
    """The consent service's public key, as its DID document publishes it."""
    document = httpx.get(f"{base_url}/.well-known/did.json", timeout=10).json()
    jwk: dict[str, Any] = document["verificationMethod"][0]["publicKeyJwk"]
    return jwk
