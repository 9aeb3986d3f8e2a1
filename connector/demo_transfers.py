"""The demo's transfers, driven through the Management API as operators and their software would.

* transit pulls the city's ``bike-counts`` (HttpData-PULL): it asks for a
  transfer, receives a data address with a token in the city's start message,
  and downloads the file from the city's public endpoint;
* the city subscribes to transit's ``traffic-sensors`` live: a pull of an
  ``Mqtt`` asset, whose response streams one NDJSON line per sensor message
  until the transfer is suspended, completed or terminated;
* the utility pushes ``grid-load`` to the city (HttpData-PUSH with no
  destination): the city's connector creates a sink for it, and the file lands
  in the city's ``<data_dir>/sink/``.

The data address (EDR) a consumer received is read from the consumer's own
database, as its software would read its own store.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session

from catalog.vocabulary import DSP_PROTOCOL
from connector import demo_negotiate
from connector.dataplane.sink import read_sink
from connector.dsp.transfer_messages import endpoint_properties
from connector.transfer_models import TransferRow
from connector.transfers import edr_of
from runtime.database import make_engine
from runtime.settings import ParticipantSettings

WAIT_SECONDS = 60.0
EDC_VOCAB = {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"}
TRANSFERS = "/management/v3/transferprocesses"


def _client(settings: ParticipantSettings) -> httpx.Client:
    assert settings.management_api_key is not None
    return httpx.Client(
        base_url=settings.public_url,
        headers={"X-Api-Key": settings.management_api_key.get_secret_value()},
        timeout=15.0,
    )


def _agreement(consumer: ParticipantSettings, provider: ParticipantSettings, dataset: str) -> str:
    found = demo_negotiate.negotiated_already(consumer, provider, dataset)
    if found is None:
        raise RuntimeError(f"{consumer.name} holds no agreement for {provider.name}'s {dataset}")
    return found


def _request(consumer: ParticipantSettings, provider: ParticipantSettings, dataset: str, kind: str) -> str:
    body: dict[str, Any] = {
        "@context": EDC_VOCAB,
        "@type": "TransferRequest",
        "protocol": DSP_PROTOCOL,
        "counterPartyAddress": provider.dsp_url,
        "contractId": _agreement(consumer, provider, dataset),
        "transferType": kind,
    }
    if kind.endswith("-PULL"):
        body["dataDestination"] = {"type": "HttpProxy"}
    # A push without dataDestination: the consumer's connector makes a sink in its data directory.
    with _client(consumer) as client:
        response = client.post(TRANSFERS, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{consumer.name} could not ask for {dataset}: {response.text[:300]}")
        transfer_id: str = response.json()["@id"]
        return transfer_id


def wait_for(settings: ParticipantSettings, transfer_id: str, *states: str) -> dict[str, Any]:
    """The transfer (Management API form) once it is in one of ``states`` with nothing left to deliver."""
    deadline = time.monotonic() + WAIT_SECONDS
    with _client(settings) as client:
        while True:
            found: dict[str, Any] = client.get(f"{TRANSFERS}/{transfer_id}").json()
            if found.get("state") in states and "pendingMessage" not in found:
                return found
            if found.get("state") in ("TERMINATED", "COMPLETED") or time.monotonic() > deadline:
                raise RuntimeError(
                    f"transfer {transfer_id} is {found.get('state')}, not {' or '.join(states)}: "
                    f"{found.get('errorDetail', 'no reason given')}"
                )
            time.sleep(0.2)


def _edr(consumer: ParticipantSettings, transfer_id: str) -> tuple[str, str]:
    """(endpoint, token) of the data address the provider's start message carried."""
    engine = make_engine(consumer.resolved_database_url)
    try:
        with Session(engine) as session:
            row = session.get(TransferRow, transfer_id)
            address = edr_of(row) if row is not None else None
    finally:
        engine.dispose()
    if address is None:
        raise RuntimeError(f"{consumer.name} holds no data address for transfer {transfer_id}")
    return str(address["endpoint"]), endpoint_properties(address)["authorization"]


@dataclass(frozen=True)
class Pulled:
    transfer_id: str
    path: Path
    size: int


