"""``tessera assets``, ``tessera catalog`` and ``tessera search`` against running connectors.

Three connectors are made and joined with the real commands (``tessera init``,
``tessera dataspace add``) and run as real processes (``tessera serve``);
transit publishes through ``tessera assets add``. utility crawls in the
background every second; city only when asked (``search --crawl``).

Commands run through the CLI's own ``main`` in this process (``run``: the
same code, without two seconds of interpreter start-up per command); a few
run as real ``python -m connector`` processes (``cli``) to show the installed
command behaves the same.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.cli import main
from connector.cli.catalog_commands import resolve_participant
from runtime.errors import StartupError
from tests.conftest import CliResult, free_port
from tests.federated_helpers import TRAN, asset, contract_definition, policy, publish
from tests.helpers import assert_one_line_error, cli_env, run_parallel

pytestmark = pytest.mark.slow
NAMES = ("city", "transit", "utility")


def run(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """``tessera ARGS`` through the CLI's ``main``, in this process; ``env`` set meanwhile."""
    out, err = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return CliResult(code, out.getvalue(), err.getvalue())


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> CliResult:
    completed = subprocess.run(
        [sys.executable, "-m", "connector", *args],
        capture_output=True,
        text=True,
        env={**cli_env(), **(env or {})},
        timeout=timeout,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def ok(result: CliResult) -> str:
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


@dataclass(frozen=True)
class Connector:
    name: str
    data_dir: Path
    port: int

    @property
    def did(self) -> str:
        return f"did:web:127.0.0.1%3A{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dsp_url(self) -> str:
        return f"{self.url}/dsp/2025-1"

    @property
    def api_key(self) -> str:
        return (self.data_dir / "management-api-key").read_text().strip()

    def key(self) -> list[str]:
        return ["--key", str(self.data_dir / "keys" / "public-key.jwk")]

    def dir(self) -> list[str]:
        return ["--dir", str(self.data_dir)]


@dataclass
class Dataspace:
    root: Path
    members: dict[str, Connector]

    def __getitem__(self, name: str) -> Connector:
        return self.members[name]


def _wait_healthy(processes: dict[str, subprocess.Popen[bytes]], members: dict[str, Connector]) -> None:
    deadline = time.monotonic() + 45
    pending = set(processes)
    while pending:
        for name in sorted(pending):
            assert processes[name].poll() is None, (
                f"{name} exited: {(members[name].data_dir / 'serve.err').read_text()}"
            )
            try:
                if httpx.get(f"{members[name].url}/health", timeout=1).status_code == 200:
                    pending.discard(name)
            except httpx.HTTPError:
                pass
        assert time.monotonic() < deadline, f"{pending} did not start"
        time.sleep(0.1)


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def dataspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataspace]:
    root = tmp_path_factory.mktemp("dataspace")
    members = {name: Connector(name, root / name, free_port()) for name in NAMES}
    for c in members.values():
        ok(run("init", "--name", c.name, "--port", str(c.port), *c.dir()))
    for me in members.values():
        for other in members.values():
            if other is not me:
                ok(
                    run(
                        "dataspace",
                        "add",
                        *me.dir(),
                        "--did",
                        other.did,
                        "--url",
                        other.dsp_url,
                        *other.key(),
                    )
                )

    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for connector in members.values():
            interval = "1" if connector.name == "utility" else "0"
            with (
                (connector.data_dir / "serve.log").open("wb") as out,
                (connector.data_dir / "serve.err").open("wb") as err,
            ):
                processes[connector.name] = subprocess.Popen(
                    [sys.executable, "-m", "connector", "serve", *connector.dir()],
                    stdout=out,
                    stderr=err,
                    env={**cli_env(), "TESSERA_CATALOG_CRAWL_INTERVAL_SECONDS": interval},
                )
        _wait_healthy(processes, members)
        _publish_transit(root, members)
        yield Dataspace(root, members)
    finally:
        _stop(processes)
    for name, process in processes.items():
        # uvicorn shuts down, then re-raises the SIGTERM it caught: -15 is a clean stop; -9 is not.
        assert process.returncode in (0, -signal.SIGTERM), (
            f"{name} did not stop cleanly: {process.returncode}"
        )
        errors = (members[name].data_dir / "serve.err").read_text()
        assert "Traceback" not in errors, errors
        log = (members[name].data_dir / "serve.log").read_text()
        assert "crawl failed" not in log, log[-2000:]


