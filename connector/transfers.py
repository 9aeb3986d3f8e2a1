"""Transfer processes, both roles: what happens when a message arrives or an operator acts.

As for negotiations (``connector.negotiations``), the protocol routes, the
Management API and the data plane call these functions and never send
anything themselves: a step that needs a message to the counter-party puts
it in the transfer's outbox and the delivery worker (``connector.transfer_worker``)
sends it; our state moves when the counter-party has accepted the message.

The provider decides a request against the agreement (FINALIZED, between
the requester and us, its policy admitting the declared purpose now) and,
unless the contract definition asks for manual approval, starts it: for a
pull transfer the start message carries a data address with a short-lived
token (``connector.dataplane.tokens``); for a push transfer the data is
pushed once the consumer has acknowledged the start.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, or_, select
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.contract_definitions import get_contract_definition
from catalog.queryspec import table_of
from connector import transfer_evidence as evidence
from connector.dataplane import tokens
from connector.dsp import transfer_messages as wire
from connector.negotiations import address_is_under, new_pid
from connector.transfer_models import TransferRow
from connector.transfer_states import TERMINAL, Message, Role, State, TransitionError, transition
from connector.usage import Use, decide_use
from contracts.agreements import AgreementRecord, get_agreement
from contracts.models import NegotiationRow
from contracts.negotiation import State as NegotiationState
from identity.peer_auth import Peer
from identity.trustlist import get_member
from runtime.outbox import in_flight
from runtime.outbox import settle as settle_in_flight
from runtime.service import ServiceCore

KICK_GRACE_MS = 1000  # see connector.negotiations: the explicit kick after the answer sends first
PULL = "PULL"
PUSH = "PUSH"
FORMATS = ("HttpData-PULL", "HttpData-PUSH")
HTTP_ENDPOINT_TYPE = "https://w3id.org/idsa/v4.1/HTTP"
PUBLIC_PATH = "/public/transfers"
TOKEN_PATH = "/public/token"  # noqa: S105 (a path, not a secret)
# Our consumer-side state before the provider has acknowledged the request (DSP has no name for it).
INITIAL = "INITIAL"
_T = table_of(TransferRow).c


class TransferError(Exception):
    """A message or action was refused; nothing changed. ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str, row: TransferRow | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.row = row


@dataclass(frozen=True)
class Pending:
    """A message in the outbox."""

    message: Message
    url: str
    body: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"message": self.message.value, "url": self.url, "body": self.body})

    @classmethod
    def from_json(cls, text: str) -> Pending:
        data = json.loads(text)
        return cls(Message(data["message"]), data["url"], data["body"])


def _role(row: TransferRow) -> Role:
    return Role(row.role)


def _state(row: TransferRow) -> State | None:
    return None if row.state == INITIAL else State(row.state)


def flow_of(row: TransferRow) -> str:
    """PULL or PUSH, from the transfer's format (``HttpData-PULL``)."""
    return PUSH if row.transfer_type.upper().endswith("-PUSH") else PULL


def _touch(row: TransferRow) -> None:
    row.updated_at = now_millis()


def _peer_address(row: TransferRow) -> str:
    return row.counter_party_address.rstrip("/")


def _their_pid(row: TransferRow) -> str:
    return (row.consumer_pid if _role(row) is Role.PROVIDER else row.provider_pid) or ""


def _url(row: TransferRow, suffix: str) -> str:
    return f"{_peer_address(row)}/transfers/{_their_pid(row)}/{suffix}"


# ---------------------------------------------------------------- lookups


def find_by_pid(session: Session, pid: str, counter_party: str) -> TransferRow:
    """The transfer whose pid on OUR side is ``pid``, with this counter-party; else 404."""
    statement = select(TransferRow).where(
        or_(
            (_T.role == Role.PROVIDER.value) & (_T.provider_pid == pid),
            (_T.role == Role.CONSUMER.value) & (_T.consumer_pid == pid),
        )
    )
    for row in session.scalars(statement):
        if row.counter_party_did == counter_party:
            return row
    raise TransferError(404, f"no transfer {pid} with you")


def get_transfer(session: Session, transfer_id: str) -> TransferRow | None:
    return session.get(TransferRow, transfer_id)


def dsp_state(row: TransferRow) -> str:
    # A request the provider has answered, before we recorded the answer, is REQUESTED to it.
    return State.REQUESTED.value if row.state == INITIAL else row.state


