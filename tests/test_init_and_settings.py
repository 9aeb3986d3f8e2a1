"""`tessera init` and the settings every command starts from, as an operator meets them.

Everything runs the real command line in a subprocess; a setting an operator
gets wrong must stop `serve` and `db upgrade` with one line naming it, never a
traceback and never a half-made participant.
"""

from __future__ import annotations

import base64
import json
import socket
import stat
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from connector.settings import ConnectorSettings
from identity.keys import load_private_key, public_jwk
from runtime.settings import load_settings
from tests.conftest import CliResult, free_port
from tests.helpers import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    Call,
    assert_one_line_error,
    new_participant,
    one_line_error,
    run_parallel,
    serving,
    tree_snapshot,
)

Cli = Callable[..., CliResult]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- tessera init ------------------------------------------------------------------------------


def test_init_creates_a_participant_with_private_files_and_a_did(tmp_path: Path, tessera_cli: Cli) -> None:
    data_dir = tmp_path / "city"
    result = tessera_cli("init", "--name", "city", "--port", "8001", "--dir", str(data_dir))
    assert result.code == 0, result.stderr

    private_key_file = data_dir / PRIVATE_KEY_FILE
    api_key_file = data_dir / "management-api-key"
    assert _mode(private_key_file) == 0o600
    assert _mode(api_key_file) == 0o600

    # The management API key is shown exactly once, and it is the one in the file.
    api_key = api_key_file.read_text().strip()
    assert len(api_key) >= 32
    assert result.stdout.count(api_key) == 1

    # The public JWK file is the public half of the private key.
    private_key = load_private_key(private_key_file)
    assert json.loads((data_dir / PUBLIC_KEY_FILE).read_text()) == public_jwk(private_key.public_key())

    config = tomllib.loads((data_dir / "tessera.toml").read_text())
    assert config["name"] == "city"
    assert config["port"] == 8001
    assert config["public_url"] == "http://127.0.0.1:8001"
    assert "did:web:127.0.0.1%3A8001" in result.stdout
    assert load_settings(ConnectorSettings, data_dir).did == "did:web:127.0.0.1%3A8001"

    # The private key never leaves its file: neither the PEM nor the raw scalar is printed.
    pem_lines = private_key_file.read_text().strip().splitlines()
    raw = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    secrets = [*pem_lines[1:-1], base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), raw.hex()]
    printed = result.stdout + result.stderr
    assert "PRIVATE KEY" not in printed
    for secret in secrets:
        assert secret not in printed


def test_init_with_public_url_derives_the_did_from_it(tmp_path: Path, tessera_cli: Cli) -> None:
    data_dir = tmp_path / "city"
    result = tessera_cli(
        "init",
        "--name",
        "city",
        "--port",
        "8001",
        "--dir",
        str(data_dir),
        "--public-url",
        "https://city.example.org/connectors/city/",
    )
    assert result.code == 0, result.stderr
    assert "did:web:city.example.org:connectors:city" in result.stdout
    config = tomllib.loads((data_dir / "tessera.toml").read_text())
    assert config["public_url"] == "https://city.example.org/connectors/city"  # trailing '/' dropped
    assert load_settings(ConnectorSettings, data_dir).did == "did:web:city.example.org:connectors:city"


