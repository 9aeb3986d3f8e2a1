"""The container files in docker/, checked without a Docker engine.

The compose file and the Dockerfile are parsed and held to what the deployment relies on.
The image's entry command, docker/entrypoint.sh, runs for real outside a container: with sh,
on 127.0.0.1, against real connectors, and is stopped with SIGTERM as ``docker stop`` would.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import httpx
import pytest
import yaml

from connector.settings import ConnectorSettings
from runtime.participant import init_participant
from runtime.settings import ParticipantSettings, load_settings
from tests.conftest import CliResult, free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
ENTRYPOINT = DOCKER / "entrypoint.sh"
PARTICIPANTS = {
    "city": ("connector", 8001),
    "transit": ("connector", 8002),
    "utility": ("connector", 8003),
    "consent": ("consent", 8004),
}
DID_PATH = "/.well-known/did.json"
STOP_SECONDS = 10.0

Cli = Callable[..., CliResult]


# --- compose.yaml -----------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _interpolated(value: str) -> str:
    """``${VAR:-default}`` as compose reads it when VAR is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment")
    assert isinstance(environment, dict), "environment is written as a mapping"
    return {key: _interpolated(str(value)) for key, value in environment.items()}


def test_compose_has_the_demo_topology() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"postgres", "mqtt", *PARTICIPANTS}
    assert compose["name"] == "tessera"
    assert COMPOSE.read_text(encoding="utf-8").startswith("#"), "usage comment at the top"


def test_compose_postgres_creates_one_database_per_participant() -> None:
    compose = _compose()
    postgres = compose["services"]["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    test = postgres["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    assert len(test) > 1
    # Over TCP and against a participant's database: the init-time server listens on its socket only.
    assert "127.0.0.1" in test
    assert "consent" in test
    assert any(str(volume).endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])

    init_scripts = [
        str(volume).split(":")[0]
        for volume in postgres["volumes"]
        if ":/docker-entrypoint-initdb.d/" in str(volume)
    ]
    assert len(init_scripts) == 1
    script = (DOCKER / init_scripts[0]).resolve()
    assert script.is_file(), f"{script} is mounted but does not exist"
    created = set(re.findall(r"CREATE DATABASE (\w+);", script.read_text(encoding="utf-8")))
    urls = {name: _environment(compose["services"][name])["TESSERA_DATABASE_URL"] for name in PARTICIPANTS}
    assert {urlsplit(url).path.lstrip("/") for url in urls.values()} == created


@pytest.mark.parametrize("name", sorted(PARTICIPANTS))
def test_compose_participant(name: str, tmp_path: Path) -> None:
    compose = _compose()
    service = compose["services"][name]
    kind, port = PARTICIPANTS[name]

    assert service["build"]["context"] == ".."
    assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]

    health = service["healthcheck"]
    assert health["test"][0] == "CMD"
    assert any("/health" in part for part in health["test"])
    assert {"interval", "timeout", "retries", "start_period"} <= set(health)

    mounts = [str(volume).split(":") for volume in service["volumes"]]
    assert [target for _, target in mounts] == ["/data"]
    assert mounts[0][0] in compose["volumes"], "a named volume"

    env = _environment(service)
    assert env["TESSERA_NAME"] == name
    assert env["TESSERA_KIND"] == kind
    assert env["TESSERA_PORT"] == str(port)
    assert env["TESSERA_PUBLIC_URL"] == f"http://{name}:{port}"
    others = {f"http://{other}:{PARTICIPANTS[other][1]}{DID_PATH}" for other in PARTICIPANTS if other != name}
    peers = env["TESSERA_PEERS"].split()
    assert set(peers) == others
    assert len(peers) == len(others)

    database = urlsplit(env["TESSERA_DATABASE_URL"])
    assert (database.scheme, database.hostname, database.port, database.path) == (
        "postgresql",
        "postgres",
        5432,
        f"/{name}",
    )
    # The values the entrypoint hands on are ones the product's settings accept.
    settings = ParticipantSettings(
        data_dir=tmp_path,
        name=env["TESSERA_NAME"],
        kind=env["TESSERA_KIND"],
        port=int(env["TESSERA_PORT"]),
        public_url=env["TESSERA_PUBLIC_URL"],
        database_url=env["TESSERA_DATABASE_URL"],
    )
    assert settings.did == f"did:web:{name}%3A{port}"
    if kind == "connector":
        # Each connector asks the compose network's consent service, whose DID it trusts (TESSERA_PEERS).
        connector = ConnectorSettings(
            data_dir=tmp_path,
            name=env["TESSERA_NAME"],
            port=int(env["TESSERA_PORT"]),
            public_url=env["TESSERA_PUBLIC_URL"],
            consent_service_url=env["TESSERA_CONSENT_SERVICE_URL"],
            consent_service_did=env["TESSERA_CONSENT_SERVICE_DID"],
            consent_service_plain_http=env["TESSERA_CONSENT_SERVICE_PLAIN_HTTP"],
        )
        consent_port = PARTICIPANTS["consent"][1]
        assert connector.consent_service_url == f"http://consent:{consent_port}"
        assert connector.consent_service_did == f"did:web:consent%3A{consent_port}"
        assert f"http://consent:{consent_port}{DID_PATH}" in peers
    else:
        assert not any(variable.startswith("TESSERA_CONSENT_SERVICE") for variable in env)


