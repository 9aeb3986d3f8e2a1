"""Helpers for the negotiation tests: real connector pairs, Management API bodies, a recording fake peer.

``Node`` is a participant directory made with the real CLI (``tessera init`` /
``tessera dataspace add``) and served with ``tessera serve``. ``FakePeer`` is
a plain HTTP server standing in for the other connector: it records every
request (with the moment it arrived) and answers as a test tells it to, so a
test can play either role of the DSP by hand. The ``*_of`` helpers validate
every body a connector returns against the DSP 2025-1 schemas.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, select

from catalog.jsonld import DSPACE_CONTEXT_URL, EDC_NS
from catalog.vocabulary import DSP_PROTOCOL
from connector.dsp import schemas
from connector.settings import ConnectorSettings
from contracts.models import AgreementRow, NegotiationRow
from contracts.signing import verify_agreement_signature
from identity.trustlist import add_member
from runtime.database import make_engine
from runtime.settings import load_settings
from tests.catalog_helpers import (
    ASSETS,
    CONTRACT_DEFINITIONS,
    POLICIES,
    asset_body,
    contract_definition_body,
    policy_body,
)
from tests.conftest import CliResult, Participant, free_port
from tests.helpers import Served, cli_env, public_jwk_of, run_parallel, serving

NEGOTIATIONS = "/management/v3/contractnegotiations"
AGREEMENTS = "/management/v3/contractagreements"
DSP_NEGOTIATIONS = "/dsp/2025-1/negotiations"
MANAGEMENT_CONTEXT = "https://w3id.org/edc/connector/management/v0.0.1"
WAIT_SECONDS = 20.0


Client = httpx.Client  # TestClient is one too


# ---------------------------------------------------------------- real connectors


@dataclass
class Node:
    """A connector directory made by the CLI, served on ``port`` by ``tessera serve``."""

    name: str
    data_dir: Path
    port: int

    @cached_property
    def settings(self) -> ConnectorSettings:
        return load_settings(ConnectorSettings, self.data_dir)

    @property
    def did(self) -> str:
        return self.settings.did

    @property
    def dsp_url(self) -> str:
        return self.settings.dsp_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_jwk(self) -> dict[str, str]:
        return public_jwk_of(self.data_dir)

    def api(self) -> httpx.Client:
        key = (self.data_dir / "management-api-key").read_text().strip()
        return httpx.Client(base_url=self.base_url, headers={"X-Api-Key": key}, timeout=20)

    def engine(self) -> Engine:
        return make_engine(self.settings.resolved_database_url)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
    """The real ``tessera`` command in a subprocess (as the ``tessera_cli`` fixture runs it, for
    module-scoped fixtures, which cannot use that function-scoped one)."""
    completed = subprocess.run(
        [sys.executable, "-m", "connector", *args],
        capture_output=True,
        text=True,
        env={**cli_env(), **(env or {})},
        timeout=timeout,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def _add_args(data_dir: Path, member: Node, memberships: Sequence[str]) -> tuple[str, ...]:
    args = ["dataspace", "add", "--dir", str(data_dir), "--did", member.did, "--url", member.dsp_url]
    args += ["--key", str(member.data_dir / "keys" / "public-key.jwk")]
    for membership in memberships:
        args += ["--membership", membership]
    return tuple(args)


def connector_pair(
    tmp_path: Path,
    cli: Callable[..., CliResult],
    consumer_memberships: Sequence[str] = ("transport-operator",),
) -> tuple[Node, Node]:
    """city (the provider) and transit (the consumer), made and introduced to each other by the CLI."""
    city = Node("city", tmp_path / "city", free_port())
    transit = Node("transit", tmp_path / "transit", free_port())
    inits = [
        (("init", "--dir", str(n.data_dir), "--name", n.name, "--port", str(n.port)), None)
        for n in (city, transit)
    ]
    results = run_parallel(cli, inits)
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    adds = [
        (_add_args(city.data_dir, transit, consumer_memberships), None),
        (_add_args(transit.data_dir, city, ()), None),
    ]
    results = run_parallel(cli, adds)
    assert [r.code for r in results] == [0, 0], [r.stderr for r in results]
    return city, transit


@contextmanager
def running(stack: ExitStack, *nodes: Node) -> Iterator[list[Served]]:
    """Serve every node at once; each is terminated when ``stack`` closes, whatever happens."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = [pool.submit(stack.enter_context, serving(n.data_dir, n.port)) for n in nodes]
    yield [future.result() for future in futures]


# ---------------------------------------------------------------- Management API bodies


