"""What the "Transfers" pages show: transfers in words, the steps an operator may take now, pushed files.

As for negotiations (``connector.pages.negotiations_view``), the buttons come
from the transfer state machine (``connector.transfer_states.transition``) for
our role, so a page never offers a step ``connector.transfers.operator_action``
would refuse: nothing while a message is being delivered, ``start`` only for a
provider's transfer that waits for manual approval, ``resume`` only when
SUSPENDED. The files pushed into this connector's sink (``<data_dir>/sink/``)
are listed from the sink's own registrations (``connector.dataplane.sink``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from sqlalchemy import func, select
from sqlmodel import Session

from catalog.assets import get_asset
from catalog.queryspec import table_of
from connector.dataplane.sink import SINK_PATH, SinkRecord, list_sinks, read_sink
from connector.dataplane.sources import AddressError, source_kind
from connector.pages.negotiations_view import party_label
from connector.pages.render import path_segment
from connector.transfer_models import TransferRow
from connector.transfer_states import TERMINAL, Message, Role, State, TransitionError, transition
from connector.transfers import INITIAL, flow_of, pending_of

PAGE_SIZE = 20
MAX_PAGE = 10_000
MAX_REASON_LENGTH = 1000
LIVE_ADDRESS_TYPES = frozenset({"mqtt"})
_TABLE = table_of(TransferRow)
_T = _TABLE.c

STATES = (INITIAL, *(state.value for state in State))
STATE_WORDS = {
    INITIAL: "request sent, not yet acknowledged by the provider",
    State.REQUESTED: "asked for, not started yet",
    State.STARTED: "data may flow",
    State.SUSPENDED: "paused; either side may resume it",
    State.COMPLETED: "finished: all the data was delivered",
    State.TERMINATED: "ended before completion",
}
ROLE_WORDS = {
    Role.PROVIDER.value: "provider (we send the data)",
    Role.CONSUMER.value: "consumer (we receive the data)",
}
KIND_WORDS = {
    "pull": "pull — the consumer fetches from the provider's endpoint",
    "push": "push — the provider sends into the consumer's endpoint",
    "live": "live — messages stream to the consumer until the transfer stops",
}
PAGE_ACTIONS = ("start", "suspend", "resume", "terminate")


def transfer_url(transfer_id: str) -> str:
    return f"/ui/transfers/{path_segment(transfer_id)}"


def kind_of(session: Session, row: TransferRow) -> str:
    """pull, push or live: live when we provide it from a live source (an MQTT topic)."""
    if flow_of(row) == "PUSH":
        return "push"
    if row.role == Role.PROVIDER.value:
        asset = get_asset(session, row.asset_id)
        try:
            kind = source_kind(asset.data_address) if asset else ""
        except AddressError:
            kind = ""
        if kind.lower() in LIVE_ADDRESS_TYPES:
            return "live"
    return "pull"


def _state(row: TransferRow) -> State | None:
    return None if row.state == INITIAL else State(row.state)


def delivering(row: TransferRow) -> str | None:
    """``delivering TransferStartMessage, attempt 2`` while the outbox holds a message."""
    try:
        pending = pending_of(row)
    except (ValueError, KeyError, TypeError):
        return "delivering a message" if row.pending_message else None
    if pending is None:
        return None
    return f"delivering {pending.message.value}, attempt {row.attempts + 1}"


def reason_of(row: TransferRow) -> str | None:
    """The transfer's last error or reason, unless it is a retry that has since gone through."""
    detail = row.error_detail
    if not detail:
        return None
    if detail.startswith("retrying ") and row.pending_message is None:
        return None
    return detail


def size_text(count: int) -> str:
    """``1,234 bytes (1.2 kB)``: the exact figure, and a rounded one people read at a glance."""
    exact = f"{count:,} byte{'s' if count != 1 else ''}"
    if count < 1000:
        return exact
    value = float(count)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{exact} ({value:.1f} {unit})"
    return exact


@dataclass(frozen=True)
class TransferFilter:
    state: str = ""
    role: str = ""
    page: int = 1

    @classmethod
    def from_query(cls, query: dict[str, str]) -> TransferFilter:
        state, role = query.get("state", ""), query.get("role", "")
        page_text = query.get("page", "1")
        page = int(page_text) if page_text.isdigit() and len(page_text) < 7 else 1
        return cls(
            state=state if state in STATES else "",
            role=role if role in ROLE_WORDS else "",
            page=min(max(page, 1), MAX_PAGE),
        )

    def url(self, page: int) -> str:
        params = {k: v for k, v in (("state", self.state), ("role", self.role)) if v}
        if page > 1:
            params["page"] = str(page)
        return "/ui/transfers" + (f"?{urlencode(params)}" if params else "")


