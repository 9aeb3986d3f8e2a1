"""DSP catalog requests, a page of 50, served for real on loopback.

A provider connector (a real participant directory, migrated with Alembic)
holds N assets, bulk-inserted with SQLAlchemy Core exactly as
``catalog.assets.create_asset`` writes them (asset row plus one
``asset_property`` row per scalar value; a sample of the rows is checked
against what ``asset_from_expanded``/``_row``/``_index_rows`` produce), and
three contract definitions: every asset under an open access policy, the
assets with keyword "mobility" under a membership-restricted policy the
consumer satisfies, and the "energy" assets under a policy that does not
admit the consumer. The provider runs as ``tessera serve`` (uvicorn) in a
subprocess; a consumer on its trust list POSTs
``/dsp/2025-1/catalog/request?offset=O&limit=50`` at random offsets, with a
fresh self-issued token per request (jti replay is refused).

Baselines, measured in the same run: the raw SQL for the same page (asset
columns plus whether the restricted definition selects each asset, ``ORDER
BY id LIMIT 50 OFFSET O``, ``sqlite3`` directly), and a plain HTTP round
trip to the same server (``GET /health``), so protocol overhead and catalog
work can be told apart.

Targets: p50 at most 20 ms with 10,000 assets; memory flat as assets grow
from 1,000 to 100,000 (peak RSS of the provider process, VmHWM).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, insert
from sqlalchemy.engine import make_url
from sqlmodel import Session

from bench.common import BenchResult, Distribution, Figure, Measure, Target, summarise
from bench.common import mean as average
from bench.processes import environment_for, free_port, server_environment, serving
from catalog.assets import ID_PROPERTY, MAX_INDEXED_BYTES, _index_rows, _row, asset_from_expanded
from catalog.contract_definitions import contract_definition_from_expanded, create_contract_definition
from catalog.dcat import DESCRIPTION, KEYWORD, LICENSE, PUBLISHER, TITLE
from catalog.jsonld import DSPACE_CONTEXT_URL, EDC_NS, expand_management_input
from catalog.models import Asset, AssetProperty
from catalog.queryspec import table_of
from connector.settings import ConnectorSettings
from identity.did import KEY_FRAGMENT
from identity.keys import load_private_key
from identity.tokens import MAX_LIFETIME_SECONDS, issue_token
from identity.trustlist import add_member
from policies.definitions import create_policy_definition, policy_definition_from_expanded
from runtime.database import make_engine
from runtime.participant import PUBLIC_KEY_FILE, init_participant
from runtime.service import prepare_database
from runtime.settings import load_settings

NAME = "catalog"
TITLE_TEXT = "DSP catalog request, page of 50, over loopback"
PAGE = 50
MAIN_SIZE = 10_000
TARGET_P50_MS = 20.0
MEMORY_TOLERANCE = 0.10  # "flat": peak RSS at the largest size at most 10 % above the smallest
CONCURRENCY = 4
CHUNK = 2_000  # assets per executemany batch (all batches in one transaction)
SAMPLE_EVERY = 997  # every so many assets, the fast rows are checked against the product's own
STALL_MS = 25.0  # round trip minus server time beyond which the transport, not the server, is slow
ROOT = Path(__file__).resolve().parent.parent
MS, PER_S, MB = "ms", "/s", "MB"
T = TypeVar("T")

MEMBERSHIP = "public-authority"
SUBSET_KEYWORD = "mobility"  # selected by the membership-restricted definition
HIDDEN_KEYWORD = "energy"  # selected by the definition that does not admit the consumer
KEYWORDS = (
    "mobility", "energy", "air-quality", "traffic", "parking", "noise", "water", "waste", "weather",
    "transit", "cycling", "heating", "lighting", "population", "housing", "health", "education",
    "tourism", "budget", "land-use",
)  # fmt: skip
PUBLISHERS = tuple(f"https://{name}.example.org" for name in ("city", "transit", "utility", "port"))
LICENSES = (
    "https://creativecommons.org/licenses/by/4.0/",
    "https://creativecommons.org/publicdomain/zero/1.0/",
    "https://data.europa.eu/eli/dec_impl/2023/138/oj",
)
THEMES = ("Hourly", "Daily", "Monthly", "Annual", "Real-time")

_ASSET, _PROPERTY = table_of(Asset), table_of(AssetProperty)
CATALOG_REQUEST = json.dumps(
    {"@context": [DSPACE_CONTEXT_URL], "@type": "CatalogRequestMessage", "filter": []}
).encode()
# "+p.key": look the property up by asset_id, not by the (key, value) index (see catalog.queryspec).
RAW_PAGE_SQL = """
SELECT a.id, a.properties, a.private_properties, a.data_address, a.created_at,
       a.title, a.description, a.publisher, a.license, a.personal,
       EXISTS (SELECT 1 FROM asset_property AS p
               WHERE p.asset_id = a.id AND +p.key = ? AND p.value = ?) AS restricted_offer
