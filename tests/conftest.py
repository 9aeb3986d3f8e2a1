"""Shared fixtures: participants in temporary directories, real databases.

PostgreSQL tests use the server named by ``TESSERA_TEST_POSTGRES_URL``
(default: the local server) and create a throwaway database per test
session. Where no server answers they skip with a message, unless
``TESSERA_TEST_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from connector.app import create_app as create_connector_app
from connector.settings import ConnectorSettings
from identity.keys import load_private_key
from runtime.participant import init_participant
from runtime.service import ServiceCore, prepare_database
from runtime.settings import load_settings

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_admin_url() -> str:
    return os.environ.get("TESSERA_TEST_POSTGRES_URL", DEFAULT_PG)


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = _pg_admin_url()
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        message = (
            f"PostgreSQL is not reachable at {url} ({str(exc).strip().splitlines()[0]}); "
            "set TESSERA_TEST_POSTGRES_URL to run these tests"
        )
        if os.environ.get("TESSERA_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def pg_database_factory(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """Creates throwaway databases; drops them all when the session ends."""
    created: list[str] = []

    def create() -> str:
        name = f"tessera_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        base = pg_admin_url.rsplit("/", 1)[0]
        return f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)

    yield create
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    factory: Callable[[], str] = request.getfixturevalue("pg_database_factory")
    return factory()


@dataclass
class Participant:
    settings: ConnectorSettings
    core: ServiceCore

    @property
    def did(self) -> str:
        return self.settings.did

    def client(self) -> TestClient:
        return TestClient(create_connector_app(self.core))


@pytest.fixture
def make_connector(tmp_path: Path) -> Iterator[Callable[..., Participant]]:
    """Creates a connector in a temporary directory (SQLite unless a URL is given)."""
    made: list[Participant] = []

    def make(name: str = "city", database_url: str | None = None) -> Participant:
        data_dir = tmp_path / name
        init_participant(data_dir, name, free_port())
        if database_url is not None:
            os.environ["TESSERA_DATABASE_URL"] = database_url
        try:
            settings = load_settings(ConnectorSettings, data_dir)
        finally:
            os.environ.pop("TESSERA_DATABASE_URL", None)
        prepare_database(settings, "connector")
        participant = Participant(settings, ServiceCore.create(settings))
        made.append(participant)
        return participant

    yield make
    for participant in made:
        participant.core.engine.dispose()


def private_key_of(participant: Participant):
    return load_private_key(participant.settings.resolved_private_key_file)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def tessera_cli() -> Callable[..., CliResult]:
    """Runs the real ``tessera`` command in a subprocess (``python -m connector``)."""
    import subprocess
    import sys

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
    ) -> CliResult:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        full_env.update(env or {})
        completed = subprocess.run(
            [sys.executable, "-m", "connector", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run