def test_compose_participants_do_not_share_state() -> None:
    services = _compose()["services"]
    volumes = [services[name]["volumes"][0].split(":")[0] for name in PARTICIPANTS]
    databases = [_environment(services[name])["TESSERA_DATABASE_URL"] for name in PARTICIPANTS]
    assert len(set(volumes)) == len(PARTICIPANTS)
    assert len(set(databases)) == len(PARTICIPANTS)
    assert "postgres-data" in _compose()["volumes"]
    assert "postgres-data" not in volumes


# --- the MQTT broker ------------------------------------------------------------------------------

MOSQUITTO_CONF = DOCKER / "mosquitto.conf"


def test_compose_mqtt_broker_requires_sign_in_and_listens_on_loopback_only() -> None:
    mqtt = _compose()["services"]["mqtt"]
    assert mqtt["image"].startswith("eclipse-mosquitto:2")
    assert mqtt["ports"] == ["127.0.0.1:1883:1883"]
    assert "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in mqtt["volumes"]
    environment = _environment(mqtt)
    assert environment["MQTT_USERNAME"] == "sensors"
    assert environment["MQTT_PASSWORD"] == "tessera"
    script = mqtt["command"][-1]
    assert "mosquitto_passwd -c -b /mosquitto/data/passwords" in script
    assert script.rstrip().endswith("exec mosquitto -c /mosquitto/config/mosquitto.conf")
    lines = [
        line.split() for line in MOSQUITTO_CONF.read_text().splitlines() if line and not line.startswith("#")
    ]
    assert ["allow_anonymous", "false"] in lines
    assert ["password_file", "/mosquitto/data/passwords"] in lines
    assert all("#" not in " ".join(line) for line in lines), (
        "Mosquitto reads a trailing # as part of the value"
    )


def _broker_config(port: int, passwords: Path) -> str:
    """docker/mosquitto.conf as the container reads it, on a free loopback port and a local file."""
    text = MOSQUITTO_CONF.read_text()
    assert "listener 1883\n" in text
    assert "password_file /mosquitto/data/passwords\n" in text
    text = text.replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
    return text.replace("password_file /mosquitto/data/passwords\n", f"password_file {passwords}\n")