FROM asset AS a
ORDER BY a.id
LIMIT ? OFFSET ?
"""


# ---------------------------------------------------------------------------- participants


@dataclass(frozen=True)
class Consumer:
    did: str
    dsp_url: str
    key: Ed25519PrivateKey
    key_id: str
    public_jwk: dict[str, str]

    def tokens(self, audience: str, count: int) -> list[str]:
        """Fresh tokens, issued before a timed loop so their signing is not timed."""
        return [
            issue_token(self.key, self.did, audience, key_id=self.key_id, lifetime=MAX_LIFETIME_SECONDS)
            for _ in range(count)
        ]


@dataclass(frozen=True)
class Provider:
    settings: ConnectorSettings
    database_file: Path

    @property
    def base_url(self) -> str:
        return self.settings.public_url

    @property
    def catalog_url(self) -> str:
        return f"{self.settings.dsp_url}/catalog/request"


def _make_consumer(data_dir: Path) -> Consumer:
    init_participant(data_dir, "consumer", free_port())
    with environment_for(None):
        settings = load_settings(ConnectorSettings, data_dir)
    return Consumer(
        did=settings.did,
        dsp_url=settings.dsp_url,
        key=load_private_key(settings.resolved_private_key_file),
        key_id=f"{settings.did}#{KEY_FRAGMENT}",
        public_jwk=json.loads((data_dir / PUBLIC_KEY_FILE).read_text(encoding="utf-8")),
    )


def _policy(policy_id: str, permission: dict[str, Any]) -> dict[str, Any]:
    """A policy definition as a Management API client sends it (compacted, EDC vocabulary)."""
    return {
        "@context": {"@vocab": EDC_NS},
        "@id": policy_id,
        "policy": {
            "@context": "http://www.w3.org/ns/odrl.jsonld",
            "@type": "Set",
            "permission": [permission],
        },
    }


def _constraint(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def _definition(definition_id: str, access: str, selector: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "@context": {"@vocab": EDC_NS},
        "@id": definition_id,
        "accessPolicyId": access,
        "contractPolicyId": "open",
        "assetsSelector": selector,
    }


def _keyword_selector(keyword: str) -> list[dict[str, Any]]:
    return [{"@type": "Criterion", "operandLeft": KEYWORD, "operator": "=", "operandRight": keyword}]


def _make_provider(data_dir: Path, consumer: Consumer) -> Provider:
    """The provider's directory and database: consumer trusted, policies and definitions in place."""
    init_participant(data_dir, "provider", free_port())
    with environment_for(None):
        settings = load_settings(ConnectorSettings, data_dir)
        prepare_database(settings, "connector")
    policies = [
        _policy("open", {"action": "use"}),
        _policy(
            "public-authorities",
            {"action": "use", "constraint": [_constraint("membership", "isAnyOf", [MEMBERSHIP])]},
        ),
        _policy(
            "utility-only",
            {"action": "use", "constraint": [_constraint("participantId", "eq", "did:web:utility.example")]},
        ),
    ]
    definitions = [
        _definition("everything-open", "open", []),
        _definition("mobility-for-authorities", "public-authorities", _keyword_selector(SUBSET_KEYWORD)),
        _definition("energy-for-utility", "utility-only", _keyword_selector(HIDDEN_KEYWORD)),
    ]
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            add_member(session, consumer.did, consumer.dsp_url, consumer.public_jwk, memberships=[MEMBERSHIP])
            for body in policies:
                create_policy_definition(
                    session, policy_definition_from_expanded(expand_management_input(body))
                )
            for body in definitions:
                create_contract_definition(
                    session, contract_definition_from_expanded(expand_management_input(body))
                )
    finally:
        engine.dispose()
    database = make_url(settings.resolved_database_url).database
    if database is None or not settings.resolved_database_url.startswith("sqlite"):
        raise RuntimeError("the catalog benchmark runs on the participant's SQLite database")
    return Provider(settings, Path(database))


