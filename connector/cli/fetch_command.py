"""``tessera fetch PARTICIPANT DATASET --purpose P -o FILE``: from a catalog to a file, in one command.

The steps run through our own connector's Management API, as an operator
would run them: ask the member's catalog, pick the dataset's offer (one that
names the purpose, if any does), negotiate and wait for FINALIZED, request a
pull transfer declaring the purpose and wait for STARTED, read the EDR (its
token refreshed if due) and download from the provider's data plane with a
progress bar. The bytes go to a temporary file beside FILE, renamed to FILE
only once complete; the transfer is then completed. If a step fails or times
out, every step's standing is printed (with the states and reasons the
connectors recorded) and the exit status is 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from catalog.vocabulary import DSP_PROTOCOL, EDC_NS
from connector.cli.catalog_commands import _remote_catalog, resolve_participant
from connector.cli.common import DirOption
from connector.cli.management_client import ManagementCallError, ManagementClient
from runtime.errors import StartupError

NEGOTIATIONS = "/management/v3/contractnegotiations"
TRANSFERS = "/management/v3/transferprocesses"
EDRS = "/management/v3/edrs"
POLL_SECONDS = 0.2
CHUNK_BYTES = 256 * 1024
STEPS = ("catalog", "negotiation", "transfer", "download")


class FetchStopped(Exception):
    """A step failed or timed out; the message says how."""


@dataclass
class Progress:
    """Where each step stands, for the report when something stops."""

    lines: dict[str, str] = field(default_factory=lambda: dict.fromkeys(STEPS, "not started"))

    def done(self, step: str, detail: str) -> None:
        self.lines[step] = f"✓ {detail}"

    def note(self, step: str, detail: str) -> None:
        self.lines[step] = detail

    def report(self) -> str:
        return "\n".join(f"  {step:<12} {self.lines[step]}" for step in STEPS)


def _purposes(offer: dict[str, Any]) -> set[str]:
    """The purposes an offer's constraints name (any operator)."""
    found: set[str] = set()
    rules = offer.get("permission") or []
    for rule in rules if isinstance(rules, list) else [rules]:
        constraints = (rule.get("constraint") or []) if isinstance(rule, dict) else []
        for constraint in constraints if isinstance(constraints, list) else [constraints]:
            if isinstance(constraint, dict) and str(constraint.get("leftOperand", "")).endswith("purpose"):
                right = constraint.get("rightOperand")
                found.update(str(v) for v in (right if isinstance(right, list) else [right]))
    return found


def pick_dataset(datasets: list[dict[str, Any]], wanted: str) -> dict[str, Any]:
    """The dataset whose id is ``wanted``, else the one whose title is."""
    for dataset in datasets:
        if dataset.get("@id") == wanted:
            return dataset
    titled = [d for d in datasets if str(d.get("dct:title", "")).casefold() == wanted.casefold()]
    if len(titled) == 1:
        return titled[0]
    offered = ", ".join(str(d.get("@id")) for d in datasets) or "none"
    raise FetchStopped(f"{wanted!r} is not in the catalog (offered to you: {offered})")


def pick_offer(dataset: dict[str, Any], purpose: str) -> dict[str, Any]:
    """An offer naming ``purpose`` if there is one, else one naming no purpose, else the first."""
    found = dataset.get("hasPolicy") or []
    offers = [o for o in (found if isinstance(found, list) else [found]) if isinstance(o, dict)]
    if not offers:
        raise FetchStopped(f"{dataset.get('@id')} has no offer for you")
    for candidates in (
        [o for o in offers if purpose in _purposes(o)],
        [o for o in offers if not _purposes(o)],
        offers,
    ):
        if candidates:
            return candidates[0]
    raise AssertionError("unreachable")


def _contract_request(member: dict[str, Any], dataset_id: str, offer: dict[str, Any]) -> dict[str, Any]:
    policy = {k: v for k, v in offer.items() if k != "@type"}
    return {
        "@context": {"@vocab": EDC_NS},
        "@type": "ContractRequest",
        "counterPartyId": member["participantId"],
        "counterPartyAddress": member["dspUrl"],
        "protocol": DSP_PROTOCOL,
        "policy": {
            "@context": "http://www.w3.org/ns/odrl.jsonld",
            **policy,
            "@type": "Offer",
            "target": dataset_id,
        },
    }


def _state_line(found: dict[str, Any]) -> str:
    reason = found.get("errorDetail")
    return f"{found.get('state')}" + (f": {reason}" if reason else "")


def _wait(
    client: ManagementClient,
    path: str,
    goal: str,
    failed: tuple[str, ...],
    deadline: float,
    progress: Progress,
    step: str,
) -> dict[str, Any]:
    """Poll ``path`` until its state is ``goal`` (and nothing is left to send); stop on ``failed``."""
    while True:
        found = client.call("GET", path).body
        if not isinstance(found, dict):
            raise FetchStopped(f"{path} did not answer an object")
        progress.note(step, _state_line(found) + f" ({found.get('@id')})")
        state = found.get("state")
        if state == goal and "pendingMessage" not in found:
            return found
        # The reasons are in the report's line for the step; the headline says only where it stopped.
        if state in failed:
            raise FetchStopped(f"the {step} ended {state}")
        if time.monotonic() > deadline:
            progress.note(step, f"{progress.lines[step]} — timed out")
            raise FetchStopped(f"the {step} is still {state}: timed out")
        time.sleep(POLL_SECONDS)


