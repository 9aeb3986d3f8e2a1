"""Helpers for the auditor tests: a provider whose log holds real agreements and realistic transfers.

``audited_pair`` makes city (provider) and transit (consumer) with the real CLI, serves both,
lets transit negotiate ``card-trips`` (personal data) from city over DSP so city logs a
finalized agreement with both signatures, and appends the transfer entries the transfer
process will write (started, completed with payload hash, bytes, records and consent
counts) through the translog store API, some of them dated on earlier days. It also creates
an auditor with ``tessera auditor add``.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx

from connector.translog.entries import REFUSAL, TRANSFER_COMPLETED, TRANSFER_STARTED
from connector.translog.store import append_entries
from tests.catalog_helpers import (
    ASSETS,
    CONTRACT_DEFINITIONS,
    POLICIES,
    asset_body,
    contract_definition_body,
    policy_body,
)
from tests.conftest import CliResult
from tests.helpers import cli_env
from tests.negotiation_helpers import (
    Node,
    catalog_offer,
    connector_pair,
    contract_request,
    run_cli,
    running,
    start_negotiation,
    wait_for,
)

AUDITOR = "alice"
AUDITOR_PASSWORD = "a-long-auditor-passphrase-2026"
DAY_SECONDS = 86_400
OLD_AGREEMENT = "urn:uuid:0b6f1c1e-5d2a-4c1e-9a53-2f0c5d7e8a10"


def tessera(*args: str, stdin: str | None = None, timeout: float = 60) -> CliResult:
    """The real ``tessera`` command in a subprocess, with ``stdin`` as its input."""
    completed = subprocess.run(
        [sys.executable, "-m", "connector", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


@dataclass(frozen=True)
class AuditedPair:
    city: Node
    transit: Node
    agreement_id: str

    @property
    def database(self) -> Path:
        return self.city.data_dir / "tessera.db"

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """One statement on city's SQLite database, committed (how a tamperer would change a row)."""
        with sqlite3.connect(self.database, timeout=30) as conn:
            rows = conn.execute(statement, params).fetchall()
        return rows


def _publish_card_trips(city: Node) -> None:
    with city.api() as api:
        for body in (policy_body("open-terms"), policy_body("open-access")):
            assert api.post(POLICIES, json=body).status_code == 200
        personal = asset_body(
            "card-trips",
            {
                "dct:title": "Card trips",
                "tessera:personal": True,
                "tessera:subjectField": "card_id",
                "tessera:consentPurpose": "traffic-planning",
            },
        )
        assert api.post(ASSETS, json=personal).status_code == 200, "card-trips"
        assert (
            api.post(ASSETS, json=asset_body("parking", {"dct:title": "Parking occupancy"})).status_code
            == 200
        )
        definition = contract_definition_body(
            "offer-all", "open-access", "open-terms", [("id", "in", ["card-trips", "parking"])]
        )
        response = api.post(CONTRACT_DEFINITIONS, json=definition)
        assert response.status_code == 200, response.text


def _negotiate(city: Node, transit: Node, asset_id: str) -> str:
    with transit.api() as api:
        offer = catalog_offer(api, city.did, city.dsp_url, asset_id)
        negotiation_id = start_negotiation(api, contract_request(city.did, city.dsp_url, offer, asset_id))
        finished = wait_for(api, negotiation_id, "FINALIZED", timeout=60)
    agreement_id: str = finished["contractAgreementId"]
    return agreement_id


def transfer(
    n: int, agreement_id: str, dataset: str, counter_party: str, *, size: int, personal: bool
) -> list[tuple[str, dict[str, Any]]]:
    """A transfer's started and completed entries, as the provider logs them."""
    base: dict[str, Any] = {
        "transferId": f"urn:uuid:7e3d0c2a-0000-4000-8000-{n:012d}",
        "agreementId": agreement_id,
        "dataset": dataset,
        "counterParty": counter_party,
        "role": "provider",
    }
    completed: dict[str, Any] = {
        **base,
        "bytes": size,
        "payloadSha256": hashlib.sha256(f"payload {n}".encode()).hexdigest(),
        "records": size // 100,
        "format": "text/csv",
        "policyDecision": {"allowed": True, "policy": "open-terms"},
    }
    if personal:
        completed["consent"] = {
            "decisionIds": [f"urn:uuid:c0de0000-0000-4000-8000-{n:012d}"],
            "released": size // 100 - 2,
            "withheld": 2,
        }
    return [(TRANSFER_STARTED, base), (TRANSFER_COMPLETED, completed)]


def append_at(node: Node, items: list[tuple[str, dict[str, Any]]], epoch_seconds: float) -> None:
    """Append entries through the translog store API, logged at the given moment."""
    engine = node.engine()
    try:
        with (
            mock.patch("connector.translog.store.time.time", return_value=epoch_seconds),
            engine.begin() as conn,
        ):
            append_entries(conn, items)
    finally:
        engine.dispose()


def _witness(witness: Node, member: Node) -> None:
    """A witnessing round by ``witness`` now: it checks and cosigns ``member``'s newest checkpoint."""
    with witness.api() as api:
        response = api.post("/management/v3/transferlog/witness")
    assert response.status_code == 200, response.text
    results = {r["member"]: r for r in response.json()}
    assert results[member.did]["status"] in ("cosigned", "unchanged"), results


@contextmanager
def audited_pair(root: Path) -> Iterator[AuditedPair]:
    city, transit = connector_pair(root, run_cli)
    added = tessera(
        "auditor", "add", AUDITOR, "--password-stdin", "--dir", str(city.data_dir), stdin=AUDITOR_PASSWORD
    )
    assert added.code == 0, added.stderr
    now = time.time()
    with ExitStack() as stack, running(stack, city, transit):
        _publish_card_trips(city)
        # Earlier days: transfers of parking under an older agreement, and a refusal of utility.
        append_at(
            city,
            transfer(1, OLD_AGREEMENT, "parking", transit.did, size=12_000, personal=False),
            now - 3 * DAY_SECONDS,
        )
        refusal = {
            "subject": "negotiation",
            "counterParty": "did:web:utility.example",
            "role": "provider",
            "dataset": "card-trips",
            "by": "us",
            "code": "policy",
            "reason": "membership 'transport-operator' is required (Verkehrsbetriebe Zürich, São Paulo — 東京)",
            "policyDecision": {"allowed": False, "explanation": "membership is not in {transport-operator}"},
        }
        append_at(city, [(REFUSAL, refusal)], now - DAY_SECONDS)
        append_at(
            city,
            transfer(2, OLD_AGREEMENT, "parking", transit.did, size=30_000, personal=False),
            now - DAY_SECONDS,
        )
        agreement_id = _negotiate(city, transit, "card-trips")
        items = transfer(3, agreement_id, "card-trips", transit.did, size=5_000, personal=True)
        items += transfer(4, agreement_id, "card-trips", transit.did, size=7_000, personal=True)
        append_at(city, items, time.time())
        _witness(transit, city)
        yield AuditedPair(city, transit, agreement_id)


@contextmanager
def auditor_client(
    base_url: str, name: str = AUDITOR, password: str = AUDITOR_PASSWORD
) -> Iterator[httpx.Client]:
    """An HTTP client signed in to the audit pages through the sign-in form."""
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=30) as client:
        form = client.get("/ui/audit/login")
        match = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert match, form.text[:500]
        response = client.post(
            "/ui/audit/login",
            data={"csrf_token": match.group(1), "name": name, "password": password, "next": "/ui/audit"},
        )
        assert response.status_code == 303, response.text[:500]
        yield client