# ---------------------------------------------------------------------------- assets


@dataclass(frozen=True)
class GeneratedAsset:
    """One asset: its expanded Management API form and the rows create_asset would write for it."""

    node: dict[str, Any]
    asset_row: dict[str, Any]
    property_rows: list[dict[str, Any]]


def _generate(index: int, rng: random.Random, created_at: int) -> GeneratedAsset:
    asset_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    keywords = rng.sample(KEYWORDS, 3)
    theme = rng.choice(THEMES)
    title = f"{theme} {keywords[0]} measurements, district {index % 97}"
    description = (
        f"{theme} {keywords[0]} readings from {rng.randint(3, 400)} sensors in district {index % 97}, "
        f"with {keywords[1]} and {keywords[2]} context; aggregated, no personal data."
    )
    publisher, licence = rng.choice(PUBLISHERS), rng.choice(LICENSES)
    base_url = f"https://data.example.org/datasets/{asset_id}"
    properties: dict[str, Any] = {
        TITLE: [{"@value": title}],
        DESCRIPTION: [{"@value": description}],
        KEYWORD: [{"@value": k} for k in keywords],
        PUBLISHER: [{"@id": publisher}],
        LICENSE: [{"@id": licence}],
    }
    address = {
        "@type": [EDC_NS + "DataAddress"],
        EDC_NS + "type": [{"@value": "HttpData"}],
        EDC_NS + "baseUrl": [{"@value": base_url}],
    }
    node = {
        "@id": asset_id,
        "@type": [EDC_NS + "Asset"],
        EDC_NS + "properties": [dict(properties)],
        EDC_NS + "dataAddress": [address],
    }
    # What asset_from_expanded makes of the node, without its per-asset validation cost.
    properties[ID_PROPERTY] = [{"@value": asset_id}]
    asset_row = {
        "id": asset_id,
        "properties": json.dumps(properties),
        "private_properties": "{}",
        "data_address": json.dumps(address),
        "created_at": created_at,
        "title": title,
        "description": description,
        "publisher": publisher,
        "license": licence,
        "personal": False,
    }
    indexed = [
        (TITLE, title),
        (DESCRIPTION, description),
        *((KEYWORD, k) for k in keywords),
        (PUBLISHER, publisher),
        (LICENSE, licence),
        (ID_PROPERTY, asset_id),
    ]
    property_rows = [
        {"asset_id": asset_id, "key": key, "value": value, "number": None}
        for key, value in indexed
        if len(value.encode()) <= MAX_INDEXED_BYTES
    ]
    return GeneratedAsset(node, asset_row, property_rows)


def _check_against_product(generated: GeneratedAsset) -> None:
    """The fast rows must be exactly the rows create_asset writes for the same asset."""
    record = asset_from_expanded(generated.node, created_at=generated.asset_row["created_at"])
    expected_asset = _row(record).model_dump()
    expected_properties = [row.model_dump(exclude={"id"}) for row in _index_rows(record)]
    if expected_asset != generated.asset_row or expected_properties != generated.property_rows:
        raise AssertionError(
            f"bulk rows of {record.id} differ from create_asset's: "
            f"{expected_asset} / {expected_properties} vs {generated.asset_row} / {generated.property_rows}"
        )