def _download(endpoint: str, token: str, target: Path, timeout: float, progress: Progress) -> int:
    """Stream the data into a temporary file beside ``target``; rename it only when complete."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Bar

    if not endpoint.startswith(("http://", "https://")):
        raise FetchStopped(f"the data address's endpoint {endpoint!r} is not an HTTP URL")
    target = target.resolve()
    handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    received = 0
    try:
        with (
            os.fdopen(handle, "wb") as out,
            httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=False) as http,
            http.stream("GET", endpoint, headers={"Authorization": f"Bearer {token}"}) as response,
        ):
            if response.status_code != 200:
                response.read()
                raise FetchStopped(f"the provider answered HTTP {response.status_code}: {_said(response)}")
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            columns = (
                TextColumn(target.name),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            with Bar(*columns, console=Console(stderr=True), transient=False) as bar:
                task = bar.add_task("download", total=total)
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(task, completed=received)
                    progress.note("download", f"{received} bytes so far")
            if total is not None and received != total:
                raise FetchStopped(f"the connection closed after {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    except httpx.HTTPError as exc:
        raise FetchStopped(
            f"the download failed after {received} bytes: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return received


def _said(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:300]
    return str(body)[:300]


def fetch(
    client: ManagementClient, participant: str, dataset_id: str, purpose: str, output: Path, timeout: float
) -> tuple[int, str]:
    """Run every step; (bytes written, the transfer id). FetchStopped (with ``progress``) when one fails."""
    progress = Progress()
    try:
        return _run(client, participant, dataset_id, purpose, output, timeout, progress)
    except (FetchStopped, ManagementCallError, StartupError) as exc:
        raise FetchStopped(f"{exc}\n{progress.report()}") from None


def _run(
    client: ManagementClient,
    participant: str,
    dataset_id: str,
    purpose: str,
    output: Path,
    timeout: float,
    progress: Progress,
) -> tuple[int, str]:
    progress.note("catalog", "asking")
    members = client.call("GET", "/management/v3/federatedcatalog/status").body
    member = resolve_participant(members if isinstance(members, list) else [], participant)
    dataset = pick_dataset(_remote_catalog(client, member), dataset_id)
    offer = pick_offer(dataset, purpose)
    progress.done(
        "catalog", f"{dataset['@id']} offered by {member['participantId']} (offer {offer.get('@id')})"
    )

    progress.note("negotiation", "requesting")
    created = client.call("POST", NEGOTIATIONS, _contract_request(member, dataset["@id"], offer)).body
    negotiation_id = created["@id"]
    deadline = time.monotonic() + timeout
    negotiation = _wait(
        client,
        f"{NEGOTIATIONS}/{negotiation_id}",
        "FINALIZED",
        ("TERMINATED",),
        deadline,
        progress,
        "negotiation",
    )
    agreement_id = negotiation["contractAgreementId"]
    progress.done("negotiation", f"FINALIZED, agreement {agreement_id}")

    progress.note("transfer", "requesting")
    request = {
        "@context": {"@vocab": EDC_NS},
        "@type": "TransferRequest",
        "protocol": DSP_PROTOCOL,
        "counterPartyAddress": member["dspUrl"],
        "contractId": agreement_id,
        "transferType": "HttpData-PULL",
        "dataDestination": {"type": "HttpProxy"},
        "purpose": purpose,
    }
    transfer_id = client.call("POST", TRANSFERS, request).body["@id"]
    deadline = time.monotonic() + timeout
    _wait(
        client,
        f"{TRANSFERS}/{transfer_id}",
        "STARTED",
        ("TERMINATED", "COMPLETED", "SUSPENDED"),
        deadline,
        progress,
        "transfer",
    )
    progress.done("transfer", f"STARTED ({transfer_id})")

    progress.note("download", "starting")
    address = client.call("GET", f"{EDRS}/{transfer_id}/dataaddress?auto_refresh=true").body
    endpoint, token = address.get("endpoint"), address.get("authorization")
    if not isinstance(endpoint, str) or not isinstance(token, str):
        raise FetchStopped("the transfer's data address has no endpoint or token")
    try:
        received = _download(endpoint, token, output, timeout, progress)
    except FetchStopped as exc:
        progress.note("download", f"✗ {exc}")
        # The provider may have ended the transfer and said why: show it beside the download's failure.
        found = client.call("GET", f"{TRANSFERS}/{transfer_id}").body
        progress.note("transfer", _state_line(found) + f" ({transfer_id})")
        raise
    progress.done("download", f"{received} bytes to {output}")
    with contextlib.suppress(ManagementCallError):  # the file is whole; ending the transfer is tidiness
        client.call("POST", f"{TRANSFERS}/{transfer_id}/complete")
    return received, transfer_id


def register_fetch_command(app: typer.Typer) -> None:
    @app.command("fetch")
    def fetch_command(
        participant: Annotated[str, typer.Argument(help="A member: its DID, its name, or part of its DID.")],
        dataset: Annotated[
            str, typer.Argument(help="The dataset's id (or its exact title) in their catalog.")
        ],
        purpose: Annotated[str, typer.Option("--purpose", help="The purpose you declare for this use.")],
        output: Annotated[
            Path, typer.Option("-o", "--output", help="The file to write (only once complete).")
        ],
        data_dir: DirOption = Path("."),
        timeout: Annotated[
            float, typer.Option("--timeout", help="Seconds each step may take.", min=1.0)
        ] = 120.0,
    ) -> None:
        """Negotiate for a member's dataset and download it: catalog, negotiation, transfer, download."""
        if output.is_dir():
            raise StartupError(f"{output} is a directory; give a file name")
        if not output.resolve().parent.is_dir():
            raise StartupError(f"{output.parent} does not exist")
        client = ManagementClient.for_participant(data_dir)
        try:
            received, transfer_id = fetch(client, participant, dataset, purpose, output, timeout)
        except FetchStopped as exc:
            print(f"tessera: fetch stopped: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None
        print(f"wrote {received} bytes to {output} (transfer {transfer_id})")
