"""EDRs: time from ``POST /management/v3/edrs`` to a usable data address, beside the same chain by hand.

Two connectors (city provides, transit consumes) run as real ``tessera serve``
processes on SQLite. Each round negotiates afresh. Measured: from
``POST /edrs`` at transit until ``GET /edrs/{id}/dataaddress`` answers
(negotiation to FINALIZED, the pull transfer started by itself, city's start
message delivered, both connectors persisting). Baseline, in the same run: a
client driving the same steps itself (``/contractnegotiations``, poll until
FINALIZED, ``/transferprocesses``, poll until STARTED, read the data address),
polling at the same 2 ms interval. Transfer start latency alone is in
``bench_transfer``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.bench_transfer import EDC, _api, _cli, _publish, _wait
from bench.common import BenchResult, Figure, Measure, percentile
from bench.processes import free_port, server_environment, serving
from catalog.vocabulary import DSP_PROTOCOL
from connector.settings import ConnectorSettings
from runtime.participant import init_participant
from runtime.settings import load_settings

PAUSE = 0.002


def _contract_request(tapi: httpx.Client, city: ConnectorSettings) -> dict[str, Any]:
    catalog = tapi.post("/management/v3/catalog/request", json={"@context": EDC, "@type": "CatalogRequest", "counterPartyId": city.did, "counterPartyAddress": city.dsp_url, "protocol": DSP_PROTOCOL}).json()  # fmt: skip
    offer = next(d["hasPolicy"][0] for d in catalog["dataset"] if d["@id"] == "big")
    policy = {"@context": "http://www.w3.org/ns/odrl.jsonld", **{k: v for k, v in offer.items() if k != "@type"}, "@type": "Offer", "target": "big"}  # fmt: skip
    return {"@context": EDC, "@type": "ContractRequest", "counterPartyId": city.did, "counterPartyAddress": city.dsp_url, "protocol": DSP_PROTOCOL, "policy": policy}  # fmt: skip


def _entry(tapi: httpx.Client, negotiation_id: str, timeout: float = 60) -> str:
    query = {"@context": EDC, "@type": "QuerySpec", "filterExpression": [{"operandLeft": "contractNegotiationId", "operator": "=", "operandRight": negotiation_id}]}  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        found = tapi.post("/management/v3/edrs/request", json=query).json()
        if found:
            transfer_id: str = found[0]["transferProcessId"]
            return transfer_id
        if time.monotonic() > deadline:
            raise RuntimeError(f"no EDR for negotiation {negotiation_id}")
        time.sleep(PAUSE)


def _address(tapi: httpx.Client, transfer_id: str) -> None:
    response = tapi.get(f"/management/v3/edrs/{transfer_id}/dataaddress")
    if response.status_code != 200 or "authorization" not in response.json():
        raise RuntimeError(f"no data address for {transfer_id}: {response.text[:300]}")


def _by_edr(tapi: httpx.Client, request: dict[str, Any]) -> float:
    started = time.perf_counter()
    negotiation_id = tapi.post("/management/v3/edrs", json=request).json()["@id"]
    _address(tapi, _entry(tapi, negotiation_id))
    return (time.perf_counter() - started) * 1000


def _by_hand(tapi: httpx.Client, request: dict[str, Any], city: ConnectorSettings) -> float:
    started = time.perf_counter()
    negotiation_id = tapi.post("/management/v3/contractnegotiations", json=request).json()["@id"]
    found = _wait(tapi, f"/management/v3/contractnegotiations/{negotiation_id}", ("FINALIZED",), PAUSE)
    body = {"@context": EDC, "@type": "TransferRequest", "protocol": DSP_PROTOCOL, "counterPartyAddress": city.dsp_url, "contractId": found["contractAgreementId"], "transferType": "HttpData-PULL", "dataDestination": {"type": "HttpProxy"}}  # fmt: skip
    transfer_id = tapi.post("/management/v3/transferprocesses", json=body).json()["@id"]
    _wait(tapi, f"/management/v3/transferprocesses/{transfer_id}/state", ("STARTED",), PAUSE)
    _address(tapi, transfer_id)
    return (time.perf_counter() - started) * 1000


def run(quick: bool) -> BenchResult:
    rounds = 8 if quick else 40
    with tempfile.TemporaryDirectory(prefix="tessera-bench-edr-") as tmp:
        root = Path(tmp)
        ports = {"city": free_port(), "transit": free_port()}
        for name, port in ports.items():
            init_participant(root / name, name, port)
        city = load_settings(ConnectorSettings, root / "city")
        transit = load_settings(ConnectorSettings, root / "transit")
        for me, other in (("city", "transit"), ("transit", "city")):
            peer = city if other == "city" else transit
            _cli("dataspace", "add", "--dir", str(root / me), "--did", peer.did, "--url", peer.dsp_url, "--key", str(root / other / "keys" / "public-key.jwk"))  # fmt: skip
        (root / "city" / "files").mkdir()
        small = root / "city" / "files" / "big.bin"
        small.write_bytes(b"x" * 1024)
        env = server_environment()
        with (
            serving("city", root / "city", city.public_url, root / "city.log", env),
            serving("transit", root / "transit", transit.public_url, root / "transit.log", env),
            _api(root / "city", city.public_url) as capi,
            _api(root / "transit", transit.public_url) as tapi,
        ):
            _publish(capi, small)
            request = _contract_request(tapi, city)
            _by_edr(tapi, request)  # warm both paths once
            _by_hand(tapi, request, city)
            edr, hand = [], []
            for _ in range(rounds):  # interleaved, so load on the machine hits both alike
                edr.append(_by_edr(tapi, request))
                hand.append(_by_hand(tapi, request, city))
    edr.sort()
    hand.sort()
    figures = [
        Figure(
            f"POST /edrs to data address p{q}",
            percentile(edr, q / 100),
            "ms",
            Measure(f"the same steps driven by the client p{q}", percentile(hand, q / 100), "ms"),
        )
        for q in (50, 99)
    ]
    return BenchResult(
        name="edr",
        title="EDR negotiation to a usable data address (two connectors, SQLite, loopback)",
        figures=figures,
        notes=[
            "each round is a new negotiation and a new pull transfer; polling every 2 ms on both paths",
            f"{rounds} rounds of each, interleaved",
            "the EDR path polls POST /edrs/request (a QuerySpec, as Tractus-X clients do); the manual path "
            "polls GET .../{id}: each poll costs the connector more on the EDR path",
        ],
        parameters={"rounds": rounds},
    )
