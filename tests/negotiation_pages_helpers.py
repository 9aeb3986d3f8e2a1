"""Helpers for the negotiation-page tests: a provider and a consumer as real connector processes.

Transit (the provider) publishes three datasets, each under its own contract
definition: ``card-trips`` (manual approval, open terms), ``fare-data``
(manual approval, terms for public authorities only) and ``depot-plans``
(automatic approval, terms for public authorities only). City (the consumer)
is a member without memberships, so transit's contract policy refuses it the
last two. Everything is set up as an operator would: ``tessera init``,
``tessera dataspace add``, ``tessera serve`` and the Management API.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

from catalog.vocabulary import DSP_PROTOCOL
from tests.conftest import free_port
from tests.helpers import cli_env, serving
from tests.pages_helpers import Connector

WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
EDC_NS = "https://w3id.org/edc/v0.0.1/ns/"
MANAGEMENT_CONTEXT = ["https://w3id.org/edc/connector/management/v0.0.1"]
NEGOTIATIONS = "/management/v3/contractnegotiations"
WAIT_SECONDS = 20.0
# dataset -> (contract policy, negotiation approval at the provider)
OFFERS = {
    "card-trips": ("open-terms", "manual"),
    "fare-data": ("authorities-only", "manual"),
    "depot-plans": ("authorities-only", "automatic"),
}


@dataclass(frozen=True)
class Pair:
    provider: Connector  # transit
    consumer: Connector  # city
    provider_dsp: str

    @staticmethod
    def label(connector: Connector) -> str:
        """How the pages name a did:web participant: ``127.0.0.1:PORT``."""
        return connector.base_url.removeprefix("http://")


def _tessera(*args: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "connector", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, f"tessera {' '.join(args)} failed: {completed.stderr[-1500:]}"


def _parallel(calls: Sequence[Sequence[str]]) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda args: _tessera(*args), calls))


def _did(port: int) -> str:
    return f"did:web:127.0.0.1%3A{port}"


@contextmanager
def running_pair(root: Path) -> Iterator[Pair]:
    ports = {"transit": free_port(), "city": free_port()}
    dirs = {name: root / name for name in ports}
    _parallel([["init", "--name", n, "--port", str(p), "--dir", str(dirs[n])] for n, p in ports.items()])
    _parallel(
        [
            [
                "dataspace",
                "add",
                "--dir",
                str(dirs[name]),
                "--did",
                _did(ports[other]),
                "--url",
                f"http://127.0.0.1:{ports[other]}/dsp/2025-1",
                "--key",
                str(dirs[other] / "keys/public-key.jwk"),
            ]
            for name, other in (("transit", "city"), ("city", "transit"))
        ]
    )
    with ExitStack() as stack:  # every connector started is terminated, whatever happens
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {n: pool.submit(stack.enter_context, serving(dirs[n], ports[n])) for n in ports}
        served = {n: future.result() for n, future in futures.items()}
        connectors = {
            n: Connector(
                n, served[n].base_url, _did(ports[n]), (dirs[n] / "management-api-key").read_text().strip()
            )
            for n in ports
        }
        pair = Pair(
            connectors["transit"], connectors["city"], f"http://127.0.0.1:{ports['transit']}/dsp/2025-1"
        )
        publish(pair.provider)
        yield pair


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


def publish(provider: Connector) -> None:
    with provider.management() as client:
        _created(client, "/management/v3/policydefinitions", _policy("open-terms"))
        _created(client, "/management/v3/policydefinitions", _policy("authorities-only", "public-authority"))
        for dataset, (contract, approval) in OFFERS.items():
            asset = {
                "@context": {"dct": "http://purl.org/dc/terms/"},
                "@id": dataset,
                "properties": {"dct:title": dataset.replace("-", " ").capitalize()},
                "dataAddress": {"type": "File", "path": f"/srv/transit/{dataset}.csv"},
            }
            _created(client, "/management/v3/assets", asset)
            definition = {
                "@context": {"@vocab": EDC_NS},
                "@id": f"{dataset}-offer",
                "accessPolicyId": "open-terms",
                "contractPolicyId": contract,
                "assetsSelector": [{"operandLeft": "id", "operator": "=", "operandRight": dataset}],
                "negotiationApproval": approval,
            }
            _created(client, "/management/v3/contractdefinitions", definition)


def start_negotiation(pair: Pair, dataset: str, *, approval: str = "automatic") -> tuple[str, str]:
    """The consumer asks for ``dataset``'s offer; returns (consumer's id, provider's id) once both know it."""
    with pair.consumer.management() as client:
        catalog = client.post(
            "/management/v3/catalog/request",
            json={
                "@context": {"@vocab": EDC_NS},
                "@type": "CatalogRequest",
                "counterPartyId": pair.provider.did,
                "counterPartyAddress": pair.provider_dsp,
                "protocol": DSP_PROTOCOL,
            },
        )
        assert catalog.status_code == 200, catalog.text
        offer = next(d for d in catalog.json()["dataset"] if d["@id"] == dataset)["hasPolicy"][0]
        request = {
            "@context": MANAGEMENT_CONTEXT,
            "@type": "ContractRequest",
            "counterPartyId": pair.provider.did,
            "counterPartyAddress": pair.provider_dsp,
            "protocol": DSP_PROTOCOL,
            "approval": approval,
            "policy": {
                "@context": "http://www.w3.org/ns/odrl.jsonld",
                **{k: v for k, v in offer.items() if k != "@type"},
                "@type": "Offer",
                "target": dataset,
            },
        }
        started = client.post(NEGOTIATIONS, json=request)
        assert started.status_code == 200, started.text
        consumer_id: str = started.json()["@id"]
        consumer_pid = client.get(f"{NEGOTIATIONS}/{consumer_id}").json()["consumerPid"]
    query = {
        "@context": {"@vocab": EDC_NS},
        "@type": "QuerySpec",
        "filterExpression": [{"operandLeft": "consumerPid", "operator": "=", "operandRight": consumer_pid}],
    }
    with pair.provider.management() as client:
        deadline = time.monotonic() + WAIT_SECONDS
        while not (found := client.post(f"{NEGOTIATIONS}/request", json=query).json()):
            assert time.monotonic() < deadline, f"the request for {dataset} never reached the provider"
            time.sleep(0.1)
    provider_id: str = found[0]["@id"]
    return consumer_id, provider_id


