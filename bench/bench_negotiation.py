"""Complete contract negotiations per second between two connectors on loopback.

Two real connectors run as ``tessera serve`` subprocesses on free ports of
127.0.0.1, each in its own participant directory (made as ``tessera init``
makes it, migrated with Alembic) and each on the other's trust list. The
provider publishes one asset under an open access policy and an open
contract policy, with a contract definition that approves negotiations by
itself. The consumer's Management API is asked for the provider's catalog
once; then every negotiation is ``POST /management/v3/contractnegotiations``
with that catalog offer, and runs the whole DSP 2025-1 exchange: request,
signed agreement, verification with the consumer's countersignature,
finalized event, each message delivered by the connectors' outbox workers
with a fresh peer token and persisted on both sides.

A negotiation counts when the consumer has it FINALIZED: one thread reads the
consumer's database every 20 ms (read-only: ``SELECT id, state`` for the
negotiations in flight), so the connector does no work for the benchmark's
watching, and a latency is "request sent" to "FINALIZED seen", with up to one
read interval of slack. Rates are measured with 8 negotiations in flight at a
time and one at a time; the connectors' CPU time (/proc) and their own request
durations (their JSON request logs) are taken over the same runs. A further run
with 8 in flight watches the way a Management API client does instead, by
polling ``POST /contractnegotiations/request`` (``id in [the negotiations in
flight]``) every 20 ms; the connector answers those polls, and its rate and CPU
are reported beside the others. At the end every negotiation is checked in both
databases: FINALIZED on both sides, its agreement in ``contract_agreement``
on both with the provider's and the consumer's signature, each verifying
with the signer's public key. One that is not (or did not end within 30 s)
is reported, with what was wrong, against a second target; warnings and
errors in the connectors' logs (retries, terminations) are counted.

Baseline, measured in the same run against the same two servers: the raw
cost of the same number of HTTP round trips. One negotiation is 5 requests
(the Management API call, then request, agreement, verification, finalized
event); the baseline POSTs a JSON body the size of an agreement message to a
route that does not exist (404, through the same middleware and request
log), 3 of every 5 to the consumer and 2 to the provider as in a
negotiation, with ``httpx`` clients at the same concurrency. Its rate is
printed divided by 5.

The same runs on PostgreSQL, both connectors on their own throwaway
database, where a server answers at ``TESSERA_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``).

Targets: at least 100 complete negotiations per second (8 in flight) on
this machine, on each database; every negotiation complete on both sides.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from bench.common import BenchResult, Distribution, Figure, Measure, Target, summarise
from bench.processes import (
    environment_for,
    free_port,
    postgres_admin_url,
    postgres_unreachable,
    server_environment,
    serving,
    throwaway_postgres,
)
from catalog.jsonld import EDC_MANAGEMENT_CONTEXT_URL, EDC_NS
from catalog.queryspec import table_of
from catalog.vocabulary import DSP_PROTOCOL
from connector.dsp import negotiation_messages as wire
from connector.settings import ConnectorSettings
from contracts.models import AgreementRow, NegotiationRow
from contracts.signing import SignatureError, sign_agreement, verify_agreement_signature
from identity.did import KEY_FRAGMENT
from identity.keys import load_private_key
from identity.trustlist import add_member
from runtime.database import make_engine, redact_url
from runtime.participant import PUBLIC_KEY_FILE, init_participant
from runtime.service import prepare_database
from runtime.settings import DSP_PATH, load_settings

NAME = "negotiation"
TITLE = "complete contract negotiations (request to FINALIZED) between two connectors on loopback"
TARGET_PER_SECOND = 100.0
CONCURRENCY = 8
ROUND_TRIPS = 5  # the Management API call, then request, agreement, verification, finalized event
CONSUMER_TRIPS = (0, 2, 4)  # of the 5: management call, agreement, finalized event reach the consumer
POLL_SECONDS = 0.02
WAIT_SECONDS = 30.0  # for one negotiation to end; after that it counts as not complete
CATCH_UP_SECONDS = 10.0  # at the end, for the provider to record the last FINALIZED events
ROOT = Path(__file__).resolve().parent.parent
ASSET_ID = "bench-dataset"
NEGOTIATIONS = "/management/v3/contractnegotiations"
BASELINE_PATH = f"{DSP_PATH}/bench-baseline-no-such-route"
ENDED = ("FINALIZED", "TERMINATED")
DATABASE, MANAGEMENT_API = "database", "Management API"  # how the benchmark sees negotiations end
MS, PER_S, MS_CPU, COUNT = "ms", "/s", "ms CPU", "negotiations"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_NEGOTIATION = table_of(NegotiationRow).c


# ---------------------------------------------------------------------------- participants


@dataclass(frozen=True)
class Node:
    """A connector's participant directory, its database and its request log."""

    name: str
    settings: ConnectorSettings
    database_url: str | None  # None: SQLite in the participant directory
    log_path: Path

    @property
    def base_url(self) -> str:
        return self.settings.public_url

    @property
    def did(self) -> str:
        return self.settings.did

    @property
    def dsp_url(self) -> str:
        return self.settings.dsp_url

    @property
    def public_jwk(self) -> dict[str, str]:
        jwk: dict[str, str] = json.loads((self.settings.data_dir / PUBLIC_KEY_FILE).read_text("utf-8"))
        return jwk

    def api(self, timeout: float = 30.0) -> httpx.Client:
        key = self.settings.management_api_key
        assert key is not None
        return httpx.Client(
            base_url=self.base_url, headers={"X-Api-Key": key.get_secret_value()}, timeout=timeout
        )

    def engine(self) -> Engine:
        return make_engine(self.settings.resolved_database_url)


