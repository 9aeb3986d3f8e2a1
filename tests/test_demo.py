"""The demo data space as a user runs it: `tessera demo`, five processes, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.auditor_helpers import auditor_client
from tests.conftest import CliResult

NAMES = ("city", "transit", "utility", "consent")
PORTS = 5  # the four participants and the embedded MQTT broker


def _free_ports() -> int:
    """A base port with the four ports after it free too."""
    for base in range(21000, 60000, 37):
        socks = []
        try:
            for offset in range(PORTS):
                sock = socket.socket()
                sock.bind(("127.0.0.1", base + offset))
                socks.append(sock)
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no five consecutive free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # SO_REUSEADDR ignores connections in TIME_WAIT but still fails on a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _start_demo(root: Path, base_port: int, *options: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector",
            "demo",
            "--dir",
            str(root),
            "--base-port",
            str(base_port),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _read_until_ready(process: subprocess.Popen[str], timeout: float = 120) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    output = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output += line
        if "Press Ctrl-C" in line:
            return output
    raise AssertionError(f"demo did not become ready:\n{output}")


def _check_passwords(consent_dir: Path, passwords: dict[str, str]) -> None:
    """Each printed password signs its citizen in (checked against the consent service's accounts)."""
    from sqlmodel import Session

    from consent.accounts import verify_password
    from runtime.database import make_engine

    engine = make_engine(f"sqlite:///{consent_dir / 'tessera.db'}")
    try:
        with Session(engine) as session:
            for name, password in passwords.items():
                assert verify_password(session, name, password) is not None, f"{name}'s printed password"
    finally:
        engine.dispose()


def _stop(process: subprocess.Popen[str]) -> None:
    """Interrupt like a user would; kill only if that fails (the children die with the demo)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _interrupt(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    return process.returncode, rest


@pytest.mark.slow
def test_demo_runs_four_participants_and_stops_cleanly(tmp_path: Path, tessera_cli) -> None:
    root = tmp_path / "demo"
    base = _free_ports()
    process = _start_demo(root, base)
    try:
        output = _read_until_ready(process)
        for offset, name in enumerate(NAMES):
            url = f"http://127.0.0.1:{base + offset}"
            assert url in output, f"{name}'s URL is printed"
            health = httpx.get(f"{url}/health", timeout=5)
            assert health.status_code == 200
            assert health.json()["database"] == "ok"
            assert (root / name / "tessera.db").exists(), "each participant has its own SQLite file"

        # Each connector's catalog shows each peer only what its access policies allow.
        seen = {
            (m.group(1), m.group(2)): m.group(3).strip()
            for m in re.finditer(r"^\s+(\w+)\s+sees in (\w+):\s+(.*)$", output, re.MULTILINE)
        }
        assert seen == {
            ("transit", "city"): "bike-counts",
            ("utility", "city"): "bike-counts",
            ("city", "transit"): "card-trips, ridership-by-stop, traffic-sensors",
            ("utility", "transit"): "ridership-by-stop",
            ("city", "utility"): "grid-load, smart-meter-readings",
            ("transit", "utility"): "(nothing)",
        }

        # Transit agrees on bike-counts automatically; the city on card-trips with transit's manual approval.
        assert re.search(r"transit <- city's bike-counts: FINALIZED \(city agreed automatically\); "
                         r"agreement \S+ signed by provider and consumer", output)  # fmt: skip
        assert re.search(r"city <- transit's card-trips: FINALIZED \(transit's operator approved it by hand\); "
                         r"agreement \S+ signed by provider and consumer", output)  # fmt: skip

        # Citizens: alice consents, bob does not, carol withdrew; the city's pull holds alice's trips only.
        passwords = dict(re.findall(r"sign in at \S+ as (alice|bob|carol) / (\S+)", output))
        assert set(passwords) == {"alice", "bob", "carol"}
        _check_passwords(root / "consent", passwords)
        assert "city pulled card-trips: 6 record(s) released (card-alice: 6), 36 withheld" in output
        assert re.search(r"alice's page shows: \S+ received 6 of her records \(card-trips, for traffic-planning\)",
                         output)  # fmt: skip

        _check_transfers(root, output)
        _check_audit_commands(output, tessera_cli)

        # Everyone trusts everyone else: an authenticated call works between any two.
        for name in NAMES:
            result: CliResult = tessera_cli("dataspace", "list", "--json", "--dir", str(root / name))
            assert result.code == 0, result.stderr
            members = {m["did"] for m in json.loads(result.stdout)}
            assert len(members) == 3
        city_did = f"did:web:127.0.0.1%3A{base}"
        consent_did = f"did:web:127.0.0.1%3A{base + 3}"
        ping = tessera_cli("dataspace", "ping", "--dir", str(root / "transit"), "--did", city_did)
        assert ping.code == 0, ping.stderr
        ping = tessera_cli("dataspace", "ping", "--dir", str(root / "utility"), "--did", consent_did)
        assert ping.code == 0, ping.stderr

        # The demo's auditor sees city's log: its four agreements (bike-counts as provider; card-trips,
        # traffic-sensors and grid-load as consumer), each proof served for the page to check.
        password = (root / "city" / "auditor-password").read_text().strip()
        with auditor_client(f"http://127.0.0.1:{base}", "auditor", password) as auditor:
            timeline = auditor.get("/ui/audit", params={"kind": "agreements"})
        assert timeline.status_code == 200
        assert timeline.text.count("Agreement finalized") == 4, timeline.text[-3000:]

        code, rest = _interrupt(process)
        assert code == 0, rest
        assert "demo stopped" in rest
        assert "live subscription completed after" in rest
        assert all(_port_free(base + offset) for offset in range(PORTS)), "nothing is left listening"
    finally:
        _stop(process)

    # A second run reuses the state: no new participants, same identities.
    dids_before = {name: (root / name / "keys" / "public-key.jwk").read_text() for name in NAMES}
    process = _start_demo(root, base)
    try:
        output = _read_until_ready(process)
        assert "created connector" not in output
        assert "bike-counts (kept)" in output  # published once, found in place the second time
        assert "transit already holds agreement" in output  # negotiated once
        assert "city already holds agreement" in output
        _check_transfers(root, output)  # transfers run again under the same agreements
        # The first run's pull, left STARTED, was completed: runs do not pile up open transfers.
        assert _pull_states(root, output) == ["COMPLETED", "STARTED"]
        assert {name: (root / name / "keys" / "public-key.jwk").read_text() for name in NAMES} == dids_before
        # Killed outright (no chance to clean up), the demo still takes its participants with it.
        process.kill()
        process.communicate(timeout=30)
        deadline = time.monotonic() + 20
        while not all(_port_free(base + offset) for offset in range(PORTS)):
            assert time.monotonic() < deadline, "participants outlived a killed demo"
            time.sleep(0.5)
    finally:
        _stop(process)


def _check_audit_commands(output: str, tessera_cli) -> None:
    """The demo prints how to export and verify the city's log: those commands work as printed."""
    commands = [
        shlex.split(m.group(1)) for m in re.finditer(r"^\s+\$ (tessera audit .+)$", output, re.MULTILINE)
    ]
    assert [c[:3] for c in commands] == [["tessera", "audit", "export"], ["tessera", "audit", "verify"]], (
        output
    )
    exported = tessera_cli(*commands[0][1:])
    assert exported.code == 0, exported.stderr
    verified = tessera_cli(*commands[1][1:])
    assert verified.code == 0, verified.stdout + verified.stderr
    assert "VERIFIED" in verified.stdout
    assert "agreement(s): documents match the log, signatures verify" in verified.stdout
    # The city holds transit's receipt for the pull it served and the utility's statements of its push.
    assert "transfer receipt(s): the counter-party's signatures verify" in verified.stdout


def _check_transfers(root: Path, output: str) -> None:
    """Transit pulled bike-counts, the city receives traffic-sensors live, the utility pushed grid-load."""
    pulled = re.search(r"transit pulled city's bike-counts: ([\d,]+) bytes into (\S+) ", output)
    assert pulled, output
    path = Path(pulled.group(2))
    assert path == root / "transit" / "downloads" / "bike-counts.csv"
    assert path.stat().st_size == int(pulled.group(1).replace(",", "")) > 0
    assert path.read_bytes() == (root / "city" / "demo-data" / "bike-counts.csv").read_bytes()

    live = re.search(r"city subscribed to transit's traffic-sensors live: (\d+) messages received so far, "
                     r"appended to (\S+) ", output)  # fmt: skip
    assert live, output
    assert int(live.group(1)) >= 3
    messages = Path(live.group(2))
    assert messages == root / "city" / "live" / "traffic-sensors.ndjson"
    before = len(messages.read_text().splitlines())
    deadline = time.monotonic() + 30
    while len(messages.read_text().splitlines()) <= before:  # still streaming, a reading a second
        assert time.monotonic() < deadline, "no new live message arrived"
        time.sleep(0.5)
    last = json.loads(messages.read_text().splitlines()[-1])
    assert {"datastream", "result", "phenomenonTime"} <= set(last)

    pushed = re.search(r"utility pushed grid-load to city: ([\d,]+) bytes arrived as (\S+) ", output)
    assert pushed, output
    received = Path(pushed.group(2))
    assert received.parent == root / "city" / "sink"
    assert received.read_bytes() == (root / "utility" / "demo-data" / "grid-load.csv").read_bytes()
    assert int(pushed.group(1).replace(",", "")) == received.stat().st_size
    assert not list((root / "city" / "sink" / ".partial").glob("*")), "nothing half-written"
    assert f"{_url_of(output, 'city')}/ui/transfers" in output
    _check_operator_pages(root, output)


def _pull_states(root: Path, output: str) -> list[str]:
    """The states of transit's transfers of the city's bike-counts, sorted (its Management API)."""
    key = (root / "transit" / "management-api-key").read_text().strip()
    query = {
        "@context": {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"},
        "@type": "QuerySpec",
        "filterExpression": [{"operandLeft": "assetId", "operator": "=", "operandRight": "bike-counts"}],
    }
    found = httpx.post(
        f"{_url_of(output, 'transit')}/management/v3/transferprocesses/request",
        json=query,
        headers={"X-Api-Key": key},
        timeout=10,
    )
    assert found.status_code == 200, found.text
    return sorted(transfer["state"] for transfer in found.json())


def _signed_in(base_url: str, key: str) -> httpx.Client:
    """A client signed in to a connector's operator pages, as a browser would (form, cookies)."""
    client = httpx.Client(base_url=base_url, timeout=10)
    form = client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text
    signed = client.post("/ui/login", data={"csrf_token": token.group(1), "next": "/ui", "api_key": key})
    assert signed.status_code == 303, signed.text
    return client


def _check_operator_pages(root: Path, output: str) -> None:
    """The operator pages the demo points to show its transfers: transit's live one, the city's pushed file."""
    for name, expected in (
        ("transit", ("traffic-sensors", "live", "bike-counts", "STARTED")),
        ("city", ("bike-counts", "traffic-sensors", "grid-load", "COMPLETED", str(root / "city" / "sink"))),
    ):
        key = (root / name / "management-api-key").read_text().strip()
        client = _signed_in(_url_of(output, name), key)
        try:
            page = client.get("/ui/transfers")
        finally:
            client.close()
        assert page.status_code == 200
        for text in expected:
            assert text in page.text, f"{name}'s transfer page does not show {text!r}"


def _url_of(output: str, name: str) -> str:
    found = re.search(rf"^\s+{name}\s+connector\s+(\S+)", output, re.MULTILINE)
    assert found, output
    return found.group(1)


@pytest.mark.slow
def test_demo_streams_live_data_from_a_configured_broker(tmp_path: Path) -> None:
    """With --mqtt-broker (the local Mosquitto) the demo starts no broker of its own and publishes there."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 1883)) != 0:
            pytest.skip("no MQTT broker at 127.0.0.1:1883")
    root = tmp_path / "demo"
    base = _free_ports()
    process = _start_demo(root, base, "--mqtt-broker", "127.0.0.1:1883")
    try:
        output = _read_until_ready(process)
        assert _port_free(base + 4), "no embedded broker was started"
        _check_transfers(root, output)
        address = json.loads(
            httpx.get(
                f"http://127.0.0.1:{base + 1}/management/v3/assets/traffic-sensors",
                headers={"X-Api-Key": (root / "transit" / "management-api-key").read_text().strip()},
                timeout=10,
            ).text
        )["dataAddress"]
        assert "127.0.0.1:1883" in json.dumps(address)
        code, rest = _interrupt(process)
        assert code == 0, rest
    finally:
        _stop(process)


def test_demo_refuses_a_port_in_use(tmp_path: Path) -> None:
    base = _free_ports()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base + 2))
        blocker.listen(1)
        process = _start_demo(tmp_path / "demo", base)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"port {base + 2} on 127.0.0.1 is in use" in output
    assert "Traceback" not in output