def publish(
    api: Client,
    asset_id: str,
    *,
    approval: str = "automatic",
    contract: dict[str, Any] | None = None,
    access: dict[str, Any] | None = None,
) -> None:
    """An asset offered under its own definition; ``contract``/``access`` are PolicyDefinition bodies."""
    contract = contract or policy_body(f"contract-{asset_id}")
    access = access or policy_body(f"access-{asset_id}")
    for path, body in ((POLICIES, contract), (POLICIES, access), (ASSETS, asset_body(asset_id))):
        response = api.post(path, json=body)
        assert response.status_code in (200, 409), f"{path}: {response.status_code} {response.text}"
    definition = contract_definition_body(
        f"offer-{asset_id}", access["@id"], contract["@id"], [("id", "=", asset_id)]
    )
    definition["negotiationApproval"] = approval
    response = api.post(CONTRACT_DEFINITIONS, json=definition)
    assert response.status_code == 200, response.text


def catalog_offer(api: Client, provider_did: str, provider_dsp_url: str, asset_id: str) -> dict[str, Any]:
    """The (first) offer for ``asset_id`` in the provider's catalog, asked for over DSP by the consumer."""
    body = {
        "@context": {"@vocab": EDC_NS},
        "@type": "CatalogRequest",
        "counterPartyId": provider_did,
        "counterPartyAddress": provider_dsp_url,
        "protocol": DSP_PROTOCOL,
    }
    response = api.post("/management/v3/catalog/request", json=body)
    assert response.status_code == 200, response.text
    for dataset in response.json().get("dataset", []):
        if dataset["@id"] == asset_id:
            offer: dict[str, Any] = dataset["hasPolicy"][0]
            return offer
    raise AssertionError(f"{asset_id} is not in the catalog: {response.text[:500]}")


def contract_request(
    provider_did: str, provider_dsp_url: str, offer: dict[str, Any], asset_id: str, **members: Any
) -> dict[str, Any]:
    """An EDC v3 ContractRequest for a catalog offer, written as EDC clients write it."""
    return {
        "@context": [MANAGEMENT_CONTEXT],
        "@type": "ContractRequest",
        "counterPartyId": provider_did,
        "counterPartyAddress": provider_dsp_url,
        "protocol": DSP_PROTOCOL,
        "policy": {
            "@context": "http://www.w3.org/ns/odrl.jsonld",
            **{k: v for k, v in offer.items() if k != "@type"},
            "@type": "Offer",
            "target": asset_id,
        },
        **members,
    }


def start_negotiation(api: Client, body: dict[str, Any]) -> str:
    response = api.post(NEGOTIATIONS, json=body)
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["@type"] == "IdResponse", created
    assert isinstance(created["createdAt"], int)
    negotiation_id: str = created["@id"]
    return negotiation_id


def negotiation(api: Client, negotiation_id: str) -> dict[str, Any]:
    response = api.get(f"{NEGOTIATIONS}/{negotiation_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def wait_for(api: Client, negotiation_id: str, *states: str, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
    """The negotiation once it is in one of ``states`` (AssertionError, with its state, if it is not)."""
    deadline = time.monotonic() + timeout
    while True:
        found = negotiation(api, negotiation_id)
        if found["state"] in states:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"negotiation stayed {found['state']} (wanted {states}): {found}")
        time.sleep(0.05)