def settle(session: Session, row: TransferRow, kind: Message) -> TransferRow:
    """``row`` once our own message in flight (if any) is recorded, before judging ``kind`` by it.

    The provider answers our request and may send its start at once; that can
    arrive before our worker has recorded the answer. While a delivery is in
    flight and ``kind`` is not allowed yet, wait for it to be recorded (``runtime.outbox``).
    """

    def allowed(current: TransferRow) -> bool:
        try:
            transition(_state(current), kind, _role(current).other)
            return True
        except TransitionError:
            return False

    return settle_in_flight(session, row, allowed)


# ---------------------------------------------------------------- the outbox


def _allowed(row: TransferRow, message: Message) -> State:
    try:
        return transition(_state(row), message, _role(row))
    except TransitionError as exc:
        raise TransferError(409, str(exc), row) from None


def _enqueue(row: TransferRow, pending: Pending) -> None:
    if row.pending_message is not None:
        current = Pending.from_json(row.pending_message).message.value
        raise TransferError(409, f"a {current} is still being delivered; try again when it is", row)
    _allowed(row, pending.message)  # refuse now what the counter-party would refuse
    row.pending_message = pending.to_json()
    row.attempts = 0
    row.next_attempt_at = now_millis() + KICK_GRACE_MS
    _touch(row)


def pending_of(row: TransferRow) -> Pending | None:
    return Pending.from_json(row.pending_message) if row.pending_message else None


def delivered(session: Session, row: TransferRow, pending: Pending, response: dict[str, Any] | None) -> None:
    """The counter-party accepted our message: now our state moves."""
    before = row.state
    row.state = transition(_state(row), pending.message, _role(row)).value
    if pending.message is Message.REQUEST and response is not None and row.provider_pid is None:
        provider_pid = response.get("providerPid")
        if isinstance(provider_pid, str) and 0 < len(provider_pid) <= 256:
            row.provider_pid = provider_pid
    row.pending_message = None
    row.next_attempt_at = None
    row.attempts = 0
    if row.error_detail and row.error_detail.startswith("retrying "):
        row.error_detail = None
    _touch(row)
    evidence.state_changed(session, row, before)
    session.add(row)
    session.commit()


def undeliverable(session: Session, row: TransferRow, reason: str) -> None:
    """Our message could not be delivered: the transfer ends here, saying why."""
    before = row.state
    row.state = State.TERMINATED.value
    row.error_detail = reason[:4000]
    row.pending_message = None
    row.next_attempt_at = None
    _touch(row)
    evidence.state_changed(session, row, before)
    session.add(row)
    session.commit()


def needs_push(row: TransferRow, pending: Pending) -> bool:
    """Must the provider now push the data (a push transfer's start was just acknowledged)?"""
    return (
        _role(row) is Role.PROVIDER
        and flow_of(row) == PUSH
        and pending.message is Message.START
        and row.state == State.STARTED.value
    )


# ---------------------------------------------------------------- the provider's side