def _make_node(root: Path, name: str, database_url: str | None) -> Node:
    data_dir = root / name
    init_participant(data_dir, name, free_port())
    with environment_for(database_url):
        settings = load_settings(ConnectorSettings, data_dir)
    prepare_database(settings, "connector")
    return Node(name, settings, database_url, root / f"{name}.log")


def _introduce(a: Node, b: Node) -> None:
    """Each on the other's trust list, as ``tessera dataspace add`` puts it there."""
    for holder, member in ((a, b), (b, a)):
        engine = holder.engine()
        try:
            with Session(engine) as session:
                add_member(session, member.did, member.dsp_url, member.public_jwk)
        finally:
            engine.dispose()


def _server_environment(node: Node) -> dict[str, str]:
    # No federated-catalog crawl in the middle of a measurement (it would be one catalog request).
    settings = {"TESSERA_CATALOG_CRAWL_INTERVAL_SECONDS": "0", "TESSERA_LOG_WITNESS_INTERVAL_SECONDS": "0"}
    if node.database_url is not None:
        settings["TESSERA_DATABASE_URL"] = node.database_url
    return server_environment(**settings)


def _serving(node: Node) -> AbstractContextManager[subprocess.Popen[bytes]]:
    return serving(node.name, node.settings.data_dir, node.base_url, node.log_path, _server_environment(node))


# ---------------------------------------------------------------------------- the offer