def test_init_never_overwrites_a_participant_or_a_foreign_directory(tmp_path: Path, tessera_cli: Cli) -> None:
    existing, port = new_participant(tmp_path, "city")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's files\n")
    before = {path: tree_snapshot(path) for path in (existing, foreign)}

    again, into_foreign = run_parallel(
        tessera_cli,
        [
            (("init", "--name", "city", "--port", str(port), "--dir", str(existing)), None),
            (("init", "--name", "other", "--port", "8009", "--dir", str(foreign)), None),
        ],
    )

    assert_one_line_error(again, str(existing), "already")
    assert_one_line_error(into_foreign, str(foreign), "not an empty directory")
    assert {path: tree_snapshot(path) for path in (existing, foreign)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city", "foreign"]  # no staging left over


BAD_OPTIONS = [
    ("--name", ["--name", "City_Hall", "--port", "8001"]),
    ("--port", ["--name", "city", "--port", "0"]),
    ("--port", ["--name", "city", "--port", "70000"]),
    ("--public-url", ["--name", "city", "--port", "8001", "--public-url", "ftp://x"]),
]


def test_init_with_a_bad_option_names_it_and_creates_nothing(tmp_path: Path, tessera_cli: Cli) -> None:
    targets = [tmp_path / f"parent-{i}" / "city" for i in range(len(BAD_OPTIONS))]
    results = run_parallel(
        tessera_cli,
        [
            (("init", *arguments, "--dir", str(target)), None)
            for (_, arguments), target in zip(BAD_OPTIONS, targets, strict=True)
        ],
    )
    problems = []
    for (option, arguments), result in zip(BAD_OPTIONS, results, strict=True):
        problem = one_line_error(result, option, "invalid")
        if problem is None and (f"{option}-" in result.stderr or f"{option}_" in result.stderr):
            problem = f"{result.stderr.strip()!r} does not spell the option as typed"
        if problem is not None:
            problems.append(f"{' '.join(arguments)}: {problem}")
    assert not problems, "\n".join(problems)
    # Neither the directory nor its parent nor any staging copy is left behind.
    assert list(tmp_path.iterdir()) == []


# --- settings errors stop serve and db upgrade -------------------------------------------------


def _replace_line(data_dir: Path, prefix: str, new: str | None) -> None:
    """Replace (or with None, delete) the line of tessera.toml starting with ``prefix``."""
    config = data_dir / "tessera.toml"
    lines = []
    for line in config.read_text().splitlines():
        if not line.startswith(prefix):
            lines.append(line)
        elif new is not None:
            lines.append(new)
    config.write_text("\n".join(lines) + "\n")


def _append(data_dir: Path, text: str) -> None:
    with (data_dir / "tessera.toml").open("a") as handle:
        handle.write(text)


def _key_is_a_directory(data_dir: Path) -> None:
    # Unreadable even for root (tests may run as root, where chmod 000 does not stop reading).
    (data_dir / PRIVATE_KEY_FILE).unlink()
    (data_dir / PRIVATE_KEY_FILE).mkdir()


def _key_is_garbage(data_dir: Path) -> None:
    (data_dir / PRIVATE_KEY_FILE).write_text(
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    )


def _key_is_p256(data_dir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (data_dir / PRIVATE_KEY_FILE).write_bytes(pem)


# (case, how to break the participant, extra environment, what the line must name, db upgrade fails too)
BROKEN_SETTINGS: list[tuple[str, Callable[[Path], None], dict[str, str], tuple[str, ...], bool]] = [
    (
        "port-not-a-number",
        lambda d: _replace_line(d, "port =", 'port = "abc"'),
        {},
        ("'port'", "tessera.toml"),
        True,
    ),
    ("env-port-not-a-number", lambda d: None, {"TESSERA_PORT": "abc"}, ("'port'", "TESSERA_PORT"), True),
    ("unknown-key", lambda d: _append(d, 'colour = "blue"\n'), {}, ("'colour'", "tessera.toml"), True),
    ("invalid-toml", lambda d: _append(d, "port = [\n"), {}, ("tessera.toml", "TOML"), True),
    ("missing-public-url", lambda d: _replace_line(d, "public_url =", None), {}, ("'public_url'",), True),
    ("no-tessera-toml", lambda d: (d / "tessera.toml").unlink(), {}, ("tessera.toml",), True),
    (
        "no-management-api-key",
        lambda d: (d / "management-api-key").unlink(),
        {},
        ("management-api-key", "TESSERA_MANAGEMENT_API_KEY"),
        True,
    ),
    # `db upgrade` does not use the private key, so only `serve` must refuse these.
    ("key-unreadable", _key_is_a_directory, {}, ("private-key.pem", "cannot be read"), False),
    ("key-corrupt", _key_is_garbage, {}, ("private-key.pem", "not an unencrypted PEM"), False),
    ("key-not-ed25519", _key_is_p256, {}, ("private-key.pem", "Ed25519"), False),
]


def test_each_bad_setting_stops_serve_and_db_upgrade_with_one_line(tmp_path: Path, tessera_cli: Cli) -> None:
    calls: list[Call] = []
    labels: list[tuple[str, str, tuple[str, ...]]] = []
    for case, breaks, env, needles, db_upgrade_too in BROKEN_SETTINGS:
        data_dir, _port = new_participant(tmp_path / case)
        breaks(data_dir)
        commands = [("serve",), ("db", "upgrade")] if db_upgrade_too else [("serve",)]
        for command in commands:
            calls.append(((*command, "--dir", str(data_dir)), env))
            labels.append((case, " ".join(command), needles))

    results = run_parallel(tessera_cli, calls, timeout=40)

    problems = []
    for (case, command_line, needles), result in zip(labels, results, strict=True):
        problem = one_line_error(result, *needles)
        if problem is not None:
            problems.append(f"{case} / {command_line}: {problem}")
    assert not problems, "\n".join(problems)


def test_environment_overrides_the_file(
    tmp_path: Path, tessera_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In process: TESSERA_PORT and TESSERA_MANAGEMENT_API_KEY win over tessera.toml and the key file.
    data_dir, port = new_participant(tmp_path / "inproc")
    monkeypatch.setenv("TESSERA_PORT", str(port + 1))
    monkeypatch.setenv("TESSERA_MANAGEMENT_API_KEY", "from-the-environment-0123456789")
    settings = load_settings(ConnectorSettings, data_dir)
    assert settings.port == port + 1
    assert settings.management_api_key is not None
    assert settings.management_api_key.get_secret_value() == "from-the-environment-0123456789"
    monkeypatch.delenv("TESSERA_PORT")
    monkeypatch.delenv("TESSERA_MANAGEMENT_API_KEY")

    # Through the CLI: a broken value in the file does not matter when the environment sets it,
    # and the key file is not needed when TESSERA_MANAGEMENT_API_KEY is given.
    bad_port_dir, _ = new_participant(tmp_path / "bad-port")
    _replace_line(bad_port_dir, "port =", 'port = "abc"')
    no_key_dir, _ = new_participant(tmp_path / "no-api-key")
    (no_key_dir / "management-api-key").unlink()
    port_fixed, key_given = run_parallel(
        tessera_cli,
        [
            (("db", "upgrade", "--dir", str(bad_port_dir)), {"TESSERA_PORT": "8123"}),
            (
                ("db", "upgrade", "--dir", str(no_key_dir)),
                {"TESSERA_MANAGEMENT_API_KEY": "from-the-environment-0123456789"},
            ),
        ],
    )
    assert port_fixed.code == 0, port_fixed.stderr
    assert key_given.code == 0, key_given.stderr


def test_serve_listens_on_the_port_the_environment_gives(tmp_path: Path) -> None:
    data_dir, file_port = new_participant(tmp_path)
    env_port = free_port()
    # The file's port is taken: serve would fail if it listened there instead.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", file_port))
        blocker.listen()
        with serving(data_dir, env_port, env={"TESSERA_PORT": str(env_port)}) as served:
            assert served.process.poll() is None


# --- what serve needs from the machine ---------------------------------------------------------


def test_serve_on_a_port_in_use_says_so(tmp_path: Path, tessera_cli: Cli) -> None:
    data_dir, port = new_participant(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = tessera_cli("serve", "--dir", str(data_dir), timeout=30)
    assert_one_line_error(result, f"port {port}", "in use")


def test_serve_and_db_upgrade_with_a_database_that_does_not_answer(tmp_path: Path, tessera_cli: Cli) -> None:
    data_dir, _port = new_participant(tmp_path)
    env = {"TESSERA_DATABASE_URL": "postgresql://postgres:s3cret-pw@127.0.0.1:1/x"}
    started = time.monotonic()
    serve, upgrade = run_parallel(
        tessera_cli,
        [(("serve", "--dir", str(data_dir)), env), (("db", "upgrade", "--dir", str(data_dir)), env)],
        timeout=30,
    )
    elapsed = time.monotonic() - started
    for result in (serve, upgrade):
        assert_one_line_error(result, "database", "127.0.0.1:1/x", "does not answer")
        assert "s3cret-pw" not in result.stderr + result.stdout  # the password is never printed
    # Python start-up included; what must not happen is waiting out connect timeouts or retrying.
    assert elapsed < 15, f"took {elapsed:.1f}s to report an unreachable database"
    assert not (data_dir / "tessera.db").exists()  # no SQLite fallback behind the operator's back


def test_a_usage_error_prints_usage_not_a_traceback(tessera_cli) -> None:
    result = tessera_cli("init", "--port", "8001")  # --name is missing
    assert result.code == 2
    assert "Missing option '--name'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