@dataclass(frozen=True)
class TransferSummary:
    id: str
    url: str
    counter_party: str
    party: str
    dataset: str
    role: str
    kind: str
    state: str
    state_words: str
    approval: str
    bytes: int
    bytes_text: str
    accesses: int
    reason: str | None
    delivering: str | None
    created_at: int
    updated_at: int


def summary(session: Session, row: TransferRow) -> TransferSummary:
    return TransferSummary(
        id=row.id,
        url=transfer_url(row.id),
        counter_party=row.counter_party_did,
        party=party_label(row.counter_party_did),
        dataset=row.asset_id,
        role=row.role,
        kind=kind_of(session, row),
        state=row.state,
        state_words=STATE_WORDS.get(row.state, "unknown state"),
        approval=row.approval,
        bytes=row.bytes_transferred,
        bytes_text=size_text(row.bytes_transferred),
        accesses=row.access_count,
        reason=reason_of(row),
        delivering=delivering(row),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@dataclass(frozen=True)
class TransferPage:
    rows: list[TransferSummary]
    total: int
    first: int
    last: int
    previous_url: str | None
    next_url: str | None


def transfer_page(session: Session, form: TransferFilter) -> TransferPage:
    """One page of transfers (both roles), newest first, filtered by state and role."""
    conditions = []
    if form.state:
        conditions.append(_T.state == form.state)
    if form.role:
        conditions.append(_T.role == form.role)
    total = session.scalar(select(func.count()).select_from(_TABLE).where(*conditions)) or 0
    offset = (form.page - 1) * PAGE_SIZE
    statement = (
        select(TransferRow)
        .where(*conditions)
        .order_by(_T.created_at.desc(), _T.id.desc())
        .offset(offset)
        .limit(PAGE_SIZE)
    )
    rows = [summary(session, row) for row in session.scalars(statement)]
    return TransferPage(
        rows=rows,
        total=total,
        first=offset + 1 if rows else 0,
        last=offset + len(rows),
        previous_url=form.url(form.page - 1) if form.page > 1 else None,
        next_url=form.url(form.page + 1) if offset + len(rows) < total else None,
    )


# ---------------------------------------------------------------- one transfer


@dataclass(frozen=True)
class ActionView:
    action: str
    label: str  # the button's text: what it does, to which transfer
    hint: str


def _may(row: TransferRow, message: Message) -> bool:
    try:
        transition(_state(row), message, Role(row.role))
    except TransitionError:
        return False
    return True


def available_actions(row: TransferRow) -> tuple[ActionView, ...]:
    """The steps this side may take now, in the order of the buttons (terminate last)."""
    state = _state(row)
    party, dataset = party_label(row.counter_party_did), row.asset_id
    what = f"the transfer of {dataset} with {party}"
    if state in TERMINAL:
        return ()
    if state is None:  # never acknowledged: only withdrawn here
        return (
            ActionView(
                "terminate",
                f"Terminate {what}",
                f"Withdraw the request: {party} has not acknowledged it, so only this connector records why.",
            ),
        )
    if row.pending_message is not None:  # operator_action refuses every step until it is delivered
        return ()
    actions: list[ActionView] = []
    if state is State.REQUESTED and row.role == Role.PROVIDER.value and _may(row, Message.START):
        actions.append(
            ActionView(
                "start",
                f"Start {what}",
                f"Approve the transfer (its contract definition asks for manual approval): {party} "
                "is sent the start message"
                + (
                    " with a data address to pull from."
                    if flow_of(row) == "PULL"
                    else "; then the data is pushed."
                ),
            )
        )
    if state is State.STARTED and _may(row, Message.SUSPENSION):
        actions.append(
            ActionView(
                "suspend",
                f"Suspend {what}",
                f"Pause it: the data stops flowing and {party} is told; either side may resume it later.",
            )
        )
    if state is State.SUSPENDED and _may(row, Message.START):
        actions.append(
            ActionView(
                "resume",
                f"Resume {what}",
                "Start it again"
                + (" (the agreement is checked again first)." if row.role == Role.PROVIDER.value else "."),
            )
        )
    if _may(row, Message.TERMINATION):
        actions.append(
            ActionView(
                "terminate",
                f"Terminate {what}",
                f"End it for good; {party} is told the reason you give. It cannot be resumed.",
            )
        )
    return tuple(actions)


def _sink_of(row: TransferRow, data_dir: Path, public_url: str) -> SinkRecord | None:
    """The sink of this connector a consumer's push transfer names as its destination, if any."""
    if row.role != Role.CONSUMER.value or row.data_destination is None:
        return None
    try:
        destination: Any = json.loads(row.data_destination)
    except ValueError:
        return None
    endpoint = destination.get("endpoint") if isinstance(destination, dict) else None
    if not isinstance(endpoint, str):
        return None
    prefix = public_url.rstrip("/") + SINK_PATH + "/"
    if not endpoint.startswith(prefix) or urlsplit(endpoint).query:
        return None
    return read_sink(data_dir, endpoint[len(prefix) :])


def _next_step(row: TransferRow, kind: str, actions: tuple[ActionView, ...]) -> str:
    state = _state(row)
    party = party_label(row.counter_party_did)
    sending = delivering(row)
    if sending:
        return (
            f"This connector is {sending} to {party}; the state changes when {party} has accepted it. "
            "Reload the page to see the result."
        )
    if state is State.COMPLETED:
        return "Nothing more happens: the transfer is complete."
    if state is State.TERMINATED:
        return "Nothing more happens: the transfer was terminated."
    if state is None:
        return f"Waiting for {party} to acknowledge the request."
    if state is State.REQUESTED:
        if any(a.action == "start" for a in actions):
            return "Waiting for you: the contract definition asks for manual approval of each transfer."
        return f"Waiting for the provider, {party}, to start the transfer."
    if state is State.SUSPENDED:
        return "Suspended: no data flows until one side resumes it."
    ours = row.role == Role.PROVIDER.value
    if kind == "push":
        return (
            "The data is being pushed; the transfer completes by itself when the consumer has it all."
            if ours
            else f"{party} pushes the data into this connector; the transfer completes when it has arrived."
        )
    if kind == "live":
        return "Live: each access streams messages until the transfer is suspended, completed or terminated."
    return (
        f"{party} may pull the data with its token while the transfer is STARTED."
        if ours
        else "This connector may pull the data with the token the provider sent while the transfer is STARTED."
    )


@dataclass(frozen=True)
class TransferDetail:
    summary: TransferSummary
    provider_pid: str | None
    consumer_pid: str | None
    counter_party_address: str
    agreement_id: str
    transfer_type: str
    purpose: str | None
    has_data_address: bool
    sink: SinkRecord | None
    next_step: str
    actions: tuple[ActionView, ...]


def transfer_detail(session: Session, row: TransferRow, data_dir: Path, public_url: str) -> TransferDetail:
    shown = summary(session, row)
    actions = available_actions(row)
    return TransferDetail(
        summary=shown,
        provider_pid=row.provider_pid,
        consumer_pid=row.consumer_pid,
        counter_party_address=row.counter_party_address,
        agreement_id=row.agreement_id,
        transfer_type=row.transfer_type,
        purpose=row.purpose,
        has_data_address=row.data_address is not None,
        sink=_sink_of(row, data_dir, public_url),
        next_step=_next_step(row, shown.kind, actions),
        actions=actions,
    )


def confirmation(done: str, row: TransferRow) -> str | None:
    """What the page says after an operator's step succeeded (None for anything else)."""
    party = party_label(row.counter_party_did)
    return {
        "start": f"Started: {party} is being sent the start message.",
        "suspend": f"Suspended: {party} is being told.",
        "resume": f"Resumed: {party} is being sent the start message.",
        "terminate": f"Terminated: {party} is being told the reason.",
        "withdrawn": f"Terminated: the request was withdrawn before {party} acknowledged it.",
    }.get(done)


# ---------------------------------------------------------------- the push sink


@dataclass(frozen=True)
class ReceivedFile:
    sink_id: str
    name: str
    path: str
    bytes_text: str
    sha256: str
    media_type: str
    download_url: str


def received_files(data_dir: Path) -> list[ReceivedFile]:
    """Files pushed into this connector's sink that arrived whole (a sink still waiting shows nothing)."""
    found = []
    for record in list_sinks(data_dir):
        if record.state != "received" or record.received_path is None:
            continue
        found.append(
            ReceivedFile(
                sink_id=record.sink_id,
                name=record.received_path.name,
                path=str(record.received_path),
                bytes_text=size_text(record.received_bytes or 0),
                sha256=record.received_sha256 or "",
                media_type=record.media_type or "application/octet-stream",
                download_url=f"/ui/transfers/received/{record.sink_id}",
            )
        )
    return found


def waiting_sinks(data_dir: Path) -> int:
    return sum(1 for record in list_sinks(data_dir) if record.state == "waiting")
