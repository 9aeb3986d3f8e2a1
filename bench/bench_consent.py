"""Consent decisions: 1,000,000 consent records, batches of 1,000 subjects, through real HTTP.

A consent service (a real participant directory, migrated with Alembic) holds
one controller's agreement and N citizens, each with a registered card (an
HMAC-SHA256 keyed hash) and a consent record with one event: even citizens
gave consent, odd ones refused. Rows are bulk-inserted with SQLAlchemy Core
as ``consent.service`` writes them, the event hash chain included (checked
with ``verify_history`` on a small sample database built by the same code).
The service runs as ``tessera serve`` (uvicorn, one process); the controller
POSTs ``/api/v1/decisions`` with 1,000 random subject hashes, each request
with its own self-issued token (issued before the timed loop). One client
thread and two concurrent ones are measured.

Baseline in the same run: the raw SQL lookup of the same batches
(``sqlite3``: subject hashes ``IN (...)`` joined to records and the
agreement, the query an index-less service would run), and the in-memory
decision index called in-process (``DecisionIndex.decide``), so HTTP and
authentication overhead can be told apart from the lookup.

Where a PostgreSQL server answers (TESSERA_TEST_POSTGRES_URL or the local default), the same rows are
copied into a throwaway database: the raw lookup there (`= ANY(array)`) and the index loaded from it.

Target: at least 200,000 decisions per second through HTTP.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, insert, select, update
from sqlmodel import Session

from bench.common import BenchResult, Figure, Measure, Target
from bench.processes import (
    environment_for,
    free_port,
    postgres_admin_url,
    postgres_unreachable,
    server_environment,
    serving,
    throwaway_postgres,
)
from consent.agreements import AgreementTerms, register_agreement
from consent.decisions import DecisionIndex
from consent.hashing import new_pseudonym_key, subject_hash
from consent.ledger import HEAD_ID, event_hash
from consent.models import Citizen, ConsentEvent, ConsentRecord, FeedHead, Organisation, SubjectIdentifier
from consent.schema import metadata as consent_metadata
from consent.settings import load_consent_settings
from identity.keys import public_jwk
from identity.peer_client import PeerClient
from identity.trustlist import add_member
from runtime.database import make_engine
from runtime.migrate import upgrade
from runtime.participant import init_participant
from runtime.service import prepare_database

NAME = "consent"
TITLE = "consent decisions (batches of 1,000 subjects)"
CONTROLLER = "did:web:transit.example"
RECIPIENT = "did:web:city.example"
PURPOSE = "traffic-planning"
DATASET = "card-trips"
BATCH = 1_000
TARGET = 200_000.0
CHUNK = 20_000
CHECKED_HASHES = 1_000
RAW_SQL = (
    "SELECT i.subject_hash FROM consent_subject_identifier i "
    "JOIN consent_record r ON r.citizen_id = i.citizen_id "
    "JOIN consent_data_agreement a ON a.id = r.agreement_id "
    "WHERE i.controller_did = ? AND r.agreement_id = ? AND r.recipient_did = ? "
    "AND r.state IN ('ConsentGiven', 'RenewedConsentGiven') AND r.agreement_version >= a.min_consent_version "
    "AND (r.expires_at IS NULL OR r.expires_at > ?) AND i.subject_hash IN ({marks})"
)
TERMS = {
    "name": "card-trips-planning",
    "controller_name": "Transit",
    "purpose": PURPOSE,
    "purpose_description": "Plan routes from card trips.",
    "recipients": [{"did": RECIPIENT, "name": "City"}],
    "data_categories": ["dpv:Location"],
    "datasets": [DATASET],
    "retention": "P1Y",
    "notice": {"text": "Transit shares your card trips with the city.", "version": "1"},
}


def fast_event_hash(row: dict[str, Any]) -> str:
    """``consent.ledger.event_hash`` of an ASCII-only event row: sorted-key compact JSON is then exactly
    RFC 8785 (checked against the product's ``event_hash`` on the first rows seeded)."""
    fields = {
        "seq": row["seq"], "record": row["record_id"], "citizen": row["citizen_id"],
        "agreement": row["agreement_id"], "agreementVersion": row["agreement_version"],
        "agreementHash": row["agreement_hash"], "recipient": row["recipient_did"], "state": row["state"],
        "at": row["at"], "actor": row["actor"], "method": row["method"], "expiresAt": row["expires_at"],
        "prev": row["prev_hash"],
    }  # fmt: skip
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def seed(
    engine: Engine, count: int, key: str, *, controller: str = CONTROLLER, recipient: str = RECIPIENT
) -> tuple[str, list[str], float]:
    """The agreement and ``count`` citizens with a record each; returns (agreement id, subject hashes, seconds).

    Citizen ``i`` holds card ``card-{i:08d}``; even citizens gave consent, odd ones refused.
    """
    started = time.perf_counter()
    terms = {**TERMS, "recipients": [{"did": recipient, "name": "City"}]}
    with Session(engine) as session:
        session.add(Organisation(did=controller, name="Transit", pseudonym_key=key, registered_at=0))
        session.commit()
        revision = register_agreement(session, controller, AgreementTerms.model_validate(terms))
        agreement_id, agreement_hash = revision.agreement_id, revision.content_hash
    with Session(engine) as session:
        head = session.get(FeedHead, HEAD_ID)
        assert head is not None
        seq, previous = head.seq, head.last_event_hash
    hashes: list[str] = []
    now = int(time.time() * 1000)
    with engine.begin() as connection:
        for start in range(0, count, CHUNK):
            citizens, identifiers, records, events = [], [], [], []
            for i in range(start, min(count, start + CHUNK)):
                citizen, record = f"c{i:08d}", f"r{i:08d}"
                pseudonym = subject_hash(key, f"card-{i:08d}")
                hashes.append(pseudonym)
                state = "ConsentGiven" if i % 2 == 0 else "ConsentRefused"
                seq += 1
                citizens.append({"id": citizen, "created_at": now})
                identifiers.append(
                    {"controller_did": controller, "subject_hash": pseudonym, "citizen_id": citizen,
                     "label": "card_id", "hint": f"{i % 10_000:04d}", "registered_at": now}
                )  # fmt: skip
                records.append(
                    {"id": record, "citizen_id": citizen, "agreement_id": agreement_id,
                     "recipient_did": recipient, "created_at": now, "state": state, "agreement_version": 1,
                     "state_at": now, "expires_at": None, "last_seq": seq}
                )  # fmt: skip
                row: dict[str, Any] = {
                    "seq": seq, "record_id": record, "citizen_id": citizen, "agreement_id": agreement_id,
                    "agreement_version": 1, "agreement_hash": agreement_hash, "recipient_did": recipient,
                    "state": state, "at": now, "actor": f"citizen:{citizen}", "method": "bench-seed",
                    "expires_at": None, "prev_hash": previous, "hash": "", "receipt": None,
                }  # fmt: skip
                row["hash"] = fast_event_hash(row)
                if i < CHECKED_HASHES:
                    assert row["hash"] == event_hash(ConsentEvent(**row)), (
                        "the fast hash must equal the product's"
                    )
                previous = row["hash"]
                events.append(row)
            connection.execute(insert(Citizen), citizens)
            connection.execute(insert(SubjectIdentifier), identifiers)
            connection.execute(insert(ConsentRecord), records)
            connection.execute(insert(ConsentEvent), events)
        connection.execute(
            update(FeedHead).where(FeedHead.id == HEAD_ID).values(seq=seq, last_event_hash=previous)  # type: ignore[arg-type]
        )
    return agreement_id, hashes, time.perf_counter() - started


COPIED_TABLES = (
    "consent_organisation", "consent_data_agreement", "consent_agreement_revision", "consent_change",
    "consent_citizen", "consent_subject_identifier", "consent_record", "consent_event",
)  # fmt: skip


def copy_consent_rows(source: Engine, target: Engine) -> float:
    """The seeded rows copied into another (migrated, empty) consent database; seconds taken."""
    started = time.perf_counter()
    with source.connect() as reading, target.begin() as writing:
        for name in COPIED_TABLES:
            table = consent_metadata.tables[name]
            rows = reading.execute(select(table)).yield_per(CHUNK)
            for chunk in rows.partitions():
                writing.execute(insert(table), [row._asdict() for row in chunk])
        heads = consent_metadata.tables["consent_feed_head"]
        head = reading.execute(select(heads.c.seq, heads.c.last_event_hash)).one()
        writing.execute(
            update(heads).where(heads.c.id == HEAD_ID).values(seq=head[0], last_event_hash=head[1])
        )
    url = target.url.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(
        url, autocommit=True
    ) as connection:  # planner statistics, as autovacuum would gather
        connection.execute("ANALYZE")
    return time.perf_counter() - started


def raw_sql_postgres(database_url: str, agreement: str, work: list[list[str]]) -> tuple[float, int]:
    """Decisions per second of the bare SQL lookup on PostgreSQL (``= ANY(array)``, psycopg)."""
    query = RAW_SQL.replace("?", "%s").replace("IN ({marks})", "= ANY(%s)")
    allowed = 0
    now = int(time.time() * 1000)
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        connection.execute("SET statement_timeout = '60s'")
        started = time.perf_counter()
        for subjects in work:
            allowed += len(
                connection.execute(query, (CONTROLLER, agreement, RECIPIENT, now, subjects)).fetchall()
            )
        elapsed = time.perf_counter() - started
    return len(work) * BATCH / elapsed, allowed


def postgres_figures(
    sqlite_engine: Engine, agreement: str, work: list[list[str]], raw: Measure, expected: int
) -> tuple[list[Figure], list[str]]:
    """The raw lookup and the in-process index on a PostgreSQL copy of the same rows, where a server answers."""
    admin_url = postgres_admin_url()
    unreachable = postgres_unreachable(admin_url)
    if unreachable:
        return [], [f"PostgreSQL not measured: {unreachable}"]
    with throwaway_postgres(admin_url) as (database_url,):
        url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        upgrade("consent", url)
        engine = make_engine(url)
        try:
            copy_s = copy_consent_rows(sqlite_engine, engine)
            print(f"   copied to PostgreSQL in {copy_s:.1f} s", flush=True)
            pg_rate, pg_allowed = raw_sql_postgres(url, agreement, work)
            index_rate, load_s, index_allowed = in_process(engine, work)
        finally:
            engine.dispose()
    assert pg_allowed == index_allowed == expected, (pg_allowed, index_allowed, expected)
    pg_raw = Measure("raw SQL lookup (PostgreSQL, = ANY of 1,000)", pg_rate, "decisions/s")
    return (
        [
            Figure("raw SQL lookup on PostgreSQL", pg_rate, "decisions/s", raw),
            Figure("decisions/s in-process index on PostgreSQL", index_rate, "decisions/s", pg_raw),
        ],
        [f"PostgreSQL: rows copied in {copy_s:.1f} s; index loaded from PostgreSQL in {load_s:.1f} s"],
    )


def batches(hashes: list[str], count: int, rng: random.Random) -> list[list[str]]:
    return [rng.sample(hashes, BATCH) for _ in range(count)]


def raw_sql(database: Path, agreement: str, work: list[list[str]]) -> tuple[float, int]:
    """Decisions per second of the bare SQL lookup; and how many subjects it allowed."""
    connection = sqlite3.connect(database)
    query = RAW_SQL.format(marks=",".join("?" * BATCH))
    allowed = 0
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for subjects in work:
        allowed += len(
            connection.execute(query, (CONTROLLER, agreement, RECIPIENT, now, *subjects)).fetchall()
        )
    elapsed = time.perf_counter() - started
    connection.close()
    return len(work) * BATCH / elapsed, allowed


def in_process(engine: Engine, work: list[list[str]]) -> tuple[float, float, int]:
    """(decisions/s of DecisionIndex.decide, seconds to load the index, subjects allowed)."""
    index = DecisionIndex(engine)
    started = time.perf_counter()
    index.refresh()
    load_s = time.perf_counter() - started
    allowed = 0
    started = time.perf_counter()
    for subjects in work:
        allowed += len(index.decide(CONTROLLER, RECIPIENT, PURPOSE, DATASET, subjects).allowed)
    return len(work) * BATCH / (time.perf_counter() - started), load_s, allowed


def over_http(
    url: str, peer: PeerClient, audience: str, work: list[list[str]], threads: int
) -> tuple[float, int]:
    """Decisions per second through POST /api/v1/decisions with ``threads`` clients; subjects allowed."""
    bodies = [
        json.dumps({"controller": CONTROLLER, "recipient": RECIPIENT, "purpose": PURPOSE, "dataset": DATASET,
                    "subjects": subjects}).encode()
        for subjects in work
    ]  # fmt: skip
    tokens = [peer.authorization_for(audience) for _ in bodies]
    allowed = [0] * threads
    errors: list[str] = []

    parts = urlsplit(url)

    def client(part: int) -> None:
        # The standard library's client: the least client CPU per request on a machine the server shares.
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        try:
            for i in range(part, len(bodies), threads):
                connection.request(
                    "POST", parts.path, body=bodies[i],
                    headers={"Authorization": tokens[i], "Content-Type": "application/json"},
                )  # fmt: skip
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200:
                    errors.append(f"{response.status}: {payload[:200]!r}")
                    return
                allowed[part] += len(json.loads(payload)["allowed"])
        finally:
            connection.close()

    workers = [threading.Thread(target=client, args=(part,)) for part in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"decision request failed: {errors[0]}")
    return len(bodies) * BATCH / elapsed, sum(allowed)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(quick: bool) -> BenchResult:
    count = 100_000 if quick else 1_000_000
    requests = 100 if quick else 400
    rng = random.Random(6)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tessera-bench-consent-") as tmp:
        root = Path(tmp)
        port = free_port()
        data_dir = root / "consent"
        init_participant(data_dir, "consent", port, kind="consent")
        with environment_for(None):
            settings = load_consent_settings(data_dir)
            prepare_database(settings, "consent")
        engine = make_engine(settings.resolved_database_url)
        key = Ed25519PrivateKey.generate()
        peer = PeerClient(CONTROLLER, key)
        try:
            with Session(engine) as session:
                add_member(
                    session, CONTROLLER, "https://transit.example/dsp/2025-1", public_jwk(key.public_key())
                )
            agreement, hashes, seed_s = seed(engine, count, new_pseudonym_key())
            print(f"   {count:,} consent records seeded in {seed_s:.1f} s", flush=True)
            work = batches(hashes, requests, rng)
            raw_rate, raw_allowed = raw_sql(data_dir / "tessera.db", agreement, work)
            index_rate, index_load_s, index_allowed = in_process(engine, work)
            assert index_allowed == raw_allowed, (index_allowed, raw_allowed)
            environment = server_environment(
                TESSERA_DECISION_RATE_PER_SECOND="100000",
                TESSERA_DECISION_BURST="100000",
                TESSERA_LOG_LEVEL="warning",
            )
            url = f"{settings.api_url}/decisions"
            with serving(
                "consent", data_dir, settings.public_url, root / "consent.log", environment
            ) as process:
                rss_start = vm_rss_mb(process.pid)
                warm = batches(hashes, 5, rng)
                started = time.perf_counter()
                over_http(url, peer, settings.did, warm[:1], 1)  # waits for the index, loading since start-up
                first_s = time.perf_counter() - started
                over_http(url, peer, settings.did, warm[1:], 1)
                cpu_before = cpu_seconds(process.pid)
                http_rate, http_allowed = over_http(url, peer, settings.did, work, 1)
                server_cpu = cpu_seconds(process.pid) - cpu_before
                assert http_allowed == raw_allowed, (http_allowed, raw_allowed)
                http2_rate, _ = over_http(url, peer, settings.did, batches(hashes, requests, rng), 2)
                rss_loaded = vm_rss_mb(process.pid)
                peak = vm_rss_mb(process.pid, "VmHWM")
            sqlite_raw = Measure("raw SQL lookup (sqlite3, IN of 1,000)", raw_rate, "decisions/s")
            pg_figures, pg_notes = postgres_figures(engine, agreement, work, sqlite_raw, raw_allowed)
        finally:
            engine.dispose()
    raw = Measure("raw SQL lookup (sqlite3, IN of 1,000)", raw_rate, "decisions/s")
    figures = [
        Figure("decisions/s over HTTP, 1 client", http_rate, "decisions/s", raw),
        Figure("decisions/s over HTTP, 2 clients", http2_rate, "decisions/s", raw),
        Figure("decisions/s in-process index (no HTTP)", index_rate, "decisions/s", raw),
        # Robust to other load on the machine: how many decisions one second of the service's CPU makes.
        Figure(
            "decisions per CPU-second of the service over HTTP",
            len(work) * BATCH / server_cpu,
            "decisions/s",
            raw,
        ),
        *pg_figures,
    ]
    return BenchResult(
        name=NAME,
        title=TITLE,
        figures=figures,
        targets=[
            Target(
                description=f"at least {TARGET:,.0f} decisions/s through HTTP with {count:,} records (best of 1 and 2 clients)",
                figure=(figures[0] if http_rate >= http2_rate else figures[1]).label,
                limit=TARGET,
                unit="decisions/s",
                direction="at_least",
                measured=max(http_rate, http2_rate),
            )
        ],
        notes=[
            f"{count:,} consent records ({count // 2:,} given, the rest refused), seeded in {seed_s:.1f} s; "
            f"{requests} batches of {BATCH} random subjects; each batch's allowed count checked equal across "
            "raw SQL, index and HTTP",
            f"index load: {index_load_s:.1f} s in-process; first HTTP decision after /health answered (the server "
            f"loads its index in the background from start-up) "
            f"{first_s:.1f} s; consent service RSS {rss_start:.0f} MB after start, {rss_loaded:.0f} MB with the "
            f"index loaded (peak {peak:.0f} MB)",
            "HTTP = POST /api/v1/decisions on a kept-alive loopback connection (http.client), a fresh "
            "self-issued token per request (issued before the timed loop), response parsed",
            f"raw SQL = {RAW_SQL.format(marks='…')}",
            *pg_notes,
            f"load average (1 min) at start: {load:.2f} on {os.cpu_count()} CPUs shared with other work",
        ],
        parameters={"records": count, "batch": BATCH, "requests": requests},
    )
