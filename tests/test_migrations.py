"""Schemas are made by migrations only, on SQLite and PostgreSQL, and they match the models."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, MetaData, inspect, text
from sqlmodel import Session

from connector.schema import metadata as connector_metadata
from consent.schema import metadata as consent_metadata
from identity.keys import public_jwk
from identity.trustlist import add_member, list_members
from runtime.database import make_engine
from runtime.migrate import alembic_config, schema_differences, upgrade
from tests.conftest import CliResult
from tests.helpers import REPO, cli_env, new_participant, serving

Cli = Callable[..., CliResult]
HISTORIES = [("connector", connector_metadata), ("consent", consent_metadata)]


def _head(service: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(service, "sqlite://")).get_current_head()
    assert head is not None
    return head


def _versions(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def _assert_matches_models(engine: Engine, service: str, metadata: MetaData) -> None:
    assert _tables(engine) == set(metadata.tables) | {"alembic_version"}
    assert schema_differences(engine, metadata) == []
    assert _versions(engine) == [_head(service)]


@pytest.mark.parametrize(("service", "metadata"), HISTORIES, ids=[s for s, _ in HISTORIES])
def test_upgrade_builds_a_fresh_database_that_matches_the_models(
    database_url: str, service: str, metadata: MetaData
) -> None:
    upgrade(service, database_url)
    engine = make_engine(database_url)
    try:
        _assert_matches_models(engine, service, metadata)

        # The check is not vacuous: a model table the database lacks is reported.
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE trust_list_member"))
        differences = schema_differences(engine, metadata)
        assert [(d[0], d[1].name) for d in differences] == [("add_table", "trust_list_member")]
    finally:
        engine.dispose()


def test_db_upgrade_is_idempotent_and_keeps_data(database_url: str, tmp_path: Path, tessera_cli: Cli) -> None:
    data_dir, _port = new_participant(tmp_path)
    env = {"TESSERA_DATABASE_URL": database_url}

    first = tessera_cli("db", "upgrade", "--dir", str(data_dir), env=env)
    assert first.code == 0, first.stderr
    assert "up to date" in first.stdout
    engine = make_engine(database_url)
    try:
        _assert_matches_models(engine, "connector", connector_metadata)
        with Session(engine) as session:
            add_member(
                session,
                "did:web:transit.example.org",
                "https://transit.example.org/dsp/2025-1",
                public_jwk(Ed25519PrivateKey.generate().public_key()),
            )

        second = tessera_cli("db", "upgrade", "--dir", str(data_dir), env=env)
        assert second.code == 0, second.stderr
        _assert_matches_models(engine, "connector", connector_metadata)
        with Session(engine) as session:
            assert [m.did for m in list_members(session)] == ["did:web:transit.example.org"]
    finally:
        engine.dispose()
    if database_url.startswith("postgresql"):
        assert not (data_dir / "tessera.db").exists()  # the environment's database, not the default


def test_serve_migrates_the_database_before_it_answers(tmp_path: Path) -> None:
    data_dir, port = new_participant(tmp_path)
    database = data_dir / "tessera.db"
    assert not database.exists()
    with serving(data_dir, port):
        engine = make_engine(f"sqlite:///{database}")
        try:
            _assert_matches_models(engine, "connector", connector_metadata)
        finally:
            engine.dispose()


@pytest.mark.parametrize(
    ("arguments", "service", "metadata"),
    [([], "connector", connector_metadata), (["-n", "consent"], "consent", consent_metadata)],
    ids=["alembic", "alembic-n-consent"],
)
def test_plain_alembic_from_the_repository_root(
    tmp_path: Path, arguments: list[str], service: str, metadata: MetaData
) -> None:
    database = tmp_path / "by-hand.db"
    completed = subprocess.run(
        [sys.executable, "-m", "alembic", *arguments, "upgrade", "head"],
        cwd=REPO,
        env={**cli_env(), "TESSERA_DATABASE_URL": f"sqlite:///{database}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    engine = make_engine(f"sqlite:///{database}")
    try:
        _assert_matches_models(engine, service, metadata)
    finally:
        engine.dispose()


def test_plain_alembic_without_a_database_url_says_which_variable(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode != 0
    assert "TESSERA_DATABASE_URL" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(("service", "metadata"), HISTORIES, ids=[s for s, _ in HISTORIES])
def test_replicas_migrating_a_fresh_database_at_once_all_start(
    database_url: str, service: str, metadata: MetaData
) -> None:
    """Replicas started together each migrate first: every one must succeed, the schema made once."""
    code = "import sys; from runtime.migrate import upgrade; upgrade(sys.argv[1], sys.argv[2])"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, service, database_url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    engine = make_engine(database_url)
    try:
        _assert_matches_models(engine, service, metadata)
    finally:
        engine.dispose()