def pull(consumer: ParticipantSettings, provider: ParticipantSettings, dataset: str) -> Pulled:
    """A pull transfer, and one download into ``<consumer data_dir>/downloads/``.

    The transfer stays STARTED (its data address can be used again); the one an earlier run left
    so is completed first, so that runs do not pile up open transfers.
    """
    complete_earlier(consumer, provider, dataset)
    transfer_id = _request(consumer, provider, dataset, "HttpData-PULL")
    wait_for(consumer, transfer_id, "STARTED")
    endpoint, token = _edr(consumer, transfer_id)
    target = consumer.data_dir / "downloads"
    target.mkdir(exist_ok=True)
    path = target / f"{dataset}.csv"
    size = 0
    partial = path.with_suffix(".part")
    with (
        httpx.stream("GET", endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=30) as response,
        partial.open("wb") as out,
    ):
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"pulling {dataset} answered {response.status_code}: {response.text[:300]}")
        for chunk in response.iter_bytes():
            out.write(chunk)
            size += len(chunk)
    partial.replace(path)
    return Pulled(transfer_id, path, size)


@dataclass
class LiveSubscription:
    """A live transfer being read in a background thread, each message appended to ``path``."""

    consumer: ParticipantSettings
    transfer_id: str
    path: Path
    received: int = 0
    error: str | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, endpoint: str, token: str) -> None:
        self._thread = threading.Thread(
            target=self._read, args=(endpoint, token), name="demo-live", daemon=True
        )
        self._thread.start()

    def _read(self, endpoint: str, token: str) -> None:
        timeout = httpx.Timeout(15.0, read=None)  # live: a message a second, for as long as it runs
        try:
            with (
                httpx.stream(
                    "GET", endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
                ) as response,
                self.path.open("a", encoding="utf-8") as out,
            ):
                if response.status_code != 200:
                    response.read()
                    self.error = f"the provider answered {response.status_code}: {response.text[:200]}"
                    return
                for line in response.iter_lines():
                    if line.strip():
                        out.write(line + "\n")
                        out.flush()
                        self.received += 1
        except httpx.HTTPError as exc:
            self.error = f"the stream stopped: {exc}"

    def wait_for_messages(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.received < count and self.error is None and time.monotonic() < deadline:
            time.sleep(0.2)

    def complete(self) -> None:
        """End the subscription: the consumer completes the transfer, and the provider ends the stream."""
        with _client(self.consumer) as client:
            client.post(f"{TRANSFERS}/{self.transfer_id}/complete")
        if self._thread is not None:
            self._thread.join(timeout=10)


def complete_earlier(consumer: ParticipantSettings, provider: ParticipantSettings, dataset: str) -> int:
    """End the transfers of ``dataset`` a previous run left open (a pull, or a live subscription whose
    run was killed): STARTED ones are completed, SUSPENDED ones terminated; how many."""
    query = {
        "@context": EDC_VOCAB,
        "@type": "QuerySpec",
        "filterExpression": [
            {"operandLeft": "assetId", "operator": "=", "operandRight": dataset},
            {"operandLeft": "counterPartyId", "operator": "=", "operandRight": provider.did},
            {"operandLeft": "state", "operator": "in", "operandRight": ["STARTED", "SUSPENDED"]},
        ],
    }
    with _client(consumer) as client:
        found = client.post(f"{TRANSFERS}/request", json=query)
        found.raise_for_status()
        ended = 0
        for transfer in found.json():
            action = "complete" if transfer["state"] == "STARTED" else "terminate"
            if client.post(f"{TRANSFERS}/{transfer['@id']}/{action}").status_code == 204:
                ended += 1
        return ended


def subscribe(consumer: ParticipantSettings, provider: ParticipantSettings, dataset: str) -> LiveSubscription:
    """A live transfer whose messages are appended to ``<consumer data_dir>/live/<dataset>.ndjson``."""
    complete_earlier(consumer, provider, dataset)
    transfer_id = _request(consumer, provider, dataset, "HttpData-PULL")
    wait_for(consumer, transfer_id, "STARTED")
    endpoint, token = _edr(consumer, transfer_id)
    target = consumer.data_dir / "live"
    target.mkdir(exist_ok=True)
    subscription = LiveSubscription(consumer, transfer_id, target / f"{dataset}.ndjson")
    subscription.start(endpoint, token)
    return subscription


@dataclass(frozen=True)
class Pushed:
    transfer_id: str
    path: Path
    size: int


def push(consumer: ParticipantSettings, provider: ParticipantSettings, dataset: str) -> Pushed:
    """The provider pushes ``dataset`` into the consumer's sink; the file that arrived."""
    transfer_id = _request(consumer, provider, dataset, "HttpData-PUSH")
    found = wait_for(consumer, transfer_id, "COMPLETED")
    endpoint = str(found.get("dataDestination", {}).get("endpoint", ""))
    record = read_sink(consumer.data_dir, endpoint.rstrip("/").rsplit("/", 1)[-1])
    if record is None or record.received_path is None:
        raise RuntimeError(f"the push of {dataset} completed but nothing is in {consumer.name}'s sink")
    return Pushed(transfer_id, record.received_path, record.received_bytes or 0)
