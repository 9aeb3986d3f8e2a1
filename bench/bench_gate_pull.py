"""The consent gate inside a real pull: 1,000,000 NDJSON records through the connector and the consent service.

``bench_gate`` measures the record filter alone, in-process, with a gate that always answers
at once. This one measures what a user gets: three real processes (``tessera serve``, SQLite)
— the consent service, transit (the provider, configured with the consent service) and city
(the consumer) — and a pull through transit's public data endpoint with the token of city's
EDR: token check, usage control, framing, the personal-data gate asking the consent service
over HTTP (keyed subject hashes, one decision request per batch of 1,000 records, answers
reused within the release for at most a second), re-joining, and the transfer summary sent
afterwards.

The consent service holds 50,000 citizens, each with a registered card and one consent
record (even ones gave consent, odd ones refused; bulk-seeded as ``bench_consent`` does).
The file holds 1,000,000 trips of those cards, so half the records are released.

Baseline in the same run: the same file, published as a non-personal asset under the same
kind of agreement, pulled the same way (no framing, no gate).

Figures: records per second (records read from the source / wall time of the pull) and the
provider process's peak memory growth during the pull (its peak RSS is reset through
``/proc/PID/clear_refs`` before each pull). Target: at least 200,000 records/s, memory flat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session

from bench.bench_consent import seed
from bench.common import BenchResult, Figure, Measure, Target
from bench.processes import environment_for, free_port, server_environment, serving
from catalog.jsonld import EDC_NS
from catalog.vocabulary import DSP_PROTOCOL
from connector.dsp.transfer_messages import endpoint_properties
from connector.settings import ConnectorSettings
from connector.transfer_models import TransferRow
from connector.transfers import edr_of
from consent.hashing import new_pseudonym_key
from consent.settings import ConsentSettings
from identity.keys import load_private_key, public_jwk
from identity.trustlist import add_member
from runtime.database import make_engine
from runtime.participant import init_participant
from runtime.service import prepare_database
from runtime.settings import load_settings

NAME = "gate_pull"
TITLE = "consent gate in a real pull (records/s, provider peak memory)"
SUBJECTS = 50_000
PURPOSE = "traffic-planning"
TARGET_RECORDS_PER_SECOND = 200_000
TARGET_MEMORY_MIB = 50
EDC = {"@vocab": EDC_NS}
READ_CHUNK = 1024 * 1024
SUMMARY_REQUESTS = SUBJECTS // 2 // 1000  # a gated pull's summary: the consenting half, 1,000 a request


def write_trips(path: Path, count: int) -> int:
    """``count`` card trips of the seeded cards (``card-{i:08d}``, i < SUBJECTS), one JSON object a line."""
    with path.open("wb") as handle:
        for start in range(0, count, 10_000):
            handle.write(
                b"".join(
                    b'{"card_id": "card-%08d", "from": "Central", "to": "University", '
                    b'"departed": "2026-11-01T08:%02d:00+00:00", "n": %d}\n' % (n % SUBJECTS, n % 60, n)
                    for n in range(start, min(count, start + 10_000))
                )
            )
    return path.stat().st_size


def _memory_kib(pid: int) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        return True
    except OSError:
        return False


def _summary_requests(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if "/transfer-summaries" in line)


def _summaries_in(log: Path, expected: int, timeout: float = 300) -> None:
    """Wait until the consent service has taken ``expected`` summary requests (they write its database)."""
    deadline = time.monotonic() + timeout
    while _summary_requests(log) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_summary_requests(log)} of {expected} transfer summaries arrived")
        time.sleep(0.2)


def _cli(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "connector", *args], check=True, capture_output=True, env=server_environment()
    )


def _publish(api: httpx.Client, asset_id: str, path: Path, personal: bool) -> None:
    permission = {"action": "use", "constraint": [{"leftOperand": "purpose", "operator": "eq", "rightOperand": PURPOSE}]}  # fmt: skip
    policy = {"@context": EDC, "@type": "PolicyDefinition", "@id": f"use-{asset_id}", "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", "@type": "Set", "permission": [permission]}}  # fmt: skip
    open_access = {"@context": EDC, "@type": "PolicyDefinition", "@id": f"access-{asset_id}", "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", "@type": "Set", "permission": []}}  # fmt: skip
    properties: dict[str, Any] = {}
    if personal:
        properties = {"https://w3id.org/tessera/v1/ns/personal": True,
                      "https://w3id.org/tessera/v1/ns/subjectField": "card_id",
                      "https://w3id.org/tessera/v1/ns/consentPurpose": PURPOSE}  # fmt: skip
    asset = {"@context": EDC, "@id": asset_id, "properties": properties, "dataAddress": {"type": "File", "path": str(path)}}  # fmt: skip
    definition = {"@context": EDC, "@id": f"offer-{asset_id}", "accessPolicyId": f"access-{asset_id}", "contractPolicyId": f"use-{asset_id}", "assetsSelector": [{"operandLeft": "https://w3id.org/edc/v0.0.1/ns/id", "operator": "=", "operandRight": asset_id}]}  # fmt: skip
    for route, body in (("policydefinitions", policy), ("policydefinitions", open_access), ("assets", asset), ("contractdefinitions", definition)):  # fmt: skip
        response = api.post(f"/management/v3/{route}", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{route}: {response.status_code} {response.text[:500]}")


def _wait(api: httpx.Client, path: str, states: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Any] = api.get(path).json()
        if found.get("state") in states and "pendingMessage" not in found:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} stayed {found.get('state')}: {found}")
        time.sleep(0.05)


def _agree_and_start(city: httpx.Client, transit: ConnectorSettings, asset_id: str) -> str:
    catalog = city.post("/management/v3/catalog/request", json={"@context": EDC, "@type": "CatalogRequest", "counterPartyId": transit.did, "counterPartyAddress": transit.dsp_url, "protocol": DSP_PROTOCOL}).json()  # fmt: skip
    offer = next(d["hasPolicy"][0] for d in catalog["dataset"] if d["@id"] == asset_id)
    body = {"@context": EDC, "@type": "ContractRequest", "counterPartyId": transit.did, "counterPartyAddress": transit.dsp_url, "protocol": DSP_PROTOCOL, "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", **{k: v for k, v in offer.items() if k != "@type"}, "@type": "Offer", "target": asset_id}}  # fmt: skip
    negotiation_id = city.post("/management/v3/contractnegotiations", json=body).json()["@id"]
    found = _wait(city, f"/management/v3/contractnegotiations/{negotiation_id}", ("FINALIZED", "TERMINATED"))
    if found["state"] != "FINALIZED":
        raise RuntimeError(f"negotiation for {asset_id} failed: {found}")
    request = {"@context": EDC, "@type": "TransferRequest", "protocol": DSP_PROTOCOL, "counterPartyAddress": transit.dsp_url, "contractId": found["contractAgreementId"], "transferType": "HttpData-PULL", "dataDestination": {"type": "HttpProxy"}, "purpose": PURPOSE}  # fmt: skip
    transfer_id = str(city.post("/management/v3/transferprocesses", json=request).json()["@id"])
    _wait(city, f"/management/v3/transferprocesses/{transfer_id}", ("STARTED",))
    return transfer_id


def _edr(settings: ConnectorSettings, transfer_id: str) -> tuple[str, str]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            row = session.get(TransferRow, transfer_id)
            address = edr_of(row) if row else None
    finally:
        engine.dispose()
    if address is None:
        raise RuntimeError("city holds no EDR")
    return address["endpoint"], endpoint_properties(address)["authorization"]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _pull(client: httpx.Client, url: str, token: str, pid: int, consent_pid: int) -> dict[str, float]:
    reset = _reset_peak(pid)
    rss_before, _ = _memory_kib(pid)
    cpu_before = _cpu_seconds(pid), _cpu_seconds(consent_pid)
    started = time.perf_counter()
    received = lines = 0
    with client.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.read()[:300]!r}")
        for chunk in response.iter_raw(READ_CHUNK):
            received += len(chunk)
            lines += chunk.count(b"\n")
    seconds = time.perf_counter() - started
    _, peak = _memory_kib(pid)
    cpu = _cpu_seconds(pid) - cpu_before[0], _cpu_seconds(consent_pid) - cpu_before[1]
    return {"seconds": seconds, "bytes": received, "records": lines, "provider_cpu": cpu[0], "consent_cpu": cpu[1],
            "growth_mib": (peak - rss_before) / 1024 if reset else float("nan")}  # fmt: skip


def run(quick: bool) -> BenchResult:
    count = 100_000 if quick else 1_000_000
    rounds = 2
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tessera-bench-gate-pull-") as tmp:
        root = Path(tmp)
        ports = {name: free_port() for name in ("consent", "transit", "city")}
        init_participant(root / "consent", "consent", ports["consent"], kind="consent")
        for name in ("transit", "city"):
            init_participant(root / name, name, ports[name])
        with environment_for(None):
            consent = load_settings(ConsentSettings, root / "consent")
            prepare_database(consent, "consent")
        transit = load_settings(ConnectorSettings, root / "transit")
        city = load_settings(ConnectorSettings, root / "city")
        with (root / "transit" / "tessera.toml").open("a") as config:
            config.write(
                f'consent_service_url = "{consent.public_url}"\nconsent_service_did = "{consent.did}"\n'
            )
        transit = load_settings(ConnectorSettings, root / "transit")
        for me, peer, url in (
            (root / "transit", city, city.dsp_url),
            (root / "city", transit, transit.dsp_url),
            (root / "transit", consent, consent.api_url),
        ):
            _cli("dataspace", "add", "--dir", str(me), "--did", peer.did, "--url", url, "--key", str(peer.data_dir / "keys" / "public-key.jwk"))  # fmt: skip
        engine = make_engine(consent.resolved_database_url)
        try:
            with Session(engine) as session:
                transit_key = load_private_key(transit.resolved_private_key_file)
                add_member(session, transit.did, transit.dsp_url, public_jwk(transit_key.public_key()))
            _agreement, _hashes, seed_s = seed(
                engine, SUBJECTS, new_pseudonym_key(), controller=transit.did, recipient=city.did
            )
        finally:
            engine.dispose()
        data = root / "transit" / "files"
        data.mkdir()
        trips = data / "card-trips.ndjson"
        size = write_trips(trips, count)
        env = server_environment(TESSERA_LOG_LEVEL="warning")
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "gated": []}
        with (
            serving(
                "consent", root / "consent", consent.public_url, root / "consent.log", server_environment()
            ) as consent_process,
            serving("transit", root / "transit", transit.public_url, root / "transit.log", env) as provider,
            serving("city", root / "city", city.public_url, root / "city.log", env),
            httpx.Client(
                base_url=transit.public_url,
                headers={"X-Api-Key": (root / "transit" / "management-api-key").read_text().strip()},
                timeout=60,
            ) as tapi,  # fmt: skip
            httpx.Client(
                base_url=city.public_url,
                headers={"X-Api-Key": (root / "city" / "management-api-key").read_text().strip()},
                timeout=60,
            ) as capi,  # fmt: skip
            httpx.Client(timeout=600) as client,
        ):
            _publish(tapi, "card-trips-plain", trips, personal=False)
            _publish(tapi, "card-trips", trips, personal=True)
            plain_url, plain_token = _edr(city, _agree_and_start(capi, transit, "card-trips-plain"))
            gated_id = _agree_and_start(capi, transit, "card-trips")
            gated_url, gated_token = _edr(city, gated_id)
            try:
                _pull(
                    client, plain_url, plain_token, provider.pid, consent_process.pid
                )  # warm the page cache, imports, the index
                for done in range(1, rounds + 1):
                    runs["plain"].append(
                        _pull(client, plain_url, plain_token, provider.pid, consent_process.pid)
                    )
                    runs["gated"].append(
                        _pull(client, gated_url, gated_token, provider.pid, consent_process.pid)
                    )
                    _summaries_in(root / "consent.log", done * SUMMARY_REQUESTS)  # not during the next pull
            except RuntimeError as exc:
                detail = capi.get(f"/management/v3/transferprocesses/{gated_id}").json().get("errorDetail")
                raise RuntimeError(f"{exc}; the gated transfer says: {detail}") from None
            provider_notes = [
                t.get("errorDetail")
                for t in tapi.post("/management/v3/transferprocesses/request", json={}).json()
            ]
            summaries = _summary_requests(root / "consent.log")
    for run_ in runs["gated"]:
        if run_["records"] != count // 2:
            raise RuntimeError(
                f"the gated pull released {run_['records']} records, not {count // 2}: {provider_notes}"
            )
    for run_ in runs["plain"]:
        if run_["records"] != count:
            raise RuntimeError(f"the plain pull served {run_['records']} records, not {count}")
    best_plain = min(runs["plain"], key=lambda r: r["seconds"])
    best_gated = min(runs["gated"], key=lambda r: r["seconds"])
    rate_plain, rate_gated = count / best_plain["seconds"], count / best_gated["seconds"]
    base_rate = Measure("same file, non-personal asset (no gate), same pull", rate_plain, "records/s")
    gated_growth = max(r["growth_mib"] for r in runs["gated"])
    plain_growth = max(r["growth_mib"] for r in runs["plain"])
    # Robust to other load on the machine: records per CPU-second of the provider and the consent service.
    gated_cpu = best_gated["provider_cpu"] + best_gated["consent_cpu"]
    plain_cpu = best_plain["provider_cpu"] + best_plain["consent_cpu"]
    figures = [
        Figure("records/s through the consent gate, real pull", rate_gated, "records/s", base_rate),
        Figure(
            "records per CPU-second (provider + consent service), gated pull",
            count / gated_cpu,
            "records/s",
            Measure("records per CPU-second, plain pull", count / max(plain_cpu, 1e-9), "records/s"),
        ),
        Figure(
            "provider peak memory growth, gated pull",
            gated_growth,
            "MiB",
            Measure("provider peak memory growth, plain pull", plain_growth, "MiB"),
        ),
    ]
    return BenchResult(
        name=NAME,
        title=TITLE,
        figures=figures,
        targets=[
            Target(
                "at least 200,000 records/s through the consent gate in a real pull",
                figures[0].label,
                TARGET_RECORDS_PER_SECOND,
                "records/s",
                "at_least",
                rate_gated,
            ),
            Target(
                "memory flat (provider peak growth under 50 MiB)",
                figures[2].label,
                TARGET_MEMORY_MIB,
                "MiB",
                "at_most",
                gated_growth,
            ),
        ],
        notes=[
            f"{count:,} NDJSON records ({size / 1e6:.0f} MB) of {SUBJECTS:,} cards; half the cards' holders "
            f"consented, so {count // 2:,} records are released; consent service seeded in {seed_s:.1f} s",
            f"best of {rounds} pulls each, alternating; three tessera serve processes on SQLite, loopback; "
            f"{summaries} transfer-summary request(s) reached the consent service; CPU of the gated pull: "
            f"provider {best_gated['provider_cpu']:.1f} s, consent service {best_gated['consent_cpu']:.1f} s",
            f"load average (1 min) when the benchmark started: {load:.2f} on {os.cpu_count()} CPUs "
            "(the machine is shared: figures vary between runs)",
        ],
        parameters={"mode": "quick" if quick else "full", "records": count, "subjects": SUBJECTS},
    )


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv).to_json(), indent=1))
