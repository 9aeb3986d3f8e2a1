"""``tessera demo``: a small data space on 127.0.0.1.

Creates (where missing) the connectors city, transit and utility and the
consent service, makes every participant a member of every other's trust
list, runs each as its own process and waits until all answer ``/health``.
A fifth process runs the road sensors (``connector.demo_sensors``): an
embedded MQTT broker, unless ``--mqtt-broker`` names one, and a publisher.
Then the participants publish, negotiate and transfer (``demo_transfers``).
Ctrl-C stops them all; a second run reuses their directories and databases.
"""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console
from sqlmodel import Session

from connector import demo_consent, demo_negotiate, demo_transfers
from connector.auditor.demo_accounts import DEMO_AUDITOR, PASSWORD_FILE, ensure_demo_auditor
from connector.demo_seed import MEMBERSHIPS, seed, visible_datasets
from connector.settings import ConnectorSettings
from consent.settings import ConsentSettings
from identity.trustlist import add_member
from runtime.database import make_engine
from runtime.errors import StartupError
from runtime.participant import PUBLIC_KEY_FILE, init_participant
from runtime.service import bind_socket, prepare_database
from runtime.settings import CONFIG_FILE, ParticipantSettings, load_settings

console = Console()
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
SENSORS_OFFSET = 4  # the embedded MQTT broker's port: base port + 4
LIVE_REPORT_SECONDS = 30.0


@dataclass(frozen=True)
class DemoParticipant:
    name: str
    kind: str
    offset: int


PARTICIPANTS = (
    DemoParticipant("city", "connector", 0),
    DemoParticipant("transit", "connector", 1),
    DemoParticipant("utility", "connector", 2),
    DemoParticipant("consent", "consent", 3),
)


def _ensure_participants(root: Path, base_port: int) -> list[ParticipantSettings]:
    settings = []
    for participant in PARTICIPANTS:
        data_dir = root / participant.name
        port = base_port + participant.offset
        if not (data_dir / CONFIG_FILE).exists():
            init_participant(data_dir, participant.name, port, kind=participant.kind)
            console.print(f"created {participant.kind} {participant.name} in {data_dir}")
        kind: type[ParticipantSettings] = (
            ConnectorSettings if participant.kind == "connector" else ConsentSettings
        )
        loaded = load_settings(kind, data_dir)
        if loaded.port != port:
            raise StartupError(
                f"{data_dir} was created for port {loaded.port}, not {port}: use --base-port "
                f"{base_port - port + loaded.port} or remove {root}"
            )
        settings.append(loaded)
    return settings


def _base_url(settings: ParticipantSettings) -> str:
    return settings.api_url if settings.kind == "consent" else settings.dsp_url  # type: ignore[attr-defined]


def _fill_trust_lists(all_settings: list[ParticipantSettings]) -> None:
    from consent.settings import ConsentSettings

    typed = [load_settings(ConsentSettings, s.data_dir) if s.kind == "consent" else s for s in all_settings]
    for settings in typed:
        prepare_database(settings, settings.kind)
        engine = make_engine(settings.resolved_database_url)
        with Session(engine) as session:
            for other in typed:
                if other.did == settings.did:
                    continue
                jwk = json.loads((other.data_dir / PUBLIC_KEY_FILE).read_text())
                base = other.api_url if isinstance(other, ConsentSettings) else other.dsp_url
                add_member(
                    session, other.did, base, jwk, source="demo", memberships=[MEMBERSHIPS[other.name]]
                )
        engine.dispose()


def _check_ports_free(all_settings: list[ParticipantSettings]) -> None:
    for settings in all_settings:
        bind_socket(settings.host, settings.port).close()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the demo process dies.

    The children run in their own sessions (so Ctrl-C reaches only the demo,
    which stops them in order); without this, a demo killed with SIGKILL
    would leave them running.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start(settings: ParticipantSettings) -> tuple[subprocess.Popen[bytes], Path]:
    return _spawn(["connector", "serve", "--dir", str(settings.data_dir)], settings.data_dir / "service.log")


def _start_sensors(root: Path, port: int, broker: str | None) -> tuple[subprocess.Popen[bytes], Path]:
    arguments = ["connector.demo_sensors", *(["--broker", broker] if broker else ["--port", str(port)])]
    return _spawn(arguments, root / "sensors.log")


