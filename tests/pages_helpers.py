"""Helpers for the operator-page tests: a small data space of real connector processes, and the browser.

The city connector (the one whose pages are tested) trusts transit (membership
``transport-operator``) and utility (no membership; never started). Transit
trusts city and publishes datasets, so city's federated catalog has something
to find. Everything is created the way an operator would: ``tessera init``,
``tessera dataspace add``, ``tessera serve`` and the Management API.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import free_port
from tests.helpers import REPO, cli_env, serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "test-artifacts" / "pages"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MANAGEMENT_CONTEXT = ["https://w3id.org/edc/connector/management/v0.0.1"]
ASSET_CONTEXT = {
    "dct": "http://purl.org/dc/terms/",
    "dcat": "http://www.w3.org/ns/dcat#",
    "tessera": "https://w3id.org/tessera/v1/ns/",
}
EDC_VOCAB = {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"}
TRANSPORT_THEME = "http://publications.europa.eu/resource/authority/data-theme/TRAN"
# Values in city's data address that must never reach a page.
SECRETS = ("s3cret-auth-code", "Bearer sk-live-1234", "hunter2", "tok-9876")
SENSOR_COUNT = 20


@dataclass(frozen=True)
class Connector:
    name: str
    base_url: str
    did: str
    api_key: str

    def management(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-Api-Key": self.api_key}, timeout=30)


@dataclass(frozen=True)
class DataSpace:
    city: Connector
    transit: Connector
    utility_did: str


def _tessera(*args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "connector", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, f"tessera {' '.join(args)} failed: {completed.stderr[-1500:]}"
    return completed.stdout


def _in_parallel(calls: Sequence[Sequence[str]]) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda args: _tessera(*args), calls))


def _did_of(port: int) -> str:
    return f"did:web:127.0.0.1%3A{port}"


def _trust(data_dir: Path, member_dir: Path, port: int, *memberships: str) -> list[str]:
    args = ["dataspace", "add", "--dir", str(data_dir), "--did", _did_of(port)]
    args += ["--url", f"http://127.0.0.1:{port}/dsp/2025-1", "--key", str(member_dir / "keys/public-key.jwk")]
    for membership in memberships:
        args += ["--membership", membership]
    return args


@contextmanager
def running_dataspace(root: Path) -> Iterator[DataSpace]:
    ports = {name: free_port() for name in ("city", "transit", "utility")}
    dirs = {name: root / name for name in ports}
    _in_parallel(
        [
            ["init", "--name", name, "--port", str(port), "--dir", str(dirs[name])]
            for name, port in ports.items()
        ]
    )
    # One command per database at a time (city's two members one after the other).
    _in_parallel(
        [
            _trust(dirs["city"], dirs["transit"], ports["transit"], "transport-operator"),
            _trust(dirs["transit"], dirs["city"], ports["city"]),
        ]
    )
    _tessera(*_trust(dirs["city"], dirs["utility"], ports["utility"]))
    with ExitStack() as stack:
        served = {name: stack.enter_context(serving(dirs[name], ports[name])) for name in ("city", "transit")}
        connectors = {
            name: Connector(
                name,
                served[name].base_url,
                _did_of(ports[name]),
                (dirs[name] / "management-api-key").read_text().strip(),
            )
            for name in served
        }
        space = DataSpace(connectors["city"], connectors["transit"], _did_of(ports["utility"]))
        publish_city(space.city)
        publish_transit(space.transit)
        yield space


def _created(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:500]}"


def _policy(policy_id: str, *memberships: str) -> dict[str, Any]:
    permission: dict[str, Any] = {"action": "use"}
    if memberships:
        permission["constraint"] = [
            {"leftOperand": "membership", "operator": "isAnyOf", "rightOperand": list(memberships)}
        ]
    return {
        "@context": MANAGEMENT_CONTEXT,
        "@type": "PolicyDefinition",
        "@id": policy_id,
        "policy": {"@type": "Set", "permission": [permission]},
    }


def _asset(asset_id: str, properties: dict[str, Any], address: dict[str, Any]) -> dict[str, Any]:
    return {"@context": ASSET_CONTEXT, "@id": asset_id, "properties": properties, "dataAddress": address}


def _contract_definition(definition_id: str, access: str, *asset_ids: str) -> dict[str, Any]:
    return {
        "@context": EDC_VOCAB,
        "@id": definition_id,
        "accessPolicyId": access,
        "contractPolicyId": "use-terms",
        "assetsSelector": [{"operandLeft": "id", "operator": "in", "operandRight": list(asset_ids)}],
    }


def publish_city(city: Connector) -> None:
    """Bus stops (personal, for transport operators only, with secrets in its data address) and parking."""
    with city.management() as client:
        _created(client, "/management/v3/policydefinitions", _policy("use-terms"))
        _created(client, "/management/v3/policydefinitions", _policy("transport-only", "transport-operator"))
        _created(
            client,
            "/management/v3/assets",
            _asset(
                "bus-stops",
                {
                    "dct:title": "Bus stop boardings",
                    "dct:description": "Boardings per stop and card, for network planning.",
                    "dct:publisher": "City of Tessera",
                    "dct:license": "CC-BY-4.0",
                    "dcat:keyword": ["bus", "boardings"],
                    "dcat:theme": [{"@id": TRANSPORT_THEME}],
                    "tessera:personal": True,
                    "tessera:subjectField": "card_id",
                    "tessera:consentPurpose": "network-planning",
                },
                {
                    "type": "HttpData",
                    "baseUrl": "https://operator:hunter2@upstream.example/stops?access_token=tok-9876",
                    "path": "/boardings",
                    "authKey": "X-Api-Key",
                    "authCode": "s3cret-auth-code",
                    "header:Authorization": "Bearer sk-live-1234",
                    "password": "hunter2",
                },
            ),
        )
        _created(
            client,
            "/management/v3/assets",
            _asset(
                "parking",
                {
                    "dct:title": "Parking occupancy",
                    "dct:publisher": "City of Tessera",
                    "dct:license": "CC0-1.0",
                },
                {"type": "File", "path": "/srv/data/parking.csv"},
            ),
        )
        _created(
            client,
            "/management/v3/contractdefinitions",
            _contract_definition("bus-offer", "transport-only", "bus-stops"),
        )
        _created(
            client,
            "/management/v3/contractdefinitions",
            _contract_definition("parking-offer", "use-terms", "parking"),
        )


def _transit_asset(asset_id: str, title: str, *, personal: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "dct:title": title,
        "dct:description": f"{title}, published by the transit operator.",
        "dct:publisher": "Tessera Transit",
        "dct:license": "https://creativecommons.org/licenses/by/4.0/",
        "dcat:theme": [{"@id": TRANSPORT_THEME}],
        "dcat:mediaType": "text/csv",
    }
    if personal:
        properties |= {
            "tessera:personal": True,
            "tessera:subjectField": "card_id",
            "tessera:consentPurpose": "traffic-planning",
        }
    return _asset(asset_id, properties, {"type": "File", "path": f"/srv/transit/{asset_id}.csv"})


def publish_transit(transit: Connector) -> None:
    """22 datasets every member sees (two pages of marketplace results) and one nobody sees."""
    sensors = [f"sensor-{number:02}" for number in range(1, SENSOR_COUNT + 1)]
    with transit.management() as client:
        _created(client, "/management/v3/policydefinitions", _policy("use-terms"))
        _created(client, "/management/v3/policydefinitions", _policy("nobody", "no-such-membership"))
        _created(client, "/management/v3/assets", _transit_asset("ridership-by-stop", "Ridership by stop"))
        _created(client, "/management/v3/assets", _transit_asset("card-trips", "Card trips", personal=True))
        for sensor in sensors:
            _created(client, "/management/v3/assets", _transit_asset(sensor, f"Platform {sensor}"))
        _created(
            client,
            "/management/v3/contractdefinitions",
            _contract_definition("public", "use-terms", "ridership-by-stop", "card-trips", *sensors),
        )
        _created(client, "/management/v3/assets", _transit_asset("depot-internal", "Depot internals"))
        _created(
            client,
            "/management/v3/contractdefinitions",
            _contract_definition("internal", "nobody", "depot-internal"),
        )


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's headless Chromium (never a downloaded browser); skipped where it is missing, except in CI."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium package to run the operator-page tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG in test-artifacts/pages/, checked to exist and be a PNG."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file(), f"no screenshot at {path}"
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return path


def sign_in(page: Page, connector: Connector, key: str | None = None) -> None:
    """Fill in and send the sign-in form (the page must show it)."""
    page.get_by_label("Management API key").fill(connector.api_key if key is None else key)
    page.get_by_role("button", name="Sign in").click()