def _publish_transit(root: Path, members: dict[str, Connector]) -> None:
    """transit: ridership and bus-stops for everyone, card-trips for utility only."""
    transit = members["transit"]
    with httpx.Client(base_url=transit.url, timeout=10) as client:
        publish(
            client,
            transit.api_key,
            [
                ("policydefinitions", policy("open")),
                ("policydefinitions", policy("utility-only", members["utility"].did)),
                ("contractdefinitions", contract_definition("public", "open", ["ridership", "bus-stops"])),
                ("contractdefinitions", contract_definition("restricted", "utility-only", ["card-trips"])),
            ],
        )
    bodies = {
        "ridership": asset("ridership", "Ridership by stop", keywords=("bus", "boardings")),
        "bus-stops": asset("bus-stops", "Bus stops", description="Every stop of the network."),
        "card-trips": asset("card-trips", "Card trips", keywords=("bus",), personal=True),
    }
    for asset_id, body in bodies.items():
        path = root / f"{asset_id}.json"
        path.write_text(json.dumps(body))
        assert ok(run("assets", "add", *transit.dir(), "--file", str(path))) == f"{asset_id}\n"


def run_all(calls: list[tuple[list[str], dict[str, str] | None]]) -> list[CliResult]:
    return [run(*args, env=env) for args, env in calls]


def _json(result: CliResult) -> Any:
    return json.loads(ok(result))


def test_assets_add_list_and_remove(dataspace: Dataspace) -> None:
    city = dataspace["city"]
    good = dataspace.root / "bike-counts.json"
    good.write_text(json.dumps(asset("bike-counts", "Bike counts", publisher="City")))
    invalid = dataspace.root / "no-address.json"
    invalid.write_text(json.dumps({k: v for k, v in asset("x", "X").items() if k != "dataAddress"}))
    not_json = dataspace.root / "not.json"
    not_json.write_text("{")

    assert ok(run("assets", "add", *city.dir(), "--file", str(good))) == "bike-counts\n"
    again, bad, broken, missing = run_all(
        [
            (["assets", "add", *city.dir(), "--file", str(good)], None),
            (["assets", "add", *city.dir(), "--file", str(invalid)], None),
            (["assets", "add", *city.dir(), "--file", str(not_json)], None),
            (["assets", "add", *city.dir(), "--file", str(dataspace.root / "nothing.json")], None),
        ],
    )
    assert_one_line_error(again, "HTTP 409", "ObjectConflict")
    assert_one_line_error(bad, "HTTP 400", "ValidationFailure", "dataAddress")
    assert_one_line_error(broken, "not.json", "is not JSON")
    assert_one_line_error(missing, "nothing.json", "does not exist")

    listed, table = run_all(
        [(["assets", "list", *city.dir(), "--json"], None), (["assets", "list", *city.dir()], None)]
    )
    assert [a["@id"] for a in _json(listed)] == ["bike-counts"]
    assert "bike-counts" in ok(table)
    assert "Bike counts" in table.stdout
    assert "1 asset(s)" in table.stdout

    assert ok(run("assets", "remove", *city.dir(), "--id", "bike-counts")) == "removed bike-counts\n"
    gone, listed = run_all(
        [
            (["assets", "remove", *city.dir(), "--id", "bike-counts"], None),
            (["assets", "list", *city.dir(), "--json"], None),
        ],
    )
    assert_one_line_error(gone, "HTTP 404", "ObjectNotFound", "bike-counts")
    assert _json(listed) == []


def test_catalog_shows_what_the_member_shows_us_with_its_offers(dataspace: Dataspace) -> None:
    city, transit, utility = dataspace["city"], dataspace["transit"], dataspace["utility"]
    port = str(transit.port)  # a unique part of transit's DID
    as_city, as_city_json, as_utility, by_did, unknown, ambiguous = run_all(
        [
            (["catalog", port, *city.dir()], None),
            (["catalog", port, *city.dir(), "--json"], None),
            (["catalog", port, *utility.dir(), "--json"], None),
            (["catalog", transit.did, *city.dir(), "--json"], None),
            (["catalog", "nobody", *city.dir()], None),
            (["catalog", "127.0.0.1", *city.dir()], None),
        ],
    )
    text = ok(as_city)
    assert text.startswith(f"{transit.did}: 2 dataset(s)\n")
    assert "- Bus stops  [bus-stops]" in text
    assert "- Ridership by stop  [ridership]" in text
    assert "publisher: Transit Authority" in text
    assert "permission use" in text
    assert text.count("  offer ") == 2
    assert "Card trips" not in text
    assert sorted(d["@id"] for d in _json(as_city_json)["dataset"]) == ["bus-stops", "ridership"]
    assert _json(by_did) == _json(as_city_json)
    assert sorted(d["@id"] for d in _json(as_utility)["dataset"]) == ["bus-stops", "card-trips", "ridership"]
    assert_one_line_error(unknown, "'nobody' is not a member")
    assert_one_line_error(ambiguous, "'127.0.0.1' matches several members")


