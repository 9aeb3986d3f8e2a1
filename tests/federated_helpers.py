"""Helpers for the federated catalog tests: what members publish, and members that are not Tessera.

* ``asset``, ``policy``, ``contract_definition``: Management API bodies, as an operator sends them.
* ``InProcessDataspace``: connectors as in-process apps that reach each other through an
  httpx transport routing by host:port (a member can be taken "down").
* ``FakeMember``: a tiny ``http.server`` that answers DSP catalog requests with whatever the
  test scripts (no token check: it only has to look like a member from the crawler's side).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlmodel import Session

from connector.app import create_app
from identity.keys import load_private_key, public_jwk
from identity.peer_client import PeerClient
from identity.trustlist import add_member
from runtime.service import ServiceCore
from tests.conftest import Participant

ASSET_CONTEXT = {
    "@vocab": "https://w3id.org/edc/v0.0.1/ns/",
    "dct": "http://purl.org/dc/terms/",
    "dcat": "http://www.w3.org/ns/dcat#",
    "tessera": "https://w3id.org/tessera/v1/ns/",
}
EDC_CONTEXT = {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"}
DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
TRAN = "http://publications.europa.eu/resource/authority/data-theme/TRAN"
ENVI = "http://publications.europa.eu/resource/authority/data-theme/ENVI"
CC_BY = "https://creativecommons.org/licenses/by/4.0/"


def asset(
    asset_id: str,
    title: str,
    *,
    description: str = "",
    keywords: tuple[str, ...] = (),
    themes: tuple[str, ...] = (TRAN,),
    publisher: str = "Transit Authority",
    license: str = CC_BY,
    personal: bool = False,
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "dct:title": title,
        "dcat:keyword": list(keywords),
        "dcat:theme": [{"@id": t} for t in themes],
        "dct:publisher": publisher,
        "dct:license": license,
        "dcat:mediaType": "text/csv",
    }
    if description:
        properties["dct:description"] = description
    if personal:
        properties.update(
            {
                "tessera:personal": True,
                "tessera:subjectField": "card_id",
                "tessera:consentPurpose": "planning",
            }
        )
    return {
        "@context": ASSET_CONTEXT,
        "@id": asset_id,
        "properties": properties,
        "dataAddress": {"type": "HttpData", "baseUrl": f"https://data.example.org/{asset_id}"},
    }


def policy(policy_id: str, only: str | None = None) -> dict[str, Any]:
    """A use policy; with ``only``, admitting that participant DID alone."""
    permission: dict[str, Any] = {"action": "use"}
    if only is not None:
        permission["constraint"] = [{"leftOperand": "participantId", "operator": "eq", "rightOperand": only}]
    return {
        "@context": ["https://w3id.org/edc/connector/management/v0.0.1"],
        "@type": "PolicyDefinition",
        "@id": policy_id,
        "policy": {"@type": "Set", "permission": [permission]},
    }


def contract_definition(definition_id: str, access_policy: str, asset_ids: list[str]) -> dict[str, Any]:
    return {
        "@context": EDC_CONTEXT,
        "@id": definition_id,
        "accessPolicyId": access_policy,
        "contractPolicyId": "open",
        "assetsSelector": [{"operandLeft": "id", "operator": "in", "operandRight": asset_ids}],
    }


def publish(client: TestClient | httpx.Client, api_key: str, paths_and_bodies: list[tuple[str, Any]]) -> None:
    for path, body in paths_and_bodies:
        response = client.post(f"/management/v3/{path}", json=body, headers={"X-Api-Key": api_key})
        assert response.status_code == 200, response.text


def api_key(participant: Participant) -> str:
    key = participant.settings.management_api_key
    assert key is not None
    return key.get_secret_value()


def trust_each_other(participants: list[Participant]) -> None:
    for receiver in participants:
        with Session(receiver.core.engine) as session:
            for other in participants:
                if other is not receiver:
                    jwk = public_jwk(load_private_key(other.settings.resolved_private_key_file).public_key())
                    add_member(session, other.did, other.settings.dsp_url, jwk)


class Router(httpx.AsyncBaseTransport):
    """Sends each request to the in-process app at its host:port; other addresses refuse."""

    def __init__(self) -> None:
        self.apps: dict[str, httpx.ASGITransport] = {}
        self.down: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        address = request.url.netloc.decode()
        transport = self.apps.get(address)
        if transport is None or address in self.down:
            raise httpx.ConnectError(f"connection to {address} refused", request=request)
        return await transport.handle_async_request(request)


@dataclass
class InProcessDataspace:
    members: dict[str, Participant]
    router: Router = field(default_factory=Router)

    def __post_init__(self) -> None:
        for participant in self.members.values():
            self.router.apps[self.address(participant.settings.name)] = httpx.ASGITransport(
                app=create_app(participant.core)
            )

    def address(self, name: str) -> str:
        return httpx.URL(self.members[name].settings.public_url).netloc.decode()

    def peer_client(self, name: str) -> PeerClient:
        """``name``'s identity, calling the others through the router."""
        core = self.members[name].core
        return PeerClient(core.settings.did, core.key, transport=self.router)

    def core_for(self, name: str) -> ServiceCore:
        """``name``'s core with a peer client that reaches the other in-process apps."""
        return replace(self.members[name].core, peer_client=self.peer_client(name))

    def take_down(self, name: str) -> None:
        self.router.down.add(self.address(name))


# ---------------------------------------------------------------- a member that only pretends


@dataclass
class Scripted:
    status: int
    body: Any
    link: str | None = None


@dataclass
class FakeMember:
    """Answers ``POST …/catalog/request?offset=N`` from ``pages[N]``; records every request."""

    port: int
    pages: dict[int, Scripted] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def did(self) -> str:
        return f"did:web:127.0.0.1%3A{self.port}"

    @property
    def dsp_url(self) -> str:
        return f"{self.base_url}/dsp/2025-1"


def dsp_catalog(did: str, datasets: list[dict[str, Any]]) -> dict[str, Any]:
    catalog: dict[str, Any] = {
        "@context": [DSP_CONTEXT],
        "@id": f"urn:catalog:{did}",
        "@type": "Catalog",
        "participantId": did,
    }
    if datasets:
        catalog["dataset"] = datasets
    return catalog


def dsp_dataset(dataset_id: str, title: str, **extra: Any) -> dict[str, Any]:
    return {
        "@id": dataset_id,
        "@type": "Dataset",
        "dct:title": title,
        "hasPolicy": [{"@id": f"offer-{dataset_id}", "@type": "Offer", "permission": [{"action": "use"}]}],
        "distribution": [{"@type": "Distribution", "format": "HttpData-PULL", "accessService": "urn:x"}],
        **extra,
    }


@contextmanager
def fake_member() -> Iterator[FakeMember]:
    """A FakeMember listening on 127.0.0.1 until the block ends."""
    holder: list[FakeMember] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            member = holder[0]
            member.requests.append(self.path)
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            offset = int(httpx.URL(self.path).params.get("offset", "0"))
            scripted = member.pages.get(offset, Scripted(404, {"error": "no such page"}))
            payload = json.dumps(scripted.body).encode()
            self.send_response(scripted.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if scripted.link:
                self.send_header("Link", scripted.link)
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self.do_POST()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(FakeMember(server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