def wait_until(check: Callable[[], Any], timeout: float = WAIT_SECONDS, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def query_negotiations(api: Client, **criteria: Any) -> list[dict[str, Any]]:
    body = {
        "@context": {"@vocab": EDC_NS},
        "@type": "QuerySpec",
        "filterExpression": [
            {"operandLeft": key, "operator": "=", "operandRight": value} for key, value in criteria.items()
        ],
    }
    response = api.post(f"{NEGOTIATIONS}/request", json=body)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def counterpart(api: Client, consumer_pid: str, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
    """The provider's negotiation for a consumer's pid, once it has arrived."""
    rows = wait_until(
        lambda: query_negotiations(api, consumerPid=consumer_pid), timeout, f"negotiation {consumer_pid}"
    )
    assert len(rows) == 1, rows
    found: dict[str, Any] = rows[0]
    return found


def act(api: Client, negotiation_id: str, action: str, body: Any = None) -> httpx.Response:
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    response: httpx.Response = api.post(f"{NEGOTIATIONS}/{negotiation_id}/{action}", **kwargs)
    return response


def acted(api: Client, negotiation_id: str, action: str, body: Any = None) -> None:
    response = act(api, negotiation_id, action, body)
    assert response.status_code == 204, f"{action}: {response.status_code} {response.text}"


# ---------------------------------------------------------------- what the databases hold


def negotiation_row(engine: Engine, negotiation_id: str) -> dict[str, Any]:
    with Session(engine) as session:
        row = session.get(NegotiationRow, negotiation_id)
        assert row is not None, negotiation_id
        return row.model_dump()


def all_negotiations(engine: Engine) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [row.model_dump() for row in session.exec(select(NegotiationRow).order_by(NegotiationRow.id))]


def agreement_rows(engine: Engine) -> list[AgreementRow]:
    with Session(engine) as session:
        rows = list(session.exec(select(AgreementRow).order_by(AgreementRow.id)))
        for row in rows:
            session.expunge(row)
        return rows


def assert_signed_by_both(
    row: AgreementRow, provider: tuple[str, dict[str, str]], consumer: tuple[str, dict[str, str]]
) -> None:
    """Both signatures on the stored agreement verify with the parties' public keys."""
    agreement = json.loads(row.agreement)
    assert row.provider_signature, row
    assert row.consumer_signature, row
    verify_agreement_signature(agreement, row.provider_signature, provider[1], expected_kid_did=provider[0])
    verify_agreement_signature(agreement, row.consumer_signature, consumer[1], expected_kid_did=consumer[0])


# ---------------------------------------------------------------- DSP bodies, checked


def state_object(response: httpx.Response, status: int = 200, state: str | None = None) -> dict[str, Any]:
    """A ContractNegotiation answer, valid against the DSP schema."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body: dict[str, Any] = response.json()
    assert schemas.errors("contract-negotiation-schema", body) == [], body
    if state is not None:
        assert body["state"] == state, body
    return body


def negotiation_error(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    """A ContractNegotiationError answer with ``status``, valid against the DSP schema, naming each needle."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body: dict[str, Any] = response.json()
    assert body["@type"] == "ContractNegotiationError", body
    assert schemas.errors("contract-negotiation-error-schema", body) == [], body
    assert body["code"] == str(status), body
    reasons = " ".join(str(r) for r in body["reason"])
    for needle in needles:
        assert needle in reasons, f"{reasons!r} does not name {needle!r}"
    return body


SCHEMA_OF_TYPE = {
    "ContractRequestMessage": "contract-request-message-schema",
    "ContractOfferMessage": "contract-offer-message-schema",
    "ContractAgreementMessage": "contract-agreement-message-schema",
    "ContractAgreementVerificationMessage": "contract-agreement-verification-message-schema",
    "ContractNegotiationEventMessage": "contract-negotiation-event-message-schema",
    "ContractNegotiationTerminationMessage": "contract-negotiation-termination-message-schema",
}


def message_errors(message: dict[str, Any]) -> list[str]:
    """Errors of a negotiation message (any kind, by its @type) against its DSP schema."""
    schema = SCHEMA_OF_TYPE.get(str(message.get("@type")))
    if schema is None:
        return [f"unknown message type {message.get('@type')!r}"]
    return schemas.errors(schema, message)


def dsp(message_type: str, **members: Any) -> dict[str, Any]:
    return {"@context": [DSPACE_CONTEXT_URL], "@type": message_type, **members}


# ---------------------------------------------------------------- a fake peer that records what reaches it


@dataclass
class Hit:
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    headers: dict[str, str]
    body: Any


Answer = tuple[int, Any]  # (status, JSON body or None)


@dataclass
class FakePeer:
    """A recording HTTP server on 127.0.0.1; ``respond`` chooses each answer (default: 200, no body)."""

    url: str
    respond: Callable[[Hit], Answer] = field(default=lambda hit: (200, None))
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dsp_url(self) -> str:
        return self.url + "/dsp/2025-1"

    def posted(self, suffix: str = "") -> list[Hit]:
        """The negotiation messages that arrived (the catalog crawler's requests are not counted)."""
        with self.lock:
            return [
                hit
                for hit in self.hits
                if hit.method == "POST" and "/negotiations" in hit.path and hit.path.endswith(suffix)
            ]

    def wait_for(self, suffix: str, count: int = 1, timeout: float = WAIT_SECONDS) -> list[Hit]:
        return list(
            wait_until(
                lambda: (found := self.posted(suffix)) and len(found) >= count and found,
                timeout,
                f"{count} POST(s) to …{suffix}",
            )
        )


@contextmanager
def fake_peer(respond: Callable[[Hit], Answer] | None = None) -> Iterator[FakePeer]:
    port = free_port()
    peer = FakePeer(f"http://127.0.0.1:{port}")
    if respond is not None:
        peer.respond = respond

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            hit = Hit(time.monotonic(), self.command, self.path, dict(self.headers), body)
            with peer.lock:
                peer.hits.append(hit)
            status, answer = peer.respond(hit)
            payload = json.dumps(answer).encode() if answer is not None else b""
            self.send_response(status)
            if payload:
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

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # a burst of deliveries must not be refused by a short listen backlog

    server = Server(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def trust_address(
    receiver: Participant, sender: Participant, dsp_url: str, memberships: Sequence[str] = ()
) -> None:
    """Put ``sender`` on ``receiver``'s trust list with ``dsp_url`` as its address (a fake's, say)."""
    from identity.keys import public_jwk
    from tests.conftest import private_key_of

    key = public_jwk(private_key_of(sender).public_key())
    with Session(receiver.core.engine) as session:
        add_member(session, sender.did, dsp_url, key, memberships=memberships)