def _wait_for_broker(broker: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    host, _, port = broker.partition(":")
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise StartupError(f"the sensors stopped with code {process.returncode}:\n{_tail(log_path)}")
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise StartupError(f"no MQTT broker answers at {broker}") from None
            time.sleep(0.2)


def _spawn(module_and_arguments: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log_file = log_path.open("ab")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        [sys.executable, "-m", *module_and_arguments],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops the children in order
        preexec_fn=_die_with_parent,  # runs before exec; every child starts before the demo's one thread
    )
    log_file.close()
    return process, log_path


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_healthy(processes: dict[str, tuple[subprocess.Popen[bytes], Path]], urls: dict[str, str]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    pending = set(processes)
    with httpx.Client(timeout=2.0) as client:
        while pending:
            for name in sorted(pending):
                process, log_path = processes[name]
                if process.poll() is not None:
                    raise StartupError(
                        f"{name} exited with code {process.returncode} while starting; its log says:\n"
                        f"{_tail(log_path)}"
                    )
                try:
                    if client.get(f"{urls[name]}/health").status_code == 200:
                        pending.discard(name)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise StartupError(f"{', '.join(sorted(pending))} did not become healthy in time")
            if pending:
                time.sleep(0.2)


def _stop(processes: dict[str, tuple[subprocess.Popen[bytes], Path]]) -> None:
    for process, _ in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process, _ in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _publish(all_settings: list[ParticipantSettings], broker: str) -> None:
    """Each connector publishes its datasets; then show who sees what in whose catalog."""
    connectors = [s for s in all_settings if s.kind == "connector"]
    for settings in connectors:
        published = seed(settings, broker)
        print(f"{settings.name} publishes: {', '.join(published)}", flush=True)
    print("\nCatalogs as each member sees them (access policies applied by the provider):", flush=True)
    for provider in connectors:
        for consumer in connectors:
            if consumer.name != provider.name:
                seen = visible_datasets(consumer, provider)
                print(
                    f"  {consumer.name:8} sees in {provider.name + ':':9} {', '.join(seen) or '(nothing)'}",
                    flush=True,
                )


def _negotiate(all_settings: list[ParticipantSettings]) -> None:
    """Transit agrees on bike-counts automatically; the city on card-trips with transit's manual approval,
    and automatically on transit's traffic-sensors and the utility's grid-load."""
    by_name = {s.name: s for s in all_settings}
    city, transit, utility = by_name["city"], by_name["transit"], by_name["utility"]
    print("\nContract negotiations:", flush=True)
    for consumer, provider, dataset, manual in (
        (transit, city, "bike-counts", False),
        (city, transit, "card-trips", True),
        (city, transit, "traffic-sensors", False),
        (city, utility, "grid-load", False),
    ):
        existing = demo_negotiate.negotiated_already(consumer, provider, dataset)
        if existing:
            print(
                f"  {consumer.name} already holds agreement {existing} for {provider.name}'s {dataset}",
                flush=True,
            )
            continue
        negotiation = demo_negotiate.start(consumer, provider, dataset)
        if manual:
            demo_negotiate.approve_as_provider(provider, consumer, dataset)
            how = f"{provider.name}'s operator approved it by hand"
        else:
            how = f"{provider.name} agreed automatically"
        agreement = demo_negotiate.finish(consumer, negotiation)
        signed = " and ".join(agreement.get("signedBy", [])) or "nobody"
        print(f"  {consumer.name} <- {provider.name}'s {dataset}: FINALIZED ({how}); agreement {agreement['@id']} "
              f"signed by {signed}", flush=True)  # fmt: skip


def _transfer(all_settings: list[ParticipantSettings]) -> demo_transfers.LiveSubscription:
    """Transit pulls bike-counts; the city subscribes to traffic-sensors live; the utility pushes grid-load."""
    by_name = {s.name: s for s in all_settings}
    city, transit, utility = by_name["city"], by_name["transit"], by_name["utility"]
    print("\nTransfers:", flush=True)
    pulled = demo_transfers.pull(transit, city, "bike-counts")
    print(f"  transit pulled city's bike-counts: {pulled.size:,} bytes into {pulled.path} "
          f"(transfer {pulled.transfer_id}, still STARTED)", flush=True)  # fmt: skip
    live = demo_transfers.subscribe(city, transit, "traffic-sensors")
    live.wait_for_messages(3)
    if live.error:
        raise StartupError(f"the live subscription to traffic-sensors failed: {live.error}")
    print(f"  city subscribed to transit's traffic-sensors live: {live.received} messages received so far, "
          f"appended to {live.path} (transfer {live.transfer_id})", flush=True)  # fmt: skip
    pushed = demo_transfers.push(city, utility, "grid-load")
    print(f"  utility pushed grid-load to city: {pushed.size:,} bytes arrived as {pushed.path} "
          f"(transfer {pushed.transfer_id}, COMPLETED)", flush=True)  # fmt: skip
    return live


def _print_audit(all_settings: list[ParticipantSettings], root: Path) -> None:
    """How to export the city's signed transfer log and check it offline (receipts included)."""
    city = next(s for s in all_settings if s.name == "city")
    bundle = root / "city-audit.zip"
    print(
        "\nAudit: the city's signed transfer log (agreements, transfers, the counter-parties' receipts),\n"
        "exported as a bundle and checked offline with nothing but public keys:\n"
        f"  $ tessera audit export --dir {shlex.quote(str(city.data_dir))} -o {shlex.quote(str(bundle))}\n"
        f"  $ tessera audit verify {shlex.quote(str(bundle))}",
        flush=True,
    )


def _print_summary(all_settings: list[ParticipantSettings], root: Path) -> None:
    lines = ["", "Tessera demo data space is running:", ""]
    for settings in all_settings:
        lines.append(f"  {settings.name:8} {settings.kind:9} {settings.public_url}   {settings.did}")
    lines += ["", "Open:"]
    for settings in all_settings:
        lines.append(f"  {settings.public_url}/health")
        lines.append(f"  {settings.public_url}/.well-known/did.json")
        if settings.kind == "connector":
            lines.append(f"  {settings.public_url}/.well-known/dspace-version")
        lines.append(f"  {settings.public_url}/docs   (API reference)")
    lines += ["", "Operator pages (sign in with the participant's management API key):"]
    for settings in all_settings:
        if settings.kind == "connector":
            lines.append(f"  {settings.public_url}/ui/transfers   ({settings.name}'s transfers)")
    lines += [
        "",
        f"State and logs: {root}/<participant>/ (service.log, tessera.db)",
        f"Management API keys: {root}/<participant>/management-api-key (header X-Api-Key)",
        f"Audit pages: <connector URL>/ui/audit, sign in as {DEMO_AUDITOR!r} with the password in "
        f"{root}/<connector>/{PASSWORD_FILE}",
        f"Try: tessera dataspace ping --dir {root / 'transit'} --did '{all_settings[0].did}'",
        "Press Ctrl-C to stop everything.",
    ]
    print("\n".join(lines), flush=True)


def _end_live(live: demo_transfers.LiveSubscription) -> None:
    """Complete the live subscription, so that a second run does not find it STARTED."""
    try:
        live.complete()
        console.print(f"live subscription completed after {live.received} messages")
    except httpx.HTTPError:
        pass  # the connectors are going down anyway; the next run completes what is left


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(root: Path, base_port: int = 8001, mqtt_broker: str | None = None) -> None:
    root = root.resolve()
    all_settings = _ensure_participants(root, base_port)
    demo_consent.configure_connectors(all_settings)
    _fill_trust_lists(all_settings)
    _check_ports_free(all_settings)
    sensors_port = base_port + SENSORS_OFFSET
    if mqtt_broker is None:
        bind_socket("127.0.0.1", sensors_port).close()
    broker = mqtt_broker.removeprefix("mqtt://") if mqtt_broker else f"127.0.0.1:{sensors_port}"
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    processes: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    live: demo_transfers.LiveSubscription | None = None
    try:
        for settings in all_settings:
            processes[settings.name] = _start(settings)
        processes["sensors"] = _start_sensors(root, sensors_port, mqtt_broker)
        _wait_healthy(
            {n: p for n, p in processes.items() if n != "sensors"},
            {s.name: s.public_url for s in all_settings},
        )
        _wait_for_broker(broker, *processes["sensors"])
        _publish(all_settings, broker)
        _negotiate(all_settings)
        by_name = {s.name: s for s in all_settings}
        city_trips = demo_negotiate.negotiated_already(by_name["city"], by_name["transit"], "card-trips")
        demo_consent.show_consent_gated_pull(all_settings, city_trips)
        live = _transfer(all_settings)
        for settings in all_settings:
            if settings.kind == "connector":
                ensure_demo_auditor(settings)
        _print_audit(all_settings, root)
        _print_summary(all_settings, root)
        reported = time.monotonic()
        while True:
            for name, (process, log_path) in processes.items():
                if process.poll() is not None:
                    raise StartupError(f"{name} stopped with code {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() - reported > LIVE_REPORT_SECONDS:
                reported = time.monotonic()
                print(f"live: {live.received} traffic-sensors messages received so far", flush=True)
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        if live is not None:
            _end_live(live)
        _stop(processes)
        signal.signal(signal.SIGTERM, previous)
    console.print("demo stopped; state kept in " + str(root))
