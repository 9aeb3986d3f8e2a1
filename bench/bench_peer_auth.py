"""Peer authentication per request: issue a token, verify it, record its jti.

One operation is what one peer request costs both sides together: the
sender issues a self-issued token (``identity.tokens.issue_token``, with the
same arguments as ``PeerClient``), the receiver checks it through its real
receiving path ``PeerAuthenticator.authenticate("Bearer …")`` (trust-list
lookup, signature and claims, then the jti insert and commit) in the real
database of a real participant directory, migrated with Alembic.

Baseline, measured in the same run on the same machine: raw Ed25519 sign and
verify (``cryptography``) of the very bytes a token signs.

Target: authentication costs at most 0.5 ms of one core per request on
SQLite. Where a PostgreSQL server answers (``TESSERA_TEST_POSTGRES_URL`` or
the local default) the same loop also runs against a throwaway database.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func
from sqlmodel import Session, select

from bench.common import (
    BenchResult,
    Distribution,
    Figure,
    Measure,
    Target,
    TwoStepSamples,
    summarise,
    time_two_steps,
)
from bench.common import mean as average
from bench.processes import environment_for, postgres_admin_url, postgres_unreachable, throwaway_postgres
from connector.settings import ConnectorSettings
from identity.did import KEY_FRAGMENT
from identity.errors import TokenRejected
from identity.keys import load_private_key
from identity.replay import SeenToken
from identity.tokens import issue_token
from identity.trustlist import add_member
from runtime.database import redact_url
from runtime.participant import PUBLIC_KEY_FILE, init_participant
from runtime.service import ServiceCore, prepare_database
from runtime.settings import load_settings

NAME = "peer_auth"
TITLE = "peer authentication per request (issue + verify + record jti)"
TARGET_CPU_US = 500.0
US = "µs"
US_CPU = "µs CPU"


@dataclass(frozen=True)
class Sender:
    did: str
    dsp_url: str
    key: Ed25519PrivateKey
    key_id: str
    public_jwk: dict[str, str]


@dataclass(frozen=True)
class Run:
    """The measured loop of one database kind, with what it proved on the way."""

    kind: str
    samples: TwoStepSamples
    recorded: int
    expected_recorded: int
    replay_refused: bool


def _make_sender(root: Path) -> Sender:
    data_dir = root / "hospital"
    init_participant(data_dir, "hospital", 18102)
    with environment_for(None):
        settings = load_settings(ConnectorSettings, data_dir)
    return Sender(
        did=settings.did,
        dsp_url=settings.dsp_url,
        key=load_private_key(settings.resolved_private_key_file),
        key_id=f"{settings.did}#{KEY_FRAGMENT}",
        public_jwk=json.loads((data_dir / PUBLIC_KEY_FILE).read_text(encoding="utf-8")),
    )


@contextmanager
def _receiver(data_dir: Path, sender: Sender, database_url: str | None) -> Iterator[ServiceCore]:
    """The receiving connector on its migrated database, the sender on its trust list."""
    with environment_for(database_url):
        settings = load_settings(ConnectorSettings, data_dir)
    prepare_database(settings, "connector")
    core = ServiceCore.create(settings)
    try:
        with Session(core.engine) as session:
            add_member(session, sender.did, sender.dsp_url, sender.public_jwk)
        yield core
    finally:
        core.engine.dispose()


def _measure(kind: str, core: ServiceCore, sender: Sender, iterations: int, warm_up: int) -> Run:
    audience = core.settings.did
    authenticator = core.authenticator

    def issue() -> str:
        token = issue_token(sender.key, sender.did, audience, key_id=sender.key_id)
        return f"Bearer {token}"

    def verify_and_record(authorization: str) -> None:
        if authenticator.authenticate(authorization).did != sender.did:
            raise AssertionError("authenticated as someone else")

    time_two_steps(issue, verify_and_record, warm_up)
    samples = time_two_steps(issue, verify_and_record, iterations)

    last = issue()
    verify_and_record(last)
    try:
        verify_and_record(last)
        replay_refused = False
    except TokenRejected as exc:
        replay_refused = exc.reason == "replayed"
    with Session(core.engine) as session:
        recorded = int(session.exec(select(func.count()).select_from(SeenToken)).one())
    return Run(kind, samples, recorded, warm_up + iterations + 1, replay_refused)


def _raw_baseline(sender: Sender, audience: str, iterations: int, warm_up: int) -> TwoStepSamples:
    """Ed25519 sign + verify of the exact signing input of a token, nothing else."""
    token = issue_token(sender.key, sender.did, audience, key_id=sender.key_id)
    signing_input = token.rsplit(".", 1)[0].encode("ascii")
    private, public = sender.key, sender.key.public_key()

    def sign() -> bytes:
        return private.sign(signing_input)

    def verify(signature: bytes) -> None:
        public.verify(signature, signing_input)

    time_two_steps(sign, verify, warm_up)
    return time_two_steps(sign, verify, iterations)


def _figures(sqlite: Run, raw: TwoStepSamples, postgres: Run | None) -> list[Figure]:
    raw_total = raw.total_wall_us
    raw_per_second = Measure("raw Ed25519 sign+verify per second", raw.per_second, "/s")
    raw_cpu = Measure("raw Ed25519 sign+verify, CPU", raw.cpu_us_per_op, US_CPU)
    raw_verify_wall = Measure("raw Ed25519 verify (mean)", average(raw.second_wall_us), US)
    raw_verify_cpu = Measure("raw Ed25519 verify, CPU", average(raw.second_cpu_us), US_CPU)
    s = sqlite.samples
    figures = [
        Figure("peer authentications per second (SQLite)", s.per_second, "/s", raw_per_second),
        Figure(
            "mean time per authentication (SQLite)",
            average(s.total_wall_us),
            US,
            Measure("raw Ed25519 sign+verify (mean)", average(raw_total), US),
        ),
        Figure(
            "  of which issue token (mean)",
            average(s.first_wall_us),
            US,
            Measure("raw Ed25519 sign (mean)", average(raw.first_wall_us), US),
        ),
        Figure(
            "  of which verify + record jti (SQLite, mean)", average(s.second_wall_us), US, raw_verify_wall
        ),
        Figure(
            "p99 time per authentication (SQLite)",
            summarise(s.total_wall_us)["p99"],
            US,
            Measure("raw Ed25519 sign+verify (p99)", summarise(raw_total)["p99"], US),
        ),
        Figure("CPU per authentication (SQLite)", s.cpu_us_per_op, US_CPU, raw_cpu),
        Figure(
            "  of which issue token, CPU",
            average(s.first_cpu_us),
            US_CPU,
            Measure("raw Ed25519 sign, CPU", average(raw.first_cpu_us), US_CPU),
        ),
        Figure(
            "  of which verify + record jti (SQLite), CPU", average(s.second_cpu_us), US_CPU, raw_verify_cpu
        ),
    ]
    if postgres is not None:
        p = postgres.samples
        figures += [
            Figure("peer authentications per second (PostgreSQL)", p.per_second, "/s", raw_per_second),
            Figure(
                "  of which verify + record jti (PostgreSQL, mean)",
                average(p.second_wall_us),
                US,
                raw_verify_wall,
            ),
            Figure(
                "CPU per authentication (PostgreSQL, this process only)", p.cpu_us_per_op, US_CPU, raw_cpu
            ),
        ]
    return figures


def run(quick: bool) -> BenchResult:
    iterations, warm_up = (500, 100) if quick else (5000, 500)
    notes: list[str] = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    admin_url = postgres_admin_url()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        root = Path(tmp)
        sender = _make_sender(root)
        receiver_dir = root / "city"
        init_participant(receiver_dir, "city", 18101)

        with _receiver(receiver_dir, sender, None) as core:
            raw = _raw_baseline(sender, core.settings.did, iterations, warm_up)
            sqlite = _measure("SQLite", core, sender, iterations, warm_up)

        postgres: Run | None = None
        unreachable = postgres_unreachable(admin_url)
        if unreachable is not None:
            message = f"PostgreSQL not reachable at {redact_url(admin_url)} ({unreachable}): PostgreSQL figures skipped"
            print(f"   note: {message}", flush=True)
            notes.append(message)
        else:
            with (
                throwaway_postgres(admin_url) as (database_url,),
                _receiver(receiver_dir, sender, database_url) as core,
            ):
                postgres = _measure("PostgreSQL", core, sender, iterations, warm_up)

    for checked in (sqlite, postgres):
        if checked is None:
            continue
        if checked.recorded != checked.expected_recorded or not checked.replay_refused:
            raise AssertionError(
                f"{checked.kind}: {checked.recorded} jti rows (expected {checked.expected_recorded}), "
                f"replay refused: {checked.replay_refused}"
            )
        notes.append(
            f"{checked.kind}: checked {checked.recorded} jti rows recorded and a replayed token refused ('replayed')"
        )

    figures = _figures(sqlite, raw, postgres)
    cpu = next(f for f in figures if f.label == "CPU per authentication (SQLite)")
    notes += [
        "one authentication = issue (sender side) + verify + record jti (receiver side), single thread; "
        "the target is judged on both sides together, the receiving side alone is the 'verify + record' line",
        "CPU = time.process_time of this process (user + system, SQLite included); on PostgreSQL the "
        "server's own CPU is not counted",
        f"load average (1 min) when the benchmark started: {load:.2f} on {os.cpu_count()} CPUs; "
        "wall-clock figures suffer from other load, CPU figures much less",
    ]
    distributions = [Distribution("authentication, SQLite", US, sqlite.samples.total_wall_us)]
    if postgres is not None:
        distributions.append(Distribution("authentication, PostgreSQL", US, postgres.samples.total_wall_us))
    distributions.append(Distribution("raw Ed25519 sign+verify", US, raw.total_wall_us))
    return BenchResult(
        name=NAME,
        title=TITLE,
        figures=figures,
        targets=[
            Target(
                description="authentication costs at most 0.5 ms of one core per request on SQLite",
                figure=cpu.label,
                limit=TARGET_CPU_US,
                unit=US_CPU,
                direction="at_most",
                measured=cpu.value,
            )
        ],
        notes=notes,
        parameters={
            "mode": "quick" if quick else "full",
            "iterations": iterations,
            "warm_up": warm_up,
            "databases": "SQLite" + (", PostgreSQL" if postgres else ""),
        },
        distributions=distributions,
    )