@pytest.fixture
def compose_broker(tmp_path: Path) -> Iterator[int]:
    """Mosquitto run with docker/mosquitto.conf and a password file made as compose.yaml makes it."""
    mosquitto, passwd = shutil.which("mosquitto") or "/usr/sbin/mosquitto", shutil.which("mosquitto_passwd")
    if not Path(mosquitto).exists() or passwd is None:
        pytest.skip("Mosquitto is not installed here (Debian package mosquitto): the broker's config not run")
    # A directory the broker's own user can enter (it drops root for "mosquitto" when that user exists).
    state = Path(tempfile.mkdtemp(prefix="tessera-mqtt-"))
    state.chmod(0o711)
    passwords = state / "passwords"
    made = subprocess.run(
        [passwd, "-c", "-b", str(passwords), "sensors", "tessera"], capture_output=True, check=False
    )
    assert made.returncode == 0, made.stderr
    with suppress(KeyError, PermissionError):
        shutil.chown(passwords, "mosquitto", "mosquitto")
    passwords.chmod(0o600)
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(_broker_config(port, passwords))
    process = subprocess.Popen(
        [mosquitto, "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"mosquitto did not start with docker/mosquitto.conf: {output}")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(state, ignore_errors=True)


def test_the_compose_broker_refuses_anonymous_clients_and_carries_signed_in_ones(compose_broker: int) -> None:
    async def exchange() -> None:
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", compose_broker, timeout=5):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", compose_broker, username="sensors", password="wrong", timeout=5
            ):
                pass
        async with aiomqtt.Client(
            "127.0.0.1", compose_broker, username="sensors", password="tessera"
        ) as client:
            await client.subscribe("road/counts")
            await client.publish("road/counts", b'{"vehicles": 12}')
            async with asyncio.timeout(5):
                message = await anext(aiter(client.messages))
            assert message.payload == b'{"vehicles": 12}'

    asyncio.run(exchange())


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine: `docker compose config` not run")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip("the Docker Compose plugin is missing here (`docker compose version` fails): not run")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--services"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"postgres", "mqtt", *PARTICIPANTS}


# --- Dockerfile -------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of docker/Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in _instructions():
        if keyword == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append((keyword, arguments))
    return stages


def _healthcheck_command() -> str:
    [healthcheck] = [arguments for keyword, arguments in _stages()[-1] if keyword == "HEALTHCHECK"]
    return healthcheck.split(" CMD ", 1)[1]


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        assert stage[0][1].split()[0] == "python:3.11-slim"
    assert stages[0][0][1].split()[-2:] == ["AS", "builder"]
    assert any(keyword == "RUN" and "pip wheel" in arguments for keyword, arguments in stages[0])
    final = stages[-1]
    runs = " ".join(arguments for keyword, arguments in final if keyword == "RUN")
    assert "from=builder" in runs, "the final stage installs the builder's wheels"
    assert "--no-index" in runs, "and nothing else"
    for tool in ("gcc", "build-essential", "apt-get install", "git "):
        assert tool not in runs, f"{tool} in the final stage"
    assert "pip uninstall" in runs


def test_dockerfile_runs_as_a_fixed_non_root_user() -> None:
    final = _stages()[-1]
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {users[-1]} is not a fixed uid"
    assert int(user) >= 1000, f"USER {users[-1]} is not an unprivileged uid"
    last_run = max(i for i, (keyword, _) in enumerate(final) if keyword == "RUN")
    assert max(i for i, (keyword, _) in enumerate(final) if keyword == "USER") > last_run


def test_dockerfile_health_entrypoint_and_volume() -> None:
    instructions = _instructions()
    final = dict(reversed(_stages()[-1]))  # the first of each keyword
    assert "python" in final["HEALTHCHECK"]
    assert "/health" in final["HEALTHCHECK"]
    assert "curl" not in final["HEALTHCHECK"]
    entrypoint = json.loads(final["ENTRYPOINT"])
    copies = [arguments.split() for keyword, arguments in _stages()[-1] if keyword == "COPY"]
    assert ["docker/entrypoint.sh", entrypoint[0]] in [copy[-2:] for copy in copies]
    assert json.loads(final["VOLUME"]) == ["/data"]
    assert final["WORKDIR"] == "/data"
    for keyword, arguments in instructions:
        assert not (keyword == "ADD" and re.search(r"https?://", arguments)), "no ADD of a URL"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore excludes ``path`` (last matching pattern wins; ! re-includes)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, body) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_build_context_keeps_what_the_wheel_needs() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = ["pyproject.toml", pyproject["project"]["readme"], "docker/entrypoint.sh"]
    needed += [f"{package}/__init__.py" for package in packages]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not _ignored(path, patterns), f"{path} is left out of the build context"
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "connector/__pycache__/app.pyc"):
        assert _ignored(path, patterns), f"{path} is sent to the builder"