def api_state(connector: Connector, negotiation_id: str) -> dict[str, Any]:
    with connector.management() as client:
        found: dict[str, Any] = client.get(f"{NEGOTIATIONS}/{negotiation_id}").json()
    return found


def wait_api(connector: Connector, negotiation_id: str, state: str) -> dict[str, Any]:
    """The negotiation (Management API form) once it is in ``state`` with nothing left to deliver."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = api_state(connector, negotiation_id)
        if found["state"] == state and "pendingMessage" not in found:
            return found
        assert time.monotonic() < deadline, (
            f"{connector.name}: stayed {found['state']}, wanted {state}: {found}"
        )
        time.sleep(0.1)


def shows_state(page: Page, url: str, state: str) -> None:
    """Reload the negotiation's page (it has no script) until its summary says ``state``, delivered."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        page.goto(url)
        shown = page.locator("#summary-heading + dl .state").first.text_content()
        delivering = page.get_by_text("This connector is delivering").count()
        if shown == state and not delivering:
            return
        assert time.monotonic() < deadline, f"{url} stayed {shown}, wanted {state}"
        time.sleep(0.2)


def assert_accessible(page: Page) -> None:
    """axe-core finds no WCAG 2.2 A/AA violation on the page as it is now."""
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_AA}})
    violations: list[dict[str, Any]] = results.response["violations"]
    assert not violations, "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
    )


def focused(page: Page) -> dict[str, str]:
    """The element with focus: its text (or label), tag and outline."""
    found: dict[str, str] = page.evaluate(
        """() => {
            const element = document.activeElement;
            const style = getComputedStyle(element);
            return {
                text: (element.innerText || element.getAttribute('aria-label') || element.id || '').trim(),
                tag: element.tagName.toLowerCase(),
                outlineStyle: style.outlineStyle,
                outlineWidth: style.outlineWidth,
            };
        }"""
    )
    return found


def assert_visible_focus(found: dict[str, str]) -> None:
    assert found["outlineStyle"] not in ("none", ""), found
    assert float(found["outlineWidth"].removesuffix("px")) >= 2, found
