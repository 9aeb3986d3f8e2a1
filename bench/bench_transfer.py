"""Transfers: pull throughput of a large file through the connector, and transfer start latency.

Two connectors (city provides, transit consumes) run as real ``tessera serve``
processes on SQLite. Transit agrees on a file asset (a real negotiation) and
pulls it from city's public data endpoint with the token of its EDR: token
check, transfer state and usage control (the policy engine, the access counted
in the database) are all in the path. The baseline is the same file served by
a plain static file server (``python -m http.server``) in the same run, read by
the same client code.

Start latency: from ``POST /management/v3/transferprocesses`` at transit until
transit's transfer is STARTED (provider answered, start message delivered,
both connectors persisting), polling every 10 ms; baseline: one plain HTTP
round trip to the provider (``GET /health``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session

from bench.common import BenchResult, Figure, Measure, Target, percentile
from bench.processes import free_port, server_environment, serving
from catalog.jsonld import EDC_NS
from catalog.vocabulary import DSP_PROTOCOL
from connector.settings import ConnectorSettings
from connector.transfer_models import TransferRow
from connector.transfers import edr_of
from runtime.database import make_engine
from runtime.participant import init_participant
from runtime.settings import load_settings

MIB = 1024 * 1024
# A plain async static file server (no token, no policy, no database): Starlette's StaticFiles on uvicorn.
ASYNC_STATIC_SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
app = Starlette(routes=[Mount("/", StaticFiles(directory=sys.argv[1]))])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""
READ_CHUNK = 1024 * 1024
EDC = {"@vocab": EDC_NS}


def _make_file(path: Path, size: int) -> None:
    block = bytes(range(256)) * (MIB // 256)
    with path.open("wb") as out:
        for _ in range(size // MIB):
            out.write(block)


def _read_all(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[int, float]:
    started = time.perf_counter()
    received = 0
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.read()[:300]!r}")
        for chunk in response.iter_raw(READ_CHUNK):
            received += len(chunk)
    return received, time.perf_counter() - started


def _memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak since start) of a process, in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def _api(data_dir: Path, base_url: str) -> httpx.Client:
    key = (data_dir / "management-api-key").read_text().strip()
    return httpx.Client(base_url=base_url, headers={"X-Api-Key": key}, timeout=60)


def _cli(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "connector", *args], check=True, capture_output=True, env=server_environment()
    )


def _publish(api: httpx.Client, path: Path) -> None:
    policy = {"@context": EDC, "@type": "PolicyDefinition", "@id": "open", "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", "@type": "Set", "permission": []}}  # fmt: skip
    asset = {
        "@context": EDC,
        "@id": "big",
        "properties": {},
        "dataAddress": {"type": "File", "path": str(path)},
    }
    definition = {"@context": EDC, "@id": "offer-big", "accessPolicyId": "open", "contractPolicyId": "open", "assetsSelector": []}  # fmt: skip
    for route, body in (
        ("policydefinitions", policy),
        ("assets", asset),
        ("contractdefinitions", definition),
    ):
        response = api.post(f"/management/v3/{route}", json=body)
        response.raise_for_status()


def _wait(
    api: httpx.Client, path: str, states: tuple[str, ...], pause: float = 0.01, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Any] = api.get(path).json()
        if found.get("state") in states:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} stayed {found.get('state')}: {found}")
        time.sleep(pause)


def _agree(tapi: httpx.Client, city_did: str, city_dsp: str) -> str:
    catalog = tapi.post("/management/v3/catalog/request", json={"@context": EDC, "@type": "CatalogRequest", "counterPartyId": city_did, "counterPartyAddress": city_dsp, "protocol": DSP_PROTOCOL}).json()  # fmt: skip
    offer = next(d["hasPolicy"][0] for d in catalog["dataset"] if d["@id"] == "big")
    body = {"@context": EDC, "@type": "ContractRequest", "counterPartyId": city_did, "counterPartyAddress": city_dsp, "protocol": DSP_PROTOCOL, "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", **{k: v for k, v in offer.items() if k != "@type"}, "@type": "Offer", "target": "big"}}  # fmt: skip
    negotiation_id = tapi.post("/management/v3/contractnegotiations", json=body).json()["@id"]
    found = _wait(tapi, f"/management/v3/contractnegotiations/{negotiation_id}", ("FINALIZED", "TERMINATED"))
    if found["state"] != "FINALIZED":
        raise RuntimeError(f"negotiation failed: {found}")
    agreement_id: str = found["contractAgreementId"]
    return agreement_id


def _start(tapi: httpx.Client, city_dsp: str, agreement_id: str, pause: float) -> tuple[str, float]:
    body = {"@context": EDC, "@type": "TransferRequest", "protocol": DSP_PROTOCOL, "counterPartyAddress": city_dsp, "contractId": agreement_id, "transferType": "HttpData-PULL", "dataDestination": {"type": "HttpProxy"}}  # fmt: skip
    started = time.perf_counter()
    transfer_id: str = tapi.post("/management/v3/transferprocesses", json=body).json()["@id"]
    _wait(tapi, f"/management/v3/transferprocesses/{transfer_id}/state", ("STARTED",), pause)
    return transfer_id, (time.perf_counter() - started) * 1000


def _edr(settings: ConnectorSettings, transfer_id: str) -> tuple[str, str]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            row = session.get(TransferRow, transfer_id)
            address = edr_of(row) if row else None
    finally:
        engine.dispose()
    if address is None:
        raise RuntimeError("transit holds no EDR")
    token = next(p["value"] for p in address["endpointProperties"] if p["name"] == "authorization")
    return address["endpoint"], token


def run(quick: bool) -> BenchResult:
    size = (128 if quick else 1024) * MIB
    rounds = 2 if quick else 3
    starts = 20 if quick else 100
    with tempfile.TemporaryDirectory(prefix="tessera-bench-transfer-") as tmp:
        root = Path(tmp)
        ports = {"city": free_port(), "transit": free_port()}
        for name, port in ports.items():
            init_participant(root / name, name, port)
        city = load_settings(ConnectorSettings, root / "city")
        transit = load_settings(ConnectorSettings, root / "transit")
        for me, other in (("city", "transit"), ("transit", "city")):
            peer = city if other == "city" else transit
            _cli("dataspace", "add", "--dir", str(root / me), "--did", peer.did, "--url", peer.dsp_url, "--key", str(root / other / "keys" / "public-key.jwk"))  # fmt: skip
        data = root / "city" / "files"
        data.mkdir()
        big = data / "big.bin"
        _make_file(big, size)
        static_port, async_port = free_port(), free_port()
        async_static = subprocess.Popen(
            [sys.executable, "-c", ASYNC_STATIC_SERVER, str(data), str(async_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        static = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(static_port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(data),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = server_environment()
        try:
            with (
                serving("city", root / "city", city.public_url, root / "city.log", env) as city_process,
                serving("transit", root / "transit", transit.public_url, root / "transit.log", env),
                _api(root / "city", city.public_url) as capi,
                _api(root / "transit", transit.public_url) as tapi,
                httpx.Client(timeout=120) as client,
            ):
                _publish(capi, big)
                agreement_id = _agree(tapi, city.did, city.dsp_url)
                transfer_id, _ = _start(tapi, city.dsp_url, agreement_id, 0.01)
                endpoint, token = _edr(transit, transfer_id)
                for port in (static_port, async_port):
                    for _ in range(100):  # a static server is up once it answers
                        try:
                            client.head(f"http://127.0.0.1:{port}/big.bin")
                            break
                        except httpx.HTTPError:
                            time.sleep(0.1)
                ours, plain, uvicorn_static = [], [], []
                rss_before = _memory_kib(city_process.pid, "VmRSS")
                for _ in range(rounds):
                    received, seconds = _read_all(client, endpoint, {"Authorization": f"Bearer {token}"})
                    assert received == size, received
                    ours.append(size / MIB / seconds)
                    received, seconds = _read_all(client, f"http://127.0.0.1:{static_port}/big.bin", {})
                    assert received == size, received
                    plain.append(size / MIB / seconds)
                    received, seconds = _read_all(client, f"http://127.0.0.1:{async_port}/big.bin", {})
                    assert received == size, received
                    uvicorn_static.append(size / MIB / seconds)
                rss_growth_mib = (_memory_kib(city_process.pid, "VmHWM") - rss_before) / 1024
                latencies = sorted(_start(tapi, city.dsp_url, agreement_id, 0.01)[1] for _ in range(starts))
                round_trips = []
                for _ in range(starts):
                    began = time.perf_counter()
                    client.get(f"{city.public_url}/health")
                    round_trips.append((time.perf_counter() - began) * 1000)
                round_trips.sort()
        finally:
            for server in (static, async_static):
                server.terminate()
                server.wait(timeout=10)
    best, baseline = max(ours), max(plain)
    label = f"pull throughput, {size // MIB} MiB file (best of {rounds})"
    figures = [
        Figure(
            label, best, "MiB/s", Measure("python -m http.server, same file and client", baseline, "MiB/s")
        ),
        Figure(
            f"pull throughput, {size // MIB} MiB file, vs an async static server",
            best,
            "MiB/s",
            Measure("uvicorn + Starlette StaticFiles, same file and client", max(uvicorn_static), "MiB/s"),
        ),
        Figure(f"provider peak memory growth while serving {rounds} pulls", rss_growth_mib, "MiB"),
        Figure(
            "transfer start latency p50",
            percentile(latencies, 0.5),
            "ms",
            Measure("GET /health round trip p50", percentile(round_trips, 0.5), "ms"),
        ),
        Figure(
            "transfer start latency p99",
            percentile(latencies, 0.99),
            "ms",
            Measure("GET /health round trip p99", percentile(round_trips, 0.99), "ms"),
        ),
    ]
    ratio = best / baseline if baseline else 0.0
    return BenchResult(
        name="transfer",
        title="Pull throughput and transfer start latency (two connectors, SQLite, loopback)",
        figures=figures,
        targets=[
            Target(
                "pull throughput at least 70% of a plain static file server",
                label,
                0.7,
                "ratio",
                "at_least",
                ratio,
            ),
            Target(
                "provider memory grows by less than 50 MiB while serving the file",
                f"provider peak memory growth while serving {rounds} pulls",
                50,
                "MiB",
                "at_most",
                rss_growth_mib,
            ),
        ],
        notes=[
            f"every round: ours {', '.join(f'{v:.0f}' for v in ours)} MiB/s; http.server "
            f"{', '.join(f'{v:.0f}' for v in plain)} MiB/s; uvicorn StaticFiles {', '.join(f'{v:.0f}' for v in uvicorn_static)} MiB/s",
            "python -m http.server copies in small blocks on one thread: a weak baseline; the uvicorn one is stronger",
            "start latency includes the consumer's polling of its own state every 10 ms",
            "memory growth: the provider's peak RSS (VmHWM) after the pulls minus its RSS before them",
            "the machine is shared with other work: figures vary from run to run",
        ],
        parameters={"file_bytes": size, "rounds": rounds, "starts": starts, "database": "sqlite"},
    )


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv).to_json(), indent=2))