def test_search_finds_crawled_datasets(dataspace: Dataspace) -> None:
    city, transit, utility = dataspace["city"], dataspace["transit"], dataspace["utility"]

    crawled = ok(run("search", "bus", *city.dir(), "--crawl"))
    assert "crawled 2 member(s): 2 ok" in crawled
    assert "Ridership" in crawled  # (a table: titles may wrap)
    assert "1-2 of 2 dataset(s)" in crawled

    words, filtered, none_personal, nothing = run_all(
        [
            (["search", "EVERY", "stop", *city.dir(), "--json"], None),
            (["search", *city.dir(), "--publisher", "Transit Authority", "--theme", TRAN, "--json"], None),
            (["search", *city.dir(), "--personal", "--json"], None),
            (["search", "harbour", *city.dir()], None),
        ],
    )
    assert [i["datasetId"] for i in _json(words)["items"]] == ["bus-stops"]
    page = _json(filtered)
    assert (page["total"], [i["datasetId"] for i in page["items"]]) == (2, ["bus-stops", "ridership"])
    assert page["items"][0]["participantId"] == transit.did
    assert _json(none_personal)["items"] == []  # card-trips is not shown to city
    assert "no datasets found" in ok(nothing)

    # The installed command does the same, as a process of its own.
    as_process = _json(cli("search", "bus", *city.dir(), "--json"))
    assert [i["datasetId"] for i in as_process["items"]] == ["bus-stops", "ridership"]

    # utility crawls by itself every second, and is shown card-trips.
    deadline = time.monotonic() + 20
    while True:
        status = httpx.get(
            f"{utility.url}/management/v3/federatedcatalog/status", headers={"X-Api-Key": utility.api_key}
        ).json()
        if any(row["participantId"] == transit.did and row["datasetCount"] == 3 for row in status):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    personal = _json(run("search", "bus", *utility.dir(), "--personal", "--json"))
    assert [(i["participantId"], i["datasetId"]) for i in personal["items"]] == [(transit.did, "card-trips")]


def test_commands_fail_in_one_line(dataspace: Dataspace, tmp_path: Path) -> None:
    city = dataspace["city"]
    offline = tmp_path / "offline"
    ok(run("init", "--name", "offline", "--port", str(free_port()), "--dir", str(offline)))
    wrong_key = {"TESSERA_MANAGEMENT_API_KEY": "not-the-right-key-at-all"}
    # As real processes: exit code and stderr exactly as an operator sees them.
    not_running, refused = run_parallel(
        cli, [(["search", "bus", "--dir", str(offline)], None), (["assets", "list", *city.dir()], wrong_key)]
    )
    assert_one_line_error(not_running, "connector offline does not answer", "is it running?")
    assert_one_line_error(refused, "HTTP 401", "AuthenticationFailed")

    no_dir, bad_limit, bad_offset, consent = run_all(
        [
            (["catalog", "x", "--dir", str(tmp_path / "nowhere")], None),
            (["search", *city.dir(), "--limit", "500"], None),
            (["search", *city.dir(), "--offset", "-1"], None),
            (
                [
                    "consent",
                    "init",
                    "--name",
                    "consent",
                    "--port",
                    str(free_port()),
                    "--dir",
                    str(tmp_path / "c"),
                ],
                None,
            ),
        ]
    )
    assert_one_line_error(no_dir, "tessera.toml does not exist")
    assert_one_line_error(bad_limit, "HTTP 400", "InvalidRequest", "limit")
    assert_one_line_error(bad_offset, "HTTP 400", "InvalidRequest", "offset")
    ok(consent)
    assert_one_line_error(
        run("search", "--dir", str(tmp_path / "c")), "is a consent service, not a connector"
    )


MEMBERS = [
    {"participantId": did}
    for did in (
        "did:web:city.example.org",
        "did:web:example.com:utility-city",
        "did:web:transit.example.org%3A8443",
        "did:web:example.org:members:utility",
    )
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("did:web:city.example.org", "did:web:city.example.org"),
        ("city", "did:web:city.example.org"),  # the first label of the host, before substrings
        ("transit.example.org", "did:web:transit.example.org%3A8443"),  # the host
        ("utility", "did:web:example.org:members:utility"),  # a path segment
        ("8443", "did:web:transit.example.org%3A8443"),  # a unique part
        ("utility-c", "did:web:example.com:utility-city"),
    ],
)
def test_a_participant_is_named_by_did_name_or_unique_part(query: str, expected: str) -> None:
    assert resolve_participant(MEMBERS, query)["participantId"] == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("example", "matches several members"),
        ("did:web:example", "matches several members"),
        ("nobody", "not a member"),
    ],
)
def test_a_participant_name_must_be_unambiguous(query: str, message: str) -> None:
    with pytest.raises(StartupError, match=message):
        resolve_participant(MEMBERS, query)