# --- entrypoint.sh, for real ------------------------------------------------------------------


def test_entrypoint_is_posix_sh() -> None:
    text = ENTRYPOINT.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -eu\n" in text
    assert os.access(ENTRYPOINT, os.X_OK)
    for shell in ("sh", "dash", "bash"):
        path = shutil.which(shell)
        if path is None:
            continue
        args = [path, "--posix", "-n"] if shell == "bash" else [path, "-n"]
        result = subprocess.run([*args, str(ENTRYPOINT)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{shell}: {result.stderr}"
    if shutil.which("shellcheck"):
        result = subprocess.run(
            ["shellcheck", "--shell=sh", str(ENTRYPOINT)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout


def _bin_dir() -> Path:
    here = Path(sys.executable).parent
    return here if (here / "tessera").exists() else ROOT / ".venv" / "bin"


def _env(**values: str) -> dict[str, str]:
    """The test's environment without TESSERA_*, the venv first on PATH, plus ``values``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TESSERA_")}
    env["PATH"] = f"{_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env.update(values)
    return env


def _entrypoint_env(data_dir: Path, port: int, **values: str) -> dict[str, str]:
    return _env(
        TESSERA_DATA_DIR=str(data_dir),
        TESSERA_PORT=str(port),
        TESSERA_HOST="127.0.0.1",
        TESSERA_PUBLIC_URL=f"http://127.0.0.1:{port}",
        **values,
    )


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the finally can end all of it
        )


def _end(process: subprocess.Popen[bytes]) -> None:
    """Ends the process and everything it started (its process group)."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@contextmanager
def _running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = _spawn(args, env, log)
    try:
        yield process
    finally:
        _end(process)


def _log(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _wait_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2, trust_env=False) as client:
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"exited with {process.returncode} before {url} was healthy:\n{_log(log)[-3000:]}"
                )
            try:
                response = client.get(f"{url}/health")
                if response.status_code == 200:
                    body: dict[str, Any] = response.json()
                    return body
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{url}/health did not answer 200 in {timeout} s:\n{_log(log)[-3000:]}")
            time.sleep(0.2)


def _members(cli: Cli, data_dir: Path) -> list[dict[str, Any]]:
    result = cli("dataspace", "list", "--dir", str(data_dir), "--json")
    assert result.code == 0, result.stderr
    members: list[dict[str, Any]] = json.loads(result.stdout)
    return members


def _wait_for_text(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in _log(log):
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} did not appear in {timeout} s:\n{_log(log)[-3000:]}")
        time.sleep(0.2)


def _session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session; empty where /proc does not exist."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _stop(
    process: subprocess.Popen[bytes], port: int, log: Path, sig: signal.Signals = signal.SIGTERM
) -> None:
    """What ``docker stop`` does: SIGTERM (or Ctrl-C's SIGINT) to the entry point, which must end
    the server gracefully."""
    started = time.monotonic()
    process.send_signal(sig)
    try:
        code = process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the entrypoint did not exit {STOP_SECONDS} s after {sig.name}:\n{_log(log)[-3000:]}")
    # uvicorn shuts down, then ends itself with the signal it caught; the script passes that on.
    assert code in (0, 128 + signal.SIGTERM), _log(log)[-3000:]
    assert time.monotonic() - started < STOP_SECONDS
    assert "Application shutdown complete" in _log(log), "the server did not shut down gracefully"
    assert _refused(port), "the port still answers"
    deadline = time.monotonic() + 5
    while _session_processes(process.pid):
        assert time.monotonic() < deadline, f"left running: {_session_processes(process.pid)}"
        time.sleep(0.1)


def _connector(tmp_path: Path, name: str, port: int) -> list[str]:
    """Creates a connector on 127.0.0.1:port; returns the command that serves it."""
    data_dir = tmp_path / name
    init_participant(data_dir, name, port)
    return [sys.executable, "-m", "connector", "serve", "--dir", str(data_dir)]


@pytest.mark.slow
def test_entrypoint_creates_joins_serves_and_stops(tessera_cli: Cli, tmp_path: Path) -> None:
    peer_port, port, missing_port = free_port(), free_port(), free_port()
    peer_url, own_url = f"http://127.0.0.1:{peer_port}", f"http://127.0.0.1:{port}"
    missing = f"http://127.0.0.1:{missing_port}{DID_PATH}"
    peer_serve = _connector(tmp_path, "transit", peer_port)
    data_dir = tmp_path / "volume"
    data_dir.mkdir()  # empty and existing, like a freshly mounted volume
    env = _entrypoint_env(
        data_dir,
        port,
        TESSERA_NAME="city",
        TESSERA_KIND="connector",
        # Itself is skipped; the missing one is given up on after one attempt.
        TESSERA_PEERS=f"{peer_url}{DID_PATH}  {own_url}{DID_PATH}\t{missing}",
        TESSERA_PEER_ATTEMPTS="1",
    )
    log = tmp_path / "entrypoint.log"
    with _running(peer_serve, _env(), tmp_path / "peer.log") as peer:
        _wait_healthy(peer_url, peer, tmp_path / "peer.log")
        with _running(["sh", str(ENTRYPOINT)], env, log) as entrypoint:
            health = _wait_healthy(own_url, entrypoint, log)
            assert health["did"] == f"did:web:127.0.0.1%3A{port}"

            _wait_for_text(log, f"peer {peer_url}{DID_PATH} added", 20)
            _wait_for_text(log, f"giving up on peer {missing} after 1 attempt(s)", 10)
            peer_did = f"did:web:127.0.0.1%3A{peer_port}"
            members = _members(tessera_cli, data_dir)
            assert [(m["did"], m["url"], m["source"]) for m in members] == [
                (peer_did, f"{peer_url}/dsp/2025-1", "did-document")
            ]
            # Created in place (the directory may be a mount point), nothing left of the staging.
            names = {p.name for p in data_dir.iterdir()}
            assert {"keys", "management-api-key", "tessera.db", "tessera.toml"} <= names
            assert not [name for name in names if name.startswith(".")]
            assert sorted(p.name for p in (data_dir / "keys").iterdir()) == [
                "private-key.pem",
                "public-key.jwk",
            ]
            config = tomllib.loads((data_dir / "tessera.toml").read_text(encoding="utf-8"))
            assert (config["name"], config["kind"], config["port"]) == ("city", "connector", port)
            assert (data_dir / "management-api-key").stat().st_mode & 0o077 == 0
            assert "management API key in" in _log(log)
            assert (data_dir / "management-api-key").read_text().strip() not in _log(log)

            # The image's HEALTHCHECK (port from tessera.toml) and compose's (port from the environment).
            check = _healthcheck_command()
            healthy = subprocess.run(
                ["sh", "-c", check], env=_env(TESSERA_DATA_DIR=str(data_dir)), check=False
            )
            assert healthy.returncode == 0
            compose_check = _compose()["services"]["city"]["healthcheck"]["test"][1:]
            for port_seen, expected in ((port, 0), (missing_port, 1)):
                result = subprocess.run(
                    compose_check,
                    env=_env(TESSERA_PORT=str(port_seen), TESSERA_DATA_DIR=str(data_dir)),
                    capture_output=True,
                    check=False,
                )
                assert result.returncode == expected, result.stderr

            _stop(entrypoint, port, log)
        peer.send_signal(signal.SIGTERM)
        peer.wait(timeout=STOP_SECONDS)


@pytest.mark.slow
@pytest.mark.postgres
def test_entrypoint_consent_on_postgres_with_a_late_peer_and_a_restart(
    tmp_path: Path, pg_database_factory: Callable[[], str]
) -> None:
    port, late_port = free_port(), free_port()
    own_url, late_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{late_port}"
    database_url = pg_database_factory()
    data_dir = tmp_path / "volumes" / "consent"  # does not exist yet
    env = _entrypoint_env(
        data_dir,
        port,
        TESSERA_NAME="consent",
        TESSERA_KIND="consent",
        TESSERA_DATABASE_URL=database_url,
        TESSERA_PEERS=f"{late_url}{DID_PATH}",
        TESSERA_PEER_ATTEMPTS="30",
        TESSERA_PEER_INTERVAL="1",
    )
    log = tmp_path / "entrypoint.log"
    late_serve = _connector(tmp_path, "utility", late_port)
    with _running(["sh", str(ENTRYPOINT)], env, log) as entrypoint:
        did = _wait_healthy(own_url, entrypoint, log)["did"]
        assert did == f"did:web:127.0.0.1%3A{port}"
        # A peer that starts after us is added once it answers.
        with _running(late_serve, _env(), tmp_path / "late.log") as late:
            late_did = f"did:web:127.0.0.1%3A{late_port}"
            _wait_for_text(log, f"peer {late_url}{DID_PATH} added: member {late_did} at {late_url}/dsp", 20)
            text = _log(log)
            assert text.index(f"peer {late_url}{DID_PATH} not there yet") < text.index("added: member")
            assert "giving up" not in _log(log)
            _stop(entrypoint, port, log)
            late.send_signal(signal.SIGTERM)
            late.wait(timeout=STOP_SECONDS)

    assert not (data_dir / "tessera.db").exists(), "the database is PostgreSQL"

    # The volume holds a consent service: started as a connector, the script refuses.
    wrong = subprocess.run(
        ["sh", str(ENTRYPOINT)],
        env={**env, "TESSERA_KIND": "connector"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert wrong.returncode == 1
    assert f"{data_dir} holds a consent, but TESSERA_KIND is 'connector'" in wrong.stderr

    # A restart reuses the volume: same DID, no name needed, nothing created.
    restart_env = {k: v for k, v in env.items() if k not in ("TESSERA_NAME", "TESSERA_PEERS")}
    restart_log = tmp_path / "restart.log"
    with _running(["sh", str(ENTRYPOINT)], restart_env, restart_log) as entrypoint:
        assert _wait_healthy(own_url, entrypoint, restart_log)["did"] == did
        _stop(entrypoint, port, restart_log, signal.SIGINT)
    assert "created" not in _log(restart_log)


@pytest.mark.parametrize(
    ("setup", "values", "message"),
    [
        ("stray", {"TESSERA_NAME": "city"}, "holds no tessera.toml but is not empty (stray.txt)"),
        ("", {}, "TESSERA_NAME is needed to create the participant"),
        (
            "",
            {"TESSERA_NAME": "city", "TESSERA_KIND": "broker"},
            "TESSERA_KIND must be 'connector' or 'consent'",
        ),
        ("", {"TESSERA_NAME": "city", "TESSERA_PEER_ATTEMPTS": "many"}, "TESSERA_PEER_ATTEMPTS must be"),
    ],
)
def test_entrypoint_refuses_with_one_line(
    tmp_path: Path, setup: str, values: dict[str, str], message: str
) -> None:
    data_dir = tmp_path / "volume"
    data_dir.mkdir()
    if setup == "stray":
        (data_dir / "stray.txt").write_text("not a participant")
    result = subprocess.run(
        ["sh", str(ENTRYPOINT)],
        env=_entrypoint_env(data_dir, free_port(), **values),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (data_dir / "tessera.toml").exists()
    if setup == "stray":
        assert [p.name for p in data_dir.iterdir()] == ["stray.txt"]


def test_tessera_data_dir_in_the_environment_does_not_move_the_participant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Containers commonly carry TESSERA_DATA_DIR; --dir must still say where keys and database are.
    init_participant(tmp_path / "city", "city", free_port())
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "elsewhere"))
    settings = load_settings(ParticipantSettings, tmp_path / "city")
    assert settings.data_dir == tmp_path / "city"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'city' / 'tessera.db'}"


def test_init_where_the_directory_cannot_be_made_is_one_line(tessera_cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = tessera_cli(
        "init", "--name", "city", "--port", "8001", "--dir", str(tmp_path / "a-file" / "city")
    )
    assert result.code == 1
    assert result.stderr.startswith(f"tessera: error: cannot create {tmp_path / 'a-file' / 'city'}")
    assert "Traceback" not in result.stderr