@dataclass
class AssetStore:
    """Assets inserted so far (the database grows from one size to the next)."""

    engine: Engine
    rng: random.Random = field(default_factory=lambda: random.Random(20261121))
    count: int = 0
    property_rows: int = 0
    checked: int = 0
    subset: int = 0
    hidden: int = 0

    def grow_to(self, size: int) -> float:
        """Insert assets up to ``size`` in one transaction; the seconds it took."""
        started = time.perf_counter()
        created_at = int(time.time() * 1000)
        with self.engine.begin() as connection:
            while self.count < size:
                batch = [
                    _generate(i, self.rng, created_at + i)
                    for i in range(self.count, min(size, self.count + CHUNK))
                ]
                for offset, generated in enumerate(batch):
                    if (self.count + offset) % SAMPLE_EVERY == 0:
                        _check_against_product(generated)
                        self.checked += 1
                rows = [row for g in batch for row in g.property_rows]
                connection.execute(insert(_ASSET), [g.asset_row for g in batch])
                connection.execute(insert(_PROPERTY), rows)
                self.count += len(batch)
                self.property_rows += len(rows)
                for g in batch:
                    keywords = {row["value"] for row in g.property_rows if row["key"] == KEYWORD}
                    self.subset += SUBSET_KEYWORD in keywords
                    self.hidden += HIDDEN_KEYWORD in keywords
        return time.perf_counter() - started


# ---------------------------------------------------------------------------- the served provider