def _created(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = client.post(path, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")


def _publish(provider: Node) -> None:
    """One asset, open access and contract policies, a definition that approves by itself."""
    open_policy = {"@type": "Set", "permission": [{"action": "use"}]}
    with provider.api() as client:
        for policy_id in ("open-access", "open-contract"):
            _created(
                client,
                "/management/v3/policydefinitions",
                {"@context": EDC_MANAGEMENT_CONTEXT_URL, "@type": "PolicyDefinition", "@id": policy_id,
                 "policy": open_policy},
            )  # fmt: skip
        _created(
            client,
            "/management/v3/assets",
            {
                "@context": {"@vocab": EDC_NS, "dct": "http://purl.org/dc/terms/"},
                "@id": ASSET_ID,
                "properties": {"dct:title": "Benchmark dataset"},
                "dataAddress": {"type": "HttpData", "baseUrl": f"https://data.example.org/{ASSET_ID}"},
            },
        )
        _created(
            client,
            "/management/v3/contractdefinitions",
            {
                "@context": {"@vocab": EDC_NS},
                "@id": f"offer-{ASSET_ID}",
                "accessPolicyId": "open-access",
                "contractPolicyId": "open-contract",
                "assetsSelector": [{"operandLeft": "id", "operator": "=", "operandRight": ASSET_ID}],
                "negotiationApproval": "automatic",
            },
        )


def _contract_request(consumer: Node, provider: Node) -> dict[str, Any]:
    """The consumer asks the provider's catalog (over DSP) and makes an EDC ContractRequest of its offer."""
    catalog_request = {
        "@context": {"@vocab": EDC_NS},
        "@type": "CatalogRequest",
        "counterPartyId": provider.did,
        "counterPartyAddress": provider.dsp_url,
        "protocol": DSP_PROTOCOL,
    }
    with consumer.api() as client:
        response = client.post("/management/v3/catalog/request", json=catalog_request)
    if response.status_code != 200:
        raise RuntimeError(f"catalog request answered {response.status_code}: {response.text[:300]}")
    offers = [d["hasPolicy"][0] for d in response.json().get("dataset", []) if d.get("@id") == ASSET_ID]
    if not offers:
        raise RuntimeError(f"{ASSET_ID} is not in the provider's catalog: {response.text[:300]}")
    return {
        "@context": [EDC_MANAGEMENT_CONTEXT_URL],
        "@type": "ContractRequest",
        "counterPartyId": provider.did,
        "counterPartyAddress": provider.dsp_url,
        "protocol": DSP_PROTOCOL,
        "policy": {
            "@context": "http://www.w3.org/ns/odrl.jsonld",
            **{k: v for k, v in offers[0].items() if k != "@type"},
            "@type": "Offer",
            "target": ASSET_ID,
        },
    }


def _baseline_body(provider: Node) -> bytes:
    """A JSON body the size of the largest negotiation message: a signed ContractAgreementMessage."""
    key = load_private_key(provider.settings.resolved_private_key_file)
    agreement = {
        "@id": f"urn:uuid:{uuid.uuid4()}",
        "@type": "Agreement",
        "target": ASSET_ID,
        "assigner": provider.did,
        "assignee": "did:web:127.0.0.1%3A1",
        "timestamp": "2026-11-21T12:00:00Z",
        "permission": [{"action": "use"}],
    }
    signature = sign_agreement(agreement, key, f"{provider.did}#{KEY_FRAGMENT}")
    message = wire.agreement_message(
        f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}", agreement, signature
    )
    return json.dumps(message).encode()


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Timed:
    """Per-operation latencies (ms), the wall time of the whole run, the servers' CPU during it."""

    latencies_ms: list[float]
    wall_s: float
    server_cpu_s: float

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def per_second(self) -> float:
        return self.count / self.wall_s

    @property
    def cpu_ms_per_op(self) -> float:
        return self.server_cpu_s * 1000 / max(1, self.count)

    def stat(self, name: str) -> float:
        return float(summarise(self.latencies_ms)[name])


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def _in_threads(count: int, body: Callable[[int, threading.Barrier], None]) -> float:
    """Run ``body(index, start)`` on ``count`` threads released together; the wall seconds from release."""
    errors: list[BaseException] = []
    start = threading.Barrier(count + 1)

    def run(index: int) -> None:
        try:
            body(index, start)
        except BaseException as exc:  # reported by the calling thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    with suppress(threading.BrokenBarrierError):
        start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    return wall


class Watcher:
    """One thread looks every ``POLL_SECONDS`` for the negotiations in flight that ended.

    ``via`` is how: ``DATABASE`` reads the consumer's database (the connector does nothing for it);
    ``MANAGEMENT_API`` polls the consumer's Management API as a client would (the connector answers).
    """

    def __init__(self, consumer: Node, via: str) -> None:
        self._consumer = consumer
        self._via = via
        self._lock = threading.Lock()
        self._waiting: dict[str, threading.Event] = {}
        self.ended: dict[str, tuple[float, str]] = {}  # id -> (perf_counter when seen ended, state)
        self.polls = 0
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, negotiation_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            if self._failure is not None:
                raise RuntimeError("the watcher failed") from self._failure
            self._waiting[negotiation_id] = event
        return event

    def forget(self, negotiation_id: str) -> None:
        with self._lock:
            self._waiting.pop(negotiation_id, None)

    @staticmethod
    def _query_api(client: httpx.Client, ids: list[str]) -> list[tuple[str, str]]:
        body = {
            "@context": {"@vocab": EDC_NS},
            "@type": "QuerySpec",
            "limit": len(ids),
            "filterExpression": [
                {"operandLeft": "id", "operator": "in", "operandRight": ids},
                {"operandLeft": "state", "operator": "in", "operandRight": list(ENDED)},
            ],
        }
        response = client.post(f"{NEGOTIATIONS}/request", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"polling answered {response.status_code}: {response.text[:300]}")
        return [(item["@id"], item["state"]) for item in response.json()]

    @staticmethod
    def _query_database(engine: Engine, ids: list[str]) -> list[tuple[str, str]]:
        statement = sa_select(_NEGOTIATION.id, _NEGOTIATION.state).where(
            _NEGOTIATION.id.in_(ids), _NEGOTIATION.state.in_(ENDED)
        )
        with engine.connect() as connection:
            return [(row.id, row.state) for row in connection.execute(statement)]

    def _run(self) -> None:
        try:
            with ExitStack() as stack:
                if self._via == MANAGEMENT_API:
                    client = stack.enter_context(self._consumer.api())
                    query: Callable[[list[str]], list[tuple[str, str]]] = partial(self._query_api, client)
                else:
                    engine = self._consumer.engine()
                    stack.callback(engine.dispose)
                    query = partial(self._query_database, engine)
                tick = time.perf_counter()
                while not self._stop.is_set():
                    with self._lock:
                        ids = list(self._waiting)
                    if ids:
                        found = query(ids)
                        seen = time.perf_counter()
                        self.polls += 1
                        with self._lock:
                            for negotiation_id, state in found:
                                self.ended[negotiation_id] = (seen, state)
                                self._waiting.pop(negotiation_id).set()
                    tick += POLL_SECONDS
                    delay = tick - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
                    else:
                        tick = time.perf_counter()
        except BaseException as exc:
            with self._lock:
                self._failure = exc
                for event in self._waiting.values():
                    event.set()  # wake the drivers; they find no end recorded and report the failure


@dataclass
class Negotiated:
    """One run: latencies of the negotiations that reached FINALIZED, how every one ended."""

    timed: Timed
    ids: list[str]
    states: dict[str, str]  # id -> FINALIZED, TERMINATED, or "still <state>" when it did not end in time
    polls: int


def _negotiate(
    consumer: Node,
    request: dict[str, Any],
    count: int,
    concurrency: int,
    pids: Sequence[int],
    via: str = DATABASE,
) -> Negotiated:
    """``count`` negotiations, ``concurrency`` in flight at a time, each from POST to FINALIZED seen
    (``via`` the consumer's database or its Management API)."""
    lock = threading.Lock()
    issued = [0]
    started: dict[str, float] = {}
    unfinished: dict[str, str] = {}
    with Watcher(consumer, via) as watcher:

        def driver(_: int, start: threading.Barrier) -> None:
            with consumer.api() as client:
                start.wait()
                while True:
                    with lock:
                        if issued[0] >= count:
                            return
                        issued[0] += 1
                    began = time.perf_counter()
                    response = client.post(NEGOTIATIONS, json=request)
                    if response.status_code != 200:
                        raise RuntimeError(
                            f"starting a negotiation: {response.status_code} {response.text[:300]}"
                        )
                    negotiation_id: str = response.json()["@id"]
                    with lock:
                        started[negotiation_id] = began
                    if not watcher.watch(negotiation_id).wait(WAIT_SECONDS):
                        watcher.forget(negotiation_id)  # counted as not complete; the run goes on
                        found = client.get(f"{NEGOTIATIONS}/{negotiation_id}").json()
                        with lock:
                            unfinished[negotiation_id] = f"still {found.get('state')}"
                    elif negotiation_id not in watcher.ended:
                        raise RuntimeError(f"negotiation {negotiation_id}: the watcher failed")

        cpu_before = _cpu_seconds(pids)
        wall = _in_threads(concurrency, driver)
        cpu = _cpu_seconds(pids) - cpu_before
        ended = dict(watcher.ended)
        polls = watcher.polls
    ids = list(started)
    states = {i: ended[i][1] if i in ended else unfinished[i] for i in ids}
    latencies = [(ended[i][0] - started[i]) * 1000 for i in ids if states[i] == "FINALIZED"]
    return Negotiated(Timed(latencies, wall, cpu), ids, states, polls)


def _baseline(
    consumer: Node, provider: Node, body: bytes, groups: int, concurrency: int, pids: Sequence[int]
) -> Timed:
    """``groups`` times 5 POSTs to a missing route (3 to the consumer, 2 to the provider), each group timed."""
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    headers = {"Content-Type": "application/json"}
    urls = [
        (consumer if trip in CONSUMER_TRIPS else provider).base_url + BASELINE_PATH
        for trip in range(ROUND_TRIPS)
    ]

    def driver(_: int, start: threading.Barrier) -> None:
        with httpx.Client(timeout=30.0) as to_consumer, httpx.Client(timeout=30.0) as to_provider:
            clients = [to_consumer if trip in CONSUMER_TRIPS else to_provider for trip in range(ROUND_TRIPS)]
            start.wait()
            while True:
                with lock:
                    if issued[0] >= groups:
                        return
                    issued[0] += 1
                began = time.perf_counter()
                for client, url in zip(clients, urls, strict=True):
                    if client.post(url, content=body, headers=headers).status_code != 404:
                        raise RuntimeError(f"POST {url} did not answer 404")
                elapsed = (time.perf_counter() - began) * 1000
                with lock:
                    latencies.append(elapsed)

    cpu_before = _cpu_seconds(pids)
    wall = _in_threads(concurrency, driver)
    return Timed(latencies, wall, _cpu_seconds(pids) - cpu_before)


# ---------------------------------------------------------------------------- the request logs


@dataclass
class ServerTimes:
    """Durations (ms) the connectors logged for the requests of one run, by what they were."""

    by_kind: dict[str, list[float]] = field(default_factory=dict)

    def total(self, kinds: Sequence[str]) -> float:
        return sum(sum(self.by_kind.get(kind, [])) for kind in kinds)

    def add(self, kind: str, duration: float) -> None:
        self.by_kind.setdefault(kind, []).append(duration)


NEGOTIATION_KINDS = (
    "consumer: POST contractnegotiations (management)",
    "provider: ContractRequestMessage",
    "consumer: ContractAgreementMessage",
    "provider: ContractAgreementVerificationMessage",
    "consumer: finalized event",
)


def _kind_of(role: str, method: str, path: str) -> str:
    if path == BASELINE_PATH:
        return f"{role}: baseline 404"
    if role == "consumer" and method == "POST" and path == NEGOTIATIONS:
        return NEGOTIATION_KINDS[0]
    if role == "consumer" and path == f"{NEGOTIATIONS}/request":
        return "consumer: polling"
    if path.startswith(f"{DSP_PATH}/negotiations/"):
        if role == "provider" and path == f"{DSP_PATH}/negotiations/request":
            return NEGOTIATION_KINDS[1]
        if path.endswith("/agreement/verification"):
            return NEGOTIATION_KINDS[3]
        if path.endswith("/agreement"):
            return NEGOTIATION_KINDS[2]
        if path.endswith("/events"):
            return NEGOTIATION_KINDS[4]
    return f"{role}: {method} {path}"


@contextmanager
def _server_times(nodes: Sequence[Node], into: ServerTimes) -> Iterator[None]:
    """The request durations the nodes logged for requests made in the block."""
    offsets = [node.log_path.stat().st_size for node in nodes]
    yield
    time.sleep(0.2)  # a line is written before its response is sent; let the last ones land
    for node, offset in zip(nodes, offsets, strict=True):
        with node.log_path.open("rb") as log:
            log.seek(offset)
            for line in log:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("event") == "request":
                    kind = _kind_of(node.name, str(entry.get("method")), str(entry.get("path")))
                    into.add(kind, float(entry["duration_ms"]))


def _warnings(node: Node) -> dict[str, int]:
    """Warnings and errors in the node's log, counted by event (retries, terminations, exceptions)."""
    counts: dict[str, int] = {}
    with node.log_path.open("rb") as log:
        for line in log:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("warning", "error", "critical"):
                event = str(entry.get("event"))[:120]
                counts[event] = counts.get(event, 0) + 1
    return counts


# ---------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Checked:
    """What both databases hold for the negotiations started, checked one by one."""

    started: int
    complete: int  # FINALIZED on both sides, the agreement on both with both signatures verifying
    finalized: dict[str, int]  # node name -> FINALIZED negotiations
    signed: dict[str, int]  # node name -> contract_agreement rows with both signatures
    verified: int  # signatures that verified with the signer's public key
    problems: dict[str, list[str]]  # what was wrong -> the negotiations (consumer's ids) it was wrong with

    @property
    def incomplete(self) -> int:
        return self.started - self.complete


def _rows(engine: Engine) -> tuple[list[NegotiationRow], list[AgreementRow]]:
    with Session(engine) as session:
        negotiations = list(session.exec(select(NegotiationRow)))
        agreements = list(session.exec(select(AgreementRow)))
        for row in (*negotiations, *agreements):
            session.expunge(row)
    return negotiations, agreements


def _finalized_count(engine: Engine) -> int:
    with Session(engine) as session:
        statement = (
            select(func.count()).select_from(NegotiationRow).where(col(NegotiationRow.state) == "FINALIZED")
        )
        return int(session.exec(statement).one())


def _both_signed_count(engine: Engine) -> int:
    """contract_agreement rows with provider_signature and consumer_signature both set."""
    with Session(engine) as session:
        statement = (
            select(func.count())
            .select_from(AgreementRow)
            .where(
                col(AgreementRow.provider_signature).is_not(None),
                col(AgreementRow.consumer_signature).is_not(None),
            )
        )
        return int(session.exec(statement).one())


def _signature_problem(agreement: AgreementRow, provider: Node, consumer: Node) -> str | None:
    """None when both signatures are there and verify with the parties' public keys."""
    if agreement.provider_signature is None or agreement.consumer_signature is None:
        return "a signature is missing"
    body = json.loads(agreement.agreement)
    try:
        verify_agreement_signature(
            body, agreement.provider_signature, provider.public_jwk, expected_kid_did=provider.did
        )
        verify_agreement_signature(
            body, agreement.consumer_signature, consumer.public_jwk, expected_kid_did=consumer.did
        )
    except SignatureError as exc:
        return f"a signature does not verify: {exc}"
    return None


def _check_one(
    ours: NegotiationRow | None,
    theirs: list[NegotiationRow],
    agreements: dict[str, dict[str, AgreementRow]],
    provider: Node,
    consumer: Node,
) -> list[str]:
    """What is wrong with one negotiation on either side (nothing: it is complete)."""
    wrong: list[str] = []
    if ours is None:
        return ["the consumer has no such negotiation"]
    if ours.state != "FINALIZED":
        wrong.append(f"consumer: {ours.state} ({(ours.error_detail or '')[:300]})")
    if len(theirs) != 1:
        wrong.append(f"the provider holds {len(theirs)} negotiations for its consumerPid")
    wrong += [
        f"provider: {row.state} ({(row.error_detail or '')[:300]})"
        for row in theirs
        if row.state != "FINALIZED"
    ]
    if wrong:
        return wrong
    agreement_id = ours.agreement_id
    if agreement_id is None or theirs[0].agreement_id != agreement_id:
        return ["the two sides do not name one agreement"]
    for side in (consumer.name, provider.name):
        agreement = agreements[side].get(agreement_id)
        problem = (
            "the agreement is missing"
            if agreement is None
            else _signature_problem(agreement, provider, consumer)
        )
        if problem is not None:
            wrong.append(f"{side}: {problem}")
    return wrong


def _check(provider: Node, consumer: Node, consumer_ids: Sequence[str]) -> Checked:
    """Each negotiation started: FINALIZED on both sides, its agreement on both with both signatures valid."""
    engines = {node.name: node.engine() for node in (provider, consumer)}
    try:
        deadline = time.monotonic() + CATCH_UP_SECONDS
        target = _finalized_count(engines[consumer.name])
        while _finalized_count(engines[provider.name]) < target and time.monotonic() < deadline:
            time.sleep(0.05)  # the provider records FINALIZED once the consumer has accepted the event
        rows = {name: _rows(engine) for name, engine in engines.items()}
        signed = {name: _both_signed_count(engine) for name, engine in engines.items()}
    finally:
        for engine in engines.values():
            engine.dispose()
    consumer_rows = {row.id: row for row in rows[consumer.name][0]}
    provider_rows: dict[str | None, list[NegotiationRow]] = {}
    for row in rows[provider.name][0]:
        provider_rows.setdefault(row.consumer_pid, []).append(row)
    agreements = {name: {a.id: a for a in rows[name][1]} for name in engines}
    problems: dict[str, list[str]] = {}
    for negotiation_id in consumer_ids:
        ours = consumer_rows.get(negotiation_id)
        theirs = provider_rows.get(ours.consumer_pid, []) if ours else []
        for what in _check_one(ours, theirs, agreements, provider, consumer):
            problems.setdefault(what, []).append(negotiation_id)
    failed = {i for ids in problems.values() for i in ids}
    complete = len(consumer_ids) - len(failed)
    finalized = {name: sum(1 for row in rows[name][0] if row.state == "FINALIZED") for name in engines}
    return Checked(len(consumer_ids), complete, finalized, signed, 4 * complete, problems)


# ---------------------------------------------------------------------------- one database kind


@dataclass(frozen=True)
class Plan:
    concurrent: int
    sequential: int
    warm_up: int
    polled: int  # with CONCURRENCY in flight, watched through the Management API


@dataclass
class KindRun:
    kind: str
    concurrent: Negotiated
    sequential: Negotiated
    polled: Negotiated  # 8 in flight, watched through the Management API
    baseline_concurrent: Timed
    baseline_sequential: Timed
    server_concurrent: ServerTimes
    server_baseline: ServerTimes
    checked: Checked
    client_cpu_s: float
    body_bytes: int
    log_events: dict[str, int]  # warnings and errors the connectors logged, by node and event


def _run_kind(root: Path, kind: str, database_urls: tuple[str | None, str | None], plan: Plan) -> KindRun:
    provider = _make_node(root, "provider", database_urls[0])
    consumer = _make_node(root, "consumer", database_urls[1])
    _introduce(provider, consumer)
    with ExitStack() as stack:
        processes = [stack.enter_context(_serving(node)) for node in (provider, consumer)]
        pids = [process.pid for process in processes]
        _publish(provider)
        request = _contract_request(consumer, provider)
        body = _baseline_body(provider)
        ids: list[str] = []

        warm = _negotiate(consumer, request, plan.warm_up, CONCURRENCY, pids)
        ids += warm.ids
        _baseline(consumer, provider, body, plan.warm_up, CONCURRENCY, pids)

        client_cpu = time.process_time()
        server_baseline, server_concurrent = ServerTimes(), ServerTimes()
        with _server_times((provider, consumer), server_baseline):
            baseline_concurrent = _baseline(consumer, provider, body, plan.concurrent, CONCURRENCY, pids)
        with _server_times((provider, consumer), server_concurrent):
            concurrent = _negotiate(consumer, request, plan.concurrent, CONCURRENCY, pids)
        ids += concurrent.ids
        baseline_sequential = _baseline(consumer, provider, body, plan.sequential, 1, pids)
        sequential = _negotiate(consumer, request, plan.sequential, 1, pids)
        ids += sequential.ids
        polled = _negotiate(consumer, request, plan.polled, CONCURRENCY, pids, via=MANAGEMENT_API)
        ids += polled.ids
        client_cpu = time.process_time() - client_cpu

        checked = _check(provider, consumer, ids)
    log_events = {
        f"{node.name}: {event}": count
        for node in (provider, consumer)
        for event, count in _warnings(node).items()
    }
    return KindRun(
        kind,
        concurrent,
        sequential,
        polled,
        baseline_concurrent,
        baseline_sequential,
        server_concurrent,
        server_baseline,
        checked,
        client_cpu,
        len(body),
        log_events,
    )


# ---------------------------------------------------------------------------- PostgreSQL


# ---------------------------------------------------------------------------- reporting


def _figures(run: KindRun) -> list[Figure]:
    k = run.kind
    c, s, p = run.concurrent.timed, run.sequential.timed, run.polled.timed
    bc, bs = run.baseline_concurrent, run.baseline_sequential
    trips = f"{ROUND_TRIPS} HTTP round trips"
    in_flight = f"{CONCURRENCY} in flight"
    server_neg = run.server_concurrent.total(NEGOTIATION_KINDS) / max(1, c.count)
    server_base = run.server_baseline.total(("consumer: baseline 404", "provider: baseline 404")) / bc.count
    return [
        Figure(
            f"negotiations per second, {in_flight} ({k})",
            c.per_second,
            PER_S,
            Measure(f"HTTP round trips per second / {ROUND_TRIPS}, {CONCURRENCY} concurrent clients", bc.per_second, PER_S),
        ),
        Figure(
            f"negotiations per second, {in_flight}, watched by polling the Management API ({k})",
            p.per_second,
            PER_S,
            Measure(f"HTTP round trips per second / {ROUND_TRIPS}, {CONCURRENCY} concurrent clients", bc.per_second, PER_S),
        ),
        Figure(
            f"negotiations per second, one at a time ({k})",
            s.per_second,
            PER_S,
            Measure(f"HTTP round trips per second / {ROUND_TRIPS}, one client", bs.per_second, PER_S),
        ),
        Figure(f"negotiation latency p50, {in_flight} ({k})", c.stat("p50"), MS, Measure(f"{trips} p50, {CONCURRENCY} concurrent clients", bc.stat("p50"), MS)),
        Figure(f"negotiation latency p99, {in_flight} ({k})", c.stat("p99"), MS, Measure(f"{trips} p99, {CONCURRENCY} concurrent clients", bc.stat("p99"), MS)),
        Figure(f"negotiation latency p50, one at a time ({k})", s.stat("p50"), MS, Measure(f"{trips} p50, one client", bs.stat("p50"), MS)),
        Figure(f"negotiation latency p99, one at a time ({k})", s.stat("p99"), MS, Measure(f"{trips} p99, one client", bs.stat("p99"), MS)),
        Figure(
            f"server-side time in the 5 requests of a negotiation, mean ({k}, request logs)",
            server_neg,
            MS,
            Measure(f"server-side time of {trips} to a missing route (request logs)", server_base, MS),
        ),
        Figure(
            f"CPU of both connectors per negotiation, {in_flight} ({k})",
            c.cpu_ms_per_op,
            MS_CPU,
            Measure(f"CPU of both connectors per {trips}", bc.cpu_ms_per_op, MS_CPU),
        ),
        Figure(
            f"CPU of both connectors per negotiation, {in_flight}, watched by polling the Management API ({k})",
            p.cpu_ms_per_op,
            MS_CPU,
            Measure(f"CPU of both connectors per {trips}", bc.cpu_ms_per_op, MS_CPU),
        ),
        Figure(f"negotiations not complete on both sides ({k})", run.checked.incomplete, COUNT),
    ]  # fmt: skip


def _breakdown(run: KindRun) -> str:
    count = max(1, run.concurrent.timed.count)
    parts = []
    for kind in (*NEGOTIATION_KINDS, "consumer: polling"):
        samples = run.server_concurrent.by_kind.get(kind, [])
        if samples:
            stats = summarise(samples)
            parts.append(
                f"{kind} {len(samples) / count:.2f}/negotiation, p50 {stats['p50']:.2f} ms p99 {stats['p99']:.2f} ms"
            )
    other = {
        k: v
        for k, v in run.server_concurrent.by_kind.items()
        if k not in (*NEGOTIATION_KINDS, "consumer: polling")
    }
    if other:
        parts.append("other: " + ", ".join(f"{k} x{len(v)}" for k, v in sorted(other.items())))
    return f"{run.kind}, {CONCURRENCY} in flight, server-side per request (request logs): " + "; ".join(parts)


def _check_notes(run: KindRun) -> list[str]:
    checked = run.checked
    notes = [
        f"{run.kind}: {checked.complete} of {checked.started} negotiations (warm-up included) complete: FINALIZED "
        f"on both sides, the agreement in contract_agreement on both, {checked.verified} signatures verified with "
        f"the parties' public keys (FINALIZED rows: {', '.join(f'{n} {c}' for n, c in checked.finalized.items())}; "
        f"agreement rows with both signatures: {', '.join(f'{n} {c}' for n, c in checked.signed.items())})"
    ]
    for what, ids in sorted(checked.problems.items(), key=lambda item: -len(item[1]))[:6]:
        notes.append(f"{run.kind}: NOT COMPLETE: {len(ids)} negotiation(s): {what} (e.g. {ids[0]})")
    if run.log_events:
        events = "; ".join(f"{event} x{count}" for event, count in sorted(run.log_events.items()))
        notes.append(f"{run.kind}: warnings and errors in the connectors' logs: {events}")
    return notes


def run(quick: bool) -> BenchResult:
    plan = (
        Plan(concurrent=60, sequential=20, warm_up=16, polled=40)
        if quick
        else Plan(concurrent=300, sequential=50, warm_up=24, polled=150)
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    notes: list[str] = []
    runs: list[KindRun] = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-negotiation-") as tmp:
        root = Path(tmp)
        runs.append(_run_kind(root / "sqlite", "SQLite", (None, None), plan))
        admin_url = postgres_admin_url()
        unreachable = postgres_unreachable(admin_url)
        if unreachable is not None:
            message = f"PostgreSQL not reachable at {redact_url(admin_url)} ({unreachable}): PostgreSQL figures skipped"
            print(f"   note: {message}", flush=True)
            notes.append(message)
        else:
            with throwaway_postgres(admin_url, 2) as (provider_url, consumer_url):
                runs.append(_run_kind(root / "postgresql", "PostgreSQL", (provider_url, consumer_url), plan))

    figures = [figure for kind_run in runs for figure in _figures(kind_run)]
    for kind_run in runs:
        notes += _check_notes(kind_run)
        notes.append(_breakdown(kind_run))
        polls = kind_run.polled.polls / max(1, len(kind_run.polled.ids))
        notes.append(
            f"{kind_run.kind}: CPU = user + system time of both connector processes over the run; in the run watched "
            f"through the Management API the consumer's answers to the polls are included ({polls:.2f} polls per "
            f"negotiation with {CONCURRENCY} in flight); the benchmark process itself used {kind_run.client_cpu_s:.1f} s CPU over the measured runs"
            + ("; the PostgreSQL server's CPU is in neither figure" if kind_run.kind == "PostgreSQL" else "")
        )
    notes += [
        f"latency = POST /management/v3/contractnegotiations sent to FINALIZED seen by a read of the consumer's "
        f"database every {POLL_SECONDS * 1000:.0f} ms (read-only; up to {POLL_SECONDS * 1000:.0f} ms late); the rate "
        "is the negotiations that reached FINALIZED / wall time from the first request to the last FINALIZED seen. "
        "'watched by polling the Management API': the same, but FINALIZED seen by POST "
        f"/management/v3/contractnegotiations/request every {POLL_SECONDS * 1000:.0f} ms, as a client would",
        f"baseline = {ROUND_TRIPS} POSTs per negotiation of a {runs[0].body_bytes:,}-byte JSON body (a signed agreement "
        f"message) to {BASELINE_PATH} (404 through the same middleware and request log; 3 to the consumer, 2 to the "
        "provider), kept-alive httpx clients, same concurrency",
        "federated catalog crawling and log witnessing are off in both connectors "
        "(TESSERA_CATALOG_CRAWL_INTERVAL_SECONDS=0, TESSERA_LOG_WITNESS_INTERVAL_SECONDS=0); "
        "everything else is as served by 'tessera serve', request log at level info",
        f"load average (1 min) when the benchmark started: {load:.2f} on {os.cpu_count()} CPUs; both connectors, "
        "the database server and this benchmark share them, and wall-clock figures suffer from any other load",
    ]
    targets: list[Target] = []
    for kind_run in runs:
        targets += [
            Target(
                description=f"at least {TARGET_PER_SECOND:.0f} complete negotiations per second ({kind_run.kind})",
                figure=f"negotiations per second, {CONCURRENCY} in flight ({kind_run.kind})",
                limit=TARGET_PER_SECOND,
                unit=PER_S,
                direction="at_least",
                measured=kind_run.concurrent.timed.per_second,
            ),
            Target(
                description=f"every negotiation FINALIZED on both sides with both signatures ({kind_run.kind})",
                figure=f"negotiations not complete on both sides ({kind_run.kind})",
                limit=0,
                unit=COUNT,
                direction="at_most",
                measured=kind_run.checked.incomplete,
            ),
        ]
    distributions: list[Distribution] = []
    for kind_run in runs:
        distributions += [
            Distribution(
                f"negotiation, {CONCURRENCY} in flight, {kind_run.kind}",
                MS,
                kind_run.concurrent.timed.latencies_ms,
            ),
            Distribution(
                f"negotiation, one at a time, {kind_run.kind}", MS, kind_run.sequential.timed.latencies_ms
            ),
        ]
    distributions.append(
        Distribution(
            f"{ROUND_TRIPS} HTTP round trips, {CONCURRENCY} concurrent",
            MS,
            runs[0].baseline_concurrent.latencies_ms,
        )
    )
    return BenchResult(
        name=NAME,
        title=TITLE,
        figures=figures,
        targets=targets,
        notes=notes,
        parameters={
            "mode": "quick" if quick else "full",
            "negotiations": f"{plan.concurrent} with {CONCURRENCY} in flight, {plan.sequential} one at a time "
            f"(+{plan.warm_up} warm-up)",
            "databases": ", ".join(kind_run.kind for kind_run in runs),
        },
        distributions=distributions,
    )  # fmt: skip