def in_address_space(url: str, base: str) -> bool:
    """Is ``url`` on the same origin (scheme, host, port) as the member's registered address?"""
    a, b = urlsplit(url), urlsplit(base)
    return a.scheme in ("http", "https") and (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _finalized_agreement(
    session: Session, core: ServiceCore, agreement_id: str, consumer: str
) -> AgreementRecord:
    record = get_agreement(session, agreement_id)
    if record is None or record.provider_did != core.settings.did or record.consumer_did != consumer:
        # One answer for unknown and someone else's: whether an agreement exists is not the caller's business.
        raise TransferError(400, f"there is no agreement {agreement_id} between you and {core.settings.did}")
    negotiation = session.get(NegotiationRow, record.negotiation_id)
    if negotiation is None or negotiation.state != NegotiationState.FINALIZED.value:
        state = negotiation.state if negotiation else "unknown"
        raise TransferError(400, f"agreement {agreement_id} is not final (its negotiation is {state})")
    return record


def _check_use(session: Session, core: ServiceCore, row: TransferRow, record: AgreementRecord) -> None:
    """Refuse (400, with the explanation) when the agreement does not admit the next access now."""
    next_access = accesses_under(session, row.agreement_id) + 1
    decision = decide_use(session, core, Use(record, row.counter_party_did, row.purpose, next_access))
    row.policy_decision = evidence.decision_json(decision.allowed, decision.explanation)
    if not decision.allowed:
        raise TransferError(
            400, f"agreement {record.id} does not admit this transfer: {decision.explanation}", row
        )


def accesses_under(session: Session, agreement_id: str) -> int:
    """Accesses served so far under one agreement, over all its transfers (``count`` counts these)."""
    total = session.scalar(
        select(func.coalesce(func.sum(_T.access_count), 0)).where(_T.agreement_id == agreement_id)
    )
    return int(total or 0)


def provider_receive_request(
    session: Session, core: ServiceCore, peer: Peer, message: dict[str, Any]
) -> TransferRow:
    consumer_pid = message["consumerPid"]
    callback = message.get("callbackAddress")
    for name, limit in (
        ("consumerPid", 256),
        ("agreementId", 256),
        ("format", 128),
        ("callbackAddress", 2048),
    ):
        if len(str(message.get(name, ""))) > limit:
            raise TransferError(400, f"{name} is longer than {limit} characters")
    if not isinstance(callback, str) or not address_is_under(callback, peer.dsp_url):
        raise TransferError(
            400, f"callbackAddress {callback!r} is not under your registered DSP address {peer.dsp_url}"
        )
    existing = session.scalars(
        select(TransferRow).where(
            _T.role == Role.PROVIDER.value, _T.consumer_pid == consumer_pid, _T.counter_party_did == peer.did
        )
    ).first()
    if existing is not None:  # a repeated request (the consumer retried): same transfer, same answer
        return existing
    record = _finalized_agreement(session, core, message["agreementId"], peer.did)
    transfer_format = message["format"]
    if transfer_format not in FORMATS:
        raise TransferError(
            400, f"format {transfer_format!r} is not offered; use one of {', '.join(FORMATS)}"
        )
    purpose = message.get(wire.PURPOSE_MEMBER)
    if purpose is not None and (not isinstance(purpose, str) or not 0 < len(purpose) <= 512):
        raise TransferError(400, "the declared purpose must be a string of 1 to 512 characters")
    destination = message.get("dataAddress")
    if transfer_format.endswith("-PUSH"):
        endpoint = destination.get("endpoint") if isinstance(destination, dict) else None
        if not isinstance(endpoint, str) or not in_address_space(endpoint, peer.dsp_url):
            raise TransferError(
                400,
                f"the push endpoint {endpoint!r} is outside your registered address space ({peer.dsp_url})",
            )
    definition = None
    negotiation = session.get(NegotiationRow, record.negotiation_id)
    if negotiation is not None and negotiation.contract_definition_id:
        definition = get_contract_definition(session, negotiation.contract_definition_id)
    row = TransferRow(
        id=str(uuid.uuid4()),
        role=Role.PROVIDER.value,
        provider_pid=new_pid(),
        consumer_pid=consumer_pid,
        counter_party_did=peer.did,
        counter_party_address=callback.rstrip("/"),
        state=transition(None, Message.REQUEST, Role.CONSUMER).value,
        agreement_id=record.id,
        asset_id=record.asset_id,
        transfer_type=transfer_format,
        approval=definition.transfer_approval if definition else "automatic",
        purpose=purpose,
        data_destination=json.dumps(destination) if transfer_format.endswith("-PUSH") else None,
        created_at=now_millis(),
        updated_at=now_millis(),
    )
    _check_use(session, core, row, record)
    if row.approval == "automatic":
        _provider_start(session, core, row)
    session.add(row)
    session.commit()
    return row


def new_data_address(core: ServiceCore, row: TransferRow) -> dict[str, Any]:
    """A pull data address with a fresh token pair; the old token (if any) stops working."""
    pair = tokens.issue_pair(
        core.key,
        core.settings.did,
        transfer_id=row.id,
        agreement_id=row.agreement_id,
        consumer=row.counter_party_did,
        lifetime=data_token_lifetime(core),
    )
    row.token_id = pair.access.jti
    return wire.data_address(
        HTTP_ENDPOINT_TYPE,
        f"{core.settings.public_url}{PUBLIC_PATH}/{row.id}",
        {
            "authorization": pair.access_token,
            "authType": "bearer",
            "refreshToken": pair.refresh_token,
            "refreshEndpoint": f"{core.settings.public_url}{TOKEN_PATH}",
            "expiresIn": str(pair.expires_in),
            "transferId": row.id,
        },
    )


def data_token_lifetime(core: ServiceCore) -> int:
    return int(getattr(core.settings, "data_token_lifetime_seconds", tokens.DEFAULT_ACCESS_LIFETIME_SECONDS))


def _provider_start(session: Session, core: ServiceCore, row: TransferRow) -> None:
    address = new_data_address(core, row) if flow_of(row) == PULL else None
    body = wire.start_message(row.provider_pid or "", row.consumer_pid or "", address)
    _enqueue(row, Pending(Message.START, _url(row, "start"), body))


def agreement_of(session: Session, row: TransferRow) -> AgreementRecord:
    record = get_agreement(session, row.agreement_id)
    if record is None:
        raise TransferError(409, f"agreement {row.agreement_id} is gone", row)
    return record


# ---------------------------------------------------------------- messages from the counter-party


def receive(
    session: Session, core: ServiceCore, row: TransferRow, kind: Message, message: dict[str, Any]
) -> None:
    """A message from the counter-party for an existing transfer (both roles)."""
    try:
        after = transition(_state(row), kind, _role(row).other)
    except TransitionError as exc:
        # The binding says an invalid transition is a 400 (Bad Request), with a TransferError.
        raise TransferError(400, str(exc), row) from None
    if kind is Message.START:
        if _role(row) is Role.CONSUMER:
            address = message.get("dataAddress")
            if flow_of(row) == PULL and not isinstance(address, dict):
                raise TransferError(400, "a pull transfer's start message must carry its dataAddress", row)
            if isinstance(address, dict):
                row.data_address = json.dumps(address)
        else:  # the consumer resumes: only while the agreement still admits use
            _check_use(session, core, row, agreement_of(session, row))
    reasons = message.get("reason") or []
    said = f": {reasons[0]}" if reasons else ""
    if kind is Message.TERMINATION:
        row.error_detail = f"terminated by the counter-party{said}"[:4000]
    elif kind is Message.SUSPENSION:
        row.error_detail = f"suspended by the counter-party{said}"[:4000]
    elif kind is Message.START and row.error_detail and row.error_detail.startswith("suspended "):
        row.error_detail = None
    before = row.state
    row.state = after.value
    pending = pending_of(row)
    if pending is not None:
        try:  # our own queued message may no longer make sense in the new state
            transition(after, pending.message, _role(row))
        except TransitionError:
            row.pending_message = None
            row.next_attempt_at = None
    _touch(row)
    evidence.state_changed(session, row, before)
    session.add(row)
    session.commit()


# ---------------------------------------------------------------- the consumer's side


def consumer_request(
    session: Session,
    core: ServiceCore,
    *,
    address: str,
    agreement_id: str,
    transfer_type: str,
    destination: dict[str, Any] | None,
    purpose: str | None,
    callback_addresses: list[Any] | None = None,
    commit: bool = True,
) -> TransferRow:
    """Ask the provider for a transfer under one of our agreements (the EDR code builds on this too).

    ``commit=False``: the new transfer joins the caller's transaction (the caller commits it).
    """
    record = get_agreement(session, agreement_id)
    if record is None or record.consumer_did != core.settings.did:
        raise TransferError(400, f"there is no agreement {agreement_id} under which this connector consumes")
    member = get_member(session, record.provider_did)
    if member is None:
        raise TransferError(400, f"{record.provider_did} is not a member of this data space")
    if address.rstrip("/") != member.dsp_url.rstrip("/"):
        raise TransferError(
            400, f"counterPartyAddress {address} is not the DSP address registered for {record.provider_did}"
        )
    if transfer_type not in FORMATS:
        raise TransferError(400, f"transferType must be one of {', '.join(FORMATS)}, not {transfer_type!r}")
    if transfer_type.endswith("-PUSH") and destination is None:
        raise TransferError(400, "a push transfer needs a dataDestination (where the provider pushes)")
    consumer_pid = new_pid()
    row = TransferRow(
        id=str(uuid.uuid4()),
        role=Role.CONSUMER.value,
        consumer_pid=consumer_pid,
        counter_party_did=record.provider_did,
        counter_party_address=member.dsp_url.rstrip("/"),
        state=INITIAL,
        agreement_id=record.id,
        asset_id=record.asset_id,
        transfer_type=transfer_type,
        purpose=purpose,
        data_destination=json.dumps(destination) if destination is not None else None,
        callback_addresses=json.dumps(callback_addresses) if callback_addresses else None,
        created_at=now_millis(),
        updated_at=now_millis(),
    )
    body = wire.request_message(
        consumer_pid,
        record.id,
        transfer_type,
        core.settings.dsp_url,
        data_address=destination if transfer_type.endswith("-PUSH") else None,
        purpose=purpose,
    )
    _enqueue(row, Pending(Message.REQUEST, f"{_peer_address(row)}/transfers/request", body))
    session.add(row)
    if commit:
        session.commit()
    return row


def edr_of(row: TransferRow) -> dict[str, Any] | None:
    """The data address (with its token) the provider gave a consumer's pull transfer, if any yet."""
    if _role(row) is not Role.CONSUMER or row.data_address is None:
        return None
    address: dict[str, Any] = json.loads(row.data_address)
    return address


# ---------------------------------------------------------------- operator actions


ACTIONS = ("start", "suspend", "resume", "complete", "terminate")


def operator_action(
    session: Session, core: ServiceCore, row: TransferRow, action: str, reason: str | None = None
) -> None:
    """An operator's step: start (provider, manual approval), suspend, resume, complete, terminate."""
    if action not in ACTIONS:
        raise TransferError(404, f"there is no action {action!r}")
    if _state(row) in TERMINAL:
        raise TransferError(409, f"the transfer is {row.state}; it cannot {action} now", row)
    if in_flight(row):
        # (A lease with nothing queued is a push in progress: a suspension or termination stops it.)
        raise TransferError(409, "a message is being sent right now; try again in a moment", row)
    if action == "terminate":
        said = reason or "terminated by the operator"
        if row.pending_message is not None:  # not accepted yet: the termination replaces it
            row.pending_message = None
            row.next_attempt_at = None
        if _state(row) is None:  # the provider never acknowledged it: no one to tell
            undeliverable(session, row, said)
            return
        _enqueue(row, _reasoned(row, Message.TERMINATION, "operator", said))
        row.error_detail = said
    elif _state(row) is None:
        raise TransferError(409, "the provider has not acknowledged the request yet", row)
    elif action == "start":
        if _role(row) is not Role.PROVIDER:
            raise TransferError(
                409, "only the provider starts a transfer; a consumer resumes a suspended one", row
            )
        _allowed(row, Message.START)
        if _state(row) is not State.REQUESTED:
            raise TransferError(409, f"the transfer is {row.state}; use resume", row)
        _check_use(session, core, row, agreement_of(session, row))
        _provider_start(session, core, row)
    elif action == "resume":
        _allowed(row, Message.START)
        if _state(row) is not State.SUSPENDED:
            raise TransferError(409, f"the transfer is {row.state}; only a SUSPENDED transfer resumes", row)
        if _role(row) is Role.PROVIDER:
            _check_use(session, core, row, agreement_of(session, row))
            _provider_start(session, core, row)
        else:
            body = wire.start_message(row.provider_pid or "", row.consumer_pid or "")
            _enqueue(row, Pending(Message.START, _url(row, "start"), body))
    elif action == "suspend":
        _enqueue(row, _reasoned(row, Message.SUSPENSION, "operator", reason or "suspended by the operator"))
    elif action == "complete":
        body = wire.simple_message(Message.COMPLETION, row.provider_pid or "", row.consumer_pid or "")
        _enqueue(row, Pending(Message.COMPLETION, _url(row, "completion"), body))
    session.add(row)
    session.commit()


def _reasoned(row: TransferRow, message: Message, code: str, reason: str) -> Pending:
    suffix = "termination" if message is Message.TERMINATION else "suspension"
    body = wire.reasoned_message(message, row.provider_pid or "", row.consumer_pid or "", code, reason)
    return Pending(message, _url(row, suffix), body)


def end_by_provider(session: Session, row: TransferRow, message: Message, code: str, reason: str) -> bool:
    """The data plane ends a transfer (usage denied, push done or failed): queue the message, say why.

    Returns False when the transfer is already ending (another message queued or not STARTED).
    """
    if row.pending_message is not None or _state(row) is not State.STARTED:
        return False
    if message is Message.COMPLETION:
        body = wire.simple_message(Message.COMPLETION, row.provider_pid or "", row.consumer_pid or "")
        pending = Pending(message, _url(row, "completion"), body)
    else:
        pending = _reasoned(row, message, code, reason)
    _enqueue(row, pending)
    if reason:
        row.error_detail = reason[:4000]
    session.add(row)
    session.commit()
    return True
