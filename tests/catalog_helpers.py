"""Helpers for the catalog tests: EDC-shaped request bodies, row counts, peers, a counting HTTP server.

Bodies are written the way EDC clients (the Tractus-X Python SDK, EDC's own
samples) write them, so the tests exercise the forms real users send.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import httpx
from fastapi.testclient import TestClient
from jsonschema import Draft201909Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT201909
from sqlalchemy import Engine, text
from sqlmodel import Session

from catalog.jsonld import (
    DCAT_NS,
    DCT_NS,
    DSPACE_CONTEXT_URL,
    EDC_MANAGEMENT_CONTEXT_URL,
    EDC_NS,
    ODRL_NS,
    TESSERA_NS,
)
from identity.keys import public_jwk
from identity.tokens import issue_token
from identity.trustlist import add_member
from tests.conftest import Participant, free_port, private_key_of

ASSETS = "/management/v3/assets"
POLICIES = "/management/v3/policydefinitions"
CONTRACT_DEFINITIONS = "/management/v3/contractdefinitions"
DSP_CATALOG = "/dsp/2025-1/catalog/request"
DSP_DATASETS = "/dsp/2025-1/catalog/datasets"

# The context EDC clients put on assets: EDC's vocabulary plus the prefixes the properties use.
ASSET_CONTEXT: dict[str, str] = {
    "@vocab": EDC_NS,
    "dct": DCT_NS,
    "dcat": DCAT_NS,
    "tessera": TESSERA_NS,
}
EDC_RESPONSE_CONTEXT = {"@vocab": EDC_NS, "edc": EDC_NS, "odrl": ODRL_NS}
CATALOG_REQUEST: dict[str, Any] = {
    "@context": [DSPACE_CONTEXT_URL],
    "@type": "CatalogRequestMessage",
    "filter": [],
}
TABLES = ("asset", "asset_property", "policy_definition", "contract_definition")


def now_millis() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- the Management API


def api_key(participant: Participant) -> str:
    key = participant.settings.management_api_key
    assert key is not None
    return key.get_secret_value()


def management(participant: Participant) -> TestClient:
    """A client of the participant's app that sends its Management API key."""
    client = participant.client()
    client.headers["X-Api-Key"] = api_key(participant)
    return client


def asset_body(asset_id: str, properties: dict[str, Any] | None = None, **members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "@context": ASSET_CONTEXT,
        "@id": asset_id,
        "properties": properties if properties is not None else {},
        "dataAddress": {"type": "HttpData", "baseUrl": f"https://data.example.org/{asset_id}"},
    }
    body.update(members)
    return body


def constraint(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def rule(*constraints: dict[str, Any], action: str = "use") -> dict[str, Any]:
    found: dict[str, Any] = {"action": action}
    if constraints:
        found["constraint"] = list(constraints)
    return found


def policy_body(
    policy_id: str,
    permissions: Sequence[dict[str, Any]] = (),
    prohibitions: Sequence[dict[str, Any]] = (),
    conflict: str | dict[str, str] | None = None,  # a name or {"@id": "odrl:perm"}
) -> dict[str, Any]:
    """A PolicyDefinition in the form of EDC's management context (bare ODRL terms)."""
    policy: dict[str, Any] = {"@type": "Set", "permission": list(permissions)}
    if prohibitions:
        policy["prohibition"] = list(prohibitions)
    if conflict is not None:
        policy["conflict"] = conflict
    return {
        "@context": EDC_MANAGEMENT_CONTEXT_URL,
        "@type": "PolicyDefinition",
        "@id": policy_id,
        "policy": policy,
    }


def contract_definition_body(
    definition_id: str, access: str, contract: str, selector: Sequence[tuple[str, str, Any]] = ()
) -> dict[str, Any]:
    """A ContractDefinition; ``selector`` holds (operandLeft, operator, operandRight) criteria."""
    return {
        "@context": {"@vocab": EDC_NS},
        "@type": "ContractDefinition",
        "@id": definition_id,
        "accessPolicyId": access,
        "contractPolicyId": contract,
        "assetsSelector": [criterion(*c) for c in selector],
    }


def create(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    created: dict[str, Any] = response.json()
    return created


def edc_error(response: httpx.Response, status: int, error_type: str, *needles: str) -> dict[str, Any]:
    """The single EDC error of ``response``, checked: status, type, and a message naming each needle."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    errors = response.json()
    assert isinstance(errors, list), f"EDC errors are an array: {errors!r}"
    assert len(errors) == 1, errors
    error: dict[str, Any] = errors[0]
    assert set(error) == {"message", "type", "path", "invalidValue"}, error
    assert error["type"] == error_type, error
    for needle in needles:
        assert needle in error["message"], f"{error['message']!r} does not name {needle!r}"
    return error


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["@id"] for item in items]


def query(client: TestClient, path: str, **spec: Any) -> httpx.Response:
    response: httpx.Response = client.post(path + "/request", json={"@context": {"@vocab": EDC_NS}, **spec})
    return response


def criterion(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"operandLeft": left, "operator": operator, "operandRight": right}


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in TABLES
        }


# ---------------------------------------------------------------- peers and the DSP catalog


def trust(receiver: Participant, sender: Participant, memberships: Sequence[str] = ()) -> None:
    """Put ``sender`` on ``receiver``'s trust list, vouching for ``memberships``."""
    key = public_jwk(private_key_of(sender).public_key())
    with Session(receiver.core.engine) as session:
        add_member(session, sender.did, sender.settings.dsp_url, key, memberships=memberships)


def bearer(sender: Participant, receiver: Participant) -> dict[str, str]:
    """Headers of one request from ``sender`` to ``receiver`` (a fresh token: each is good once)."""
    return {"Authorization": "Bearer " + issue_token(private_key_of(sender), sender.did, receiver.did)}


def dataset_ids(catalog: dict[str, Any]) -> list[str]:
    return [dataset["@id"] for dataset in catalog.get("dataset", [])]


@cache
def _dsp_registry() -> Registry[Any]:
    root = resources.files("catalog") / "reference" / "dsp-2025-1"
    pairs = []
    for area in ("catalog", "common", "negotiation", "transfer"):
        for entry in (root / area).iterdir():
            if entry.name.endswith("-schema.json"):
                schema = json.loads(entry.read_text(encoding="utf-8"))
                pairs.append(
                    (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT201909))
                )
    return Registry().with_resources(pairs)


def offer_errors(offer: Any) -> list[str]:
    """Errors of a catalog offer against DSP 2025-1's ``Offer`` definition (no target allowed)."""
    ref = "https://w3id.org/dspace/2025/1/negotiation/contract-schema.json#/definitions/Offer"
    validator = Draft201909Validator({"$ref": ref}, registry=_dsp_registry())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(offer)]


# ---------------------------------------------------------------- a server that counts what reaches it


@dataclass
class CountingServer:
    url: str
    hits: list[str] = field(default_factory=list)


@contextmanager
def counting_server(status: int = 200, body: Any = None) -> Iterator[CountingServer]:
    """An HTTP server on 127.0.0.1 answering every request with ``status`` and ``body`` (JSON), counting."""
    port = free_port()
    server_state = CountingServer(f"http://127.0.0.1:{port}")
    payload = json.dumps(body if body is not None else {"@context": {}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            server_state.hits.append(f"{self.command} {self.path}")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