def _memory_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def _serving(provider: Provider, log_path: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    # No TESSERA_* from our environment: a database URL there must not redirect the provider.
    return serving(
        "the provider", provider.settings.data_dir, provider.base_url, log_path, server_environment()
    )


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Timed:
    """Per-request latencies (ms) and the wall time of the whole loop."""

    latencies_ms: list[float]
    wall_s: float

    @property
    def per_second(self) -> float:
        return len(self.latencies_ms) / self.wall_s

    def stat(self, name: str) -> float:
        return float(summarise(self.latencies_ms)[name])


def _catalog_call(client: httpx.Client, provider: Provider, offset: int, token: str) -> httpx.Response:
    response = client.post(
        provider.catalog_url,
        params={"offset": offset, "limit": PAGE},
        content=CATALOG_REQUEST,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    if response.status_code != 200:
        raise RuntimeError(
            f"catalog request at offset {offset}: HTTP {response.status_code}: {response.text[:300]}"
        )
    return response


def _timed(operation: Callable[[T], object], arguments: Sequence[T]) -> Timed:
    """``operation(argument)`` for each argument in turn, each call timed."""
    clock = time.perf_counter_ns
    latencies: list[float] = []
    loop_start = clock()
    for argument in arguments:
        start = clock()
        operation(argument)
        latencies.append((clock() - start) / 1e6)
    return Timed(latencies, (clock() - loop_start) / 1e9)


def _requests(consumer: Consumer, provider: Provider, offsets: Sequence[int]) -> list[tuple[int, str]]:
    """(offset, fresh token) per request, tokens issued now so their signing is not timed."""
    return list(zip(offsets, consumer.tokens(provider.settings.did, len(offsets)), strict=True))


def _catalog_sequential(provider: Provider, consumer: Consumer, offsets: Sequence[int]) -> Timed:
    requests = _requests(consumer, provider, offsets)
    with httpx.Client(timeout=60.0) as client:
        return _timed(lambda request: _catalog_call(client, provider, *request), requests)


def _catalog_concurrent(provider: Provider, consumer: Consumer, offsets: Sequence[int]) -> Timed:
    """``CONCURRENCY`` clients, each on its own thread and connection, splitting the offsets."""
    shares = [list(offsets[i::CONCURRENCY]) for i in range(CONCURRENCY)]
    requests = [_requests(consumer, provider, share) for share in shares]
    results: list[Timed | None] = [None] * CONCURRENCY
    errors: list[BaseException] = []
    start = threading.Barrier(CONCURRENCY + 1)

    def worker(index: int) -> None:
        try:
            with httpx.Client(timeout=60.0) as client:
                start.wait()
                results[index] = _timed(
                    lambda request: _catalog_call(client, provider, *request), requests[index]
                )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    latencies = [value for result in results if result is not None for value in result.latencies_ms]
    return Timed(latencies, wall)


def _health(provider: Provider, count: int) -> Timed:
    url = f"{provider.base_url}/health"
    with httpx.Client(timeout=30.0) as client:

        def call(_: int) -> None:
            if client.get(url).status_code != 200:
                raise RuntimeError("GET /health failed")

        return _timed(call, range(count))


def _raw_connection(provider: Provider) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{provider.database_file}?mode=ro", uri=True, check_same_thread=False)


def _raw_page(connection: sqlite3.Connection, offset: int) -> list[Any]:
    return connection.execute(RAW_PAGE_SQL, (KEYWORD, SUBSET_KEYWORD, PAGE, offset)).fetchall()


def _raw_sql(provider: Provider, offsets: Sequence[int]) -> Timed:
    connection = _raw_connection(provider)
    try:
        _timed(lambda offset: _raw_page(connection, offset), offsets[:50])  # warm-up
        return _timed(lambda offset: _raw_page(connection, offset), offsets)
    finally:
        connection.close()


def _check_pages(provider: Provider, consumer: Consumer, offsets: Sequence[int]) -> int:
    """The catalog page is the raw query's page: same datasets, same offers. Returns pages checked."""
    connection = _raw_connection(provider)
    try:
        with httpx.Client(timeout=60.0) as client:
            for offset, token in _requests(consumer, provider, offsets):
                response = _catalog_call(client, provider, offset, token)
                datasets = response.json().get("dataset", [])
                got = [(d["@id"], len(d["hasPolicy"])) for d in datasets]
                expected = [(row[0], 2 if row[-1] else 1) for row in _raw_page(connection, offset)]
                if got != expected:
                    raise AssertionError(f"catalog page at offset {offset} is not the raw query's page")
                if 'rel="next"' not in response.headers.get("link", "") and offset + PAGE < _count(
                    connection
                ):
                    raise AssertionError(f"catalog page at offset {offset} has no next link")
    finally:
        connection.close()
    return len(offsets)


def _count(connection: sqlite3.Connection) -> int:
    count: int = connection.execute("SELECT count(*) FROM asset").fetchone()[0]
    return count


@dataclass(frozen=True)
class SizeRun:
    size: int
    build_s: float
    rss_start_mb: float
    peak_rss_mb: float
    rss_end_mb: float
    catalog: Timed
    raw: Timed
    server_catalog_ms: list[float] = field(default_factory=list)
    concurrent: Timed | None = None
    health: Timed | None = None
    server_health_ms: list[float] = field(default_factory=list)


@contextmanager
def _server_times(log_path: Path, path_suffix: str, into: list[float]) -> Iterator[None]:
    """The provider's own request durations (its JSON request log) for requests made in the block."""
    start = log_path.stat().st_size
    yield
    time.sleep(0.2)  # the last line is written before its response is sent; let it land
    with log_path.open("rb") as log:
        log.seek(start)
        for line in log:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "request" and str(entry.get("path", "")).endswith(path_suffix):
                into.append(float(entry["duration_ms"]))


def _measure_size(
    provider: Provider,
    consumer: Consumer,
    size: int,
    build_s: float,
    requests: int,
    full: bool,
    log_path: Path,
) -> SizeRun:
    rng = random.Random(size)
    offsets = [rng.randrange(0, size - PAGE + 1) for _ in range(requests)]
    with _serving(provider, log_path) as process:
        rss_start = _memory_kib(process.pid)["VmRSS"]
        _check_pages(provider, consumer, [0, size - PAGE, *offsets[:3]])
        _catalog_sequential(provider, consumer, offsets[: min(50, requests)])  # warm-up
        server_catalog: list[float] = []
        server_health: list[float] = []
        with _server_times(log_path, "/catalog/request", server_catalog):
            catalog = _catalog_sequential(provider, consumer, offsets)
        concurrent = health = None
        if full:
            concurrent = _catalog_concurrent(provider, consumer, offsets)
            _health(provider, 50)
            with _server_times(log_path, "/health", server_health):
                health = _health(provider, requests)
        memory = _memory_kib(process.pid)
    if len(server_catalog) != requests or (full and len(server_health) != requests):
        raise RuntimeError(
            f"the provider logged {len(server_catalog)} catalog and {len(server_health)} health requests, "
            f"not {requests} each"
        )
    raw = _raw_sql(provider, offsets)
    return SizeRun(
        size=size,
        build_s=build_s,
        rss_start_mb=rss_start / 1024,
        peak_rss_mb=memory["VmHWM"] / 1024,
        rss_end_mb=memory["VmRSS"] / 1024,
        catalog=catalog,
        raw=raw,
        server_catalog_ms=server_catalog,
        concurrent=concurrent,
        health=health,
        server_health_ms=server_health,
    )


# ---------------------------------------------------------------------------- reporting


def _n(size: int) -> str:
    return f"{size:,} assets"


def _p(samples: Sequence[float], name: str) -> float:
    return float(summarise(samples)[name])


def _figures(runs: list[SizeRun]) -> list[Figure]:
    main = next(run for run in runs if run.size == MAIN_SIZE)
    assert main.concurrent is not None
    assert main.health is not None
    c, r, h, cc = main.catalog, main.raw, main.health, main.concurrent
    server, server_health = main.server_catalog_ms, main.server_health_ms
    raw = "raw SQL page query (sqlite3)"
    raw_p50, raw_p99 = Measure(f"{raw} p50", r.stat("p50"), MS), Measure(f"{raw} p99", r.stat("p99"), MS)
    raw_rate = Measure(f"{raw}, per second", r.per_second, PER_S)
    figures = [
        Figure(f"catalog request p50 ({_n(MAIN_SIZE)}, page of {PAGE})", c.stat("p50"), MS, raw_p50),
        Figure("catalog request p99", c.stat("p99"), MS, raw_p99),
        Figure("catalog request mean", average(c.latencies_ms), MS, Measure(f"{raw} mean", average(r.latencies_ms), MS)),
        Figure("  of which server-side, p50 (provider's request log)", _p(server, "p50"), MS, raw_p50),
        Figure("  of which server-side, p99 (provider's request log)", _p(server, "p99"), MS, raw_p99),
        Figure(f"catalog request p50, {CONCURRENCY} concurrent clients", cc.stat("p50"), MS, raw_p50),
        Figure("catalog requests per second (sequential)", c.per_second, PER_S, raw_rate),
        Figure(f"catalog requests per second ({CONCURRENCY} concurrent clients)", cc.per_second, PER_S, raw_rate),
        Figure("catalog request p50 (beside a plain HTTP round trip)", c.stat("p50"), MS, Measure("GET /health p50 (same server, same client)", h.stat("p50"), MS)),
        Figure("catalog requests per second (beside plain HTTP)", c.per_second, PER_S, Measure("GET /health per second (sequential)", h.per_second, PER_S)),
        Figure("GET /health round trip p50 (client)", h.stat("p50"), MS, Measure("GET /health server-side p50 (provider's request log)", _p(server_health, "p50"), MS)),
    ]  # fmt: skip
    for run in runs:
        if run.size == MAIN_SIZE:
            continue
        raw_here = Measure(f"{raw} p50, {_n(run.size)}", run.raw.stat("p50"), MS)
        figures += [
            Figure(f"catalog request p50, {_n(run.size)}", run.catalog.stat("p50"), MS, raw_here),
            Figure(
                f"  of which server-side, p50, {_n(run.size)}", _p(run.server_catalog_ms, "p50"), MS, raw_here
            ),
        ]
    smallest = runs[0]
    for run in runs[1:]:
        figures.append(
            Figure(
                f"provider peak RSS serving pages, {_n(run.size)}",
                run.peak_rss_mb,
                MB,
                Measure(f"provider peak RSS serving pages, {_n(smallest.size)}", smallest.peak_rss_mb, MB),
            )
        )
    return figures


def _transport_note(main: SizeRun) -> list[str]:
    """Say so when a plain round trip costs far more than its handling (a TCP-level stall)."""
    if main.health is None or not main.server_health_ms:
        return []
    client, server = main.health.stat("p50"), _p(main.server_health_ms, "p50")
    if client - server < STALL_MS:
        return []
    return [
        f"GET /health takes {client:.1f} ms at the client but {server:.2f} ms in the provider: each response "
        "on a kept-alive connection waits ~40 ms (Nagle + delayed ACK). asyncio sets TCP_NODELAY only on "
        "sockets whose proto is IPPROTO_TCP, and runtime.service.bind_socket creates the listening socket "
        "with proto 0; socket.socket(family, SOCK_STREAM, IPPROTO_TCP) there removes the stall"
    ]


def run(quick: bool) -> BenchResult:
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    requests_main, requests_other = (200, 100) if quick else (1_000, 300)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    runs: list[SizeRun] = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-catalog-") as tmp:
        root = Path(tmp)
        consumer = _make_consumer(root / "consumer")
        provider = _make_provider(root / "provider", consumer)
        engine = make_engine(f"sqlite:///{provider.database_file}")
        store = AssetStore(engine)
        try:
            for size in sizes:
                build_s = store.grow_to(size)
                print(
                    f"   {_n(size)} in the database ({store.property_rows:,} property rows; "
                    f"the last {size - (runs[-1].size if runs else 0):,} inserted in {build_s:.1f} s)",
                    flush=True,
                )
                full = size == MAIN_SIZE
                runs.append(
                    _measure_size(
                        provider,
                        consumer,
                        size,
                        build_s,
                        requests_main if full else requests_other,
                        full,
                        root / "provider.log",
                    )
                )
        finally:
            engine.dispose()
        subset, hidden, checked = store.subset, store.hidden, store.checked

    main = next(r for r in runs if r.size == MAIN_SIZE)
    smallest, largest = runs[0], runs[-1]
    p50 = main.catalog.stat("p50")
    notes = [
        f"{_n(largest.size)}: {subset:,} carry keyword '{SUBSET_KEYWORD}' (offered twice: open + membership "
        f"policy), {hidden:,} '{HIDDEN_KEYWORD}' (their third definition's access policy refuses the consumer)",
        f"every page checked against the raw query at offsets 0, N-{PAGE} and 3 random ones: same datasets in "
        f"the same order, 2 offers where the restricted definition selects the asset, else 1; "
        f"{checked} generated assets checked row for row against asset_from_expanded/_row/_index_rows",
        "latency = one POST /catalog/request on a kept-alive loopback connection, response read in full; "
        "each request carries its own token, issued before the timed loop (signing is not timed)",
        f"raw SQL = {' '.join(RAW_PAGE_SQL.split())} (sqlite3, same offsets, rows fetched)",
        *(
            f"{_n(run.size)}: inserted in {run.build_s:.1f} s; provider RSS {run.rss_start_mb:.1f} MB after start, "
            f"peak {run.peak_rss_mb:.1f} MB, {run.rss_end_mb:.1f} MB after {len(run.catalog.latencies_ms) + (len(run.concurrent.latencies_ms) if run.concurrent else 0)} pages; "
            f"catalog p50 {run.catalog.stat('p50'):.2f} ms, p99 {run.catalog.stat('p99'):.2f} ms"
            for run in runs
        ),
        *_transport_note(main),
        f"load average (1 min) when the benchmark started: {load:.2f} on {os.cpu_count()} CPUs; "
        "latency figures suffer from other load on the machine",
    ]
    targets = [
        Target(
            description=f"p50 of a catalog page of {PAGE} at {_n(MAIN_SIZE)} at most {TARGET_P50_MS:.0f} ms",
            figure=f"catalog request p50 ({_n(MAIN_SIZE)}, page of {PAGE})",
            limit=TARGET_P50_MS,
            unit=MS,
            direction="at_most",
            measured=p50,
        ),
        Target(
            description=(
                f"memory flat from {_n(smallest.size)} to {_n(largest.size)} "
                f"(peak RSS at most {MEMORY_TOLERANCE:.0%} above)"
            ),
            figure=f"provider peak RSS serving pages, {_n(largest.size)}",
            limit=smallest.peak_rss_mb * (1 + MEMORY_TOLERANCE),
            unit=MB,
            direction="at_most",
            measured=largest.peak_rss_mb,
        ),
    ]
    distributions = [
        Distribution(f"catalog request, {_n(MAIN_SIZE)}", MS, main.catalog.latencies_ms),
        Distribution(f"raw SQL page query, {_n(MAIN_SIZE)}", MS, main.raw.latencies_ms),
    ]
    if main.health is not None:
        distributions.append(Distribution("GET /health", MS, main.health.latencies_ms))
    return BenchResult(
        name=NAME,
        title=TITLE_TEXT,
        figures=_figures(runs),
        targets=targets,
        notes=notes,
        parameters={
            "mode": "quick" if quick else "full",
            "sizes": "/".join(f"{s:,}" for s in sizes),
            "page": PAGE,
            "requests": f"{requests_main} at {MAIN_SIZE:,} (+{requests_main} with {CONCURRENCY} clients), {requests_other} at other sizes",
            "database": "SQLite",
        },
        distributions=distributions,
    )
