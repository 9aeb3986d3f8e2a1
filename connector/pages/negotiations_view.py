"""What the "Negotiations" pages show: negotiations in words, and the steps an operator may take now.

Which buttons a negotiation gets comes from the state machine itself
(``contracts.negotiation.allowed_messages`` for our role), so a page never
offers a step the connector would refuse: while a message is still being
delivered nothing can be done (``operator_action`` would refuse it), and a
request not yet acknowledged by the provider can only be withdrawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

from sqlalchemy import func, select
from sqlmodel import Session

from catalog.queryspec import table_of
from connector.negotiations import INITIAL, Pending
from connector.pages.render import path_segment
from connector.pages.words import dsp_offer_words
from contracts.agreements import get_agreement
from contracts.models import NegotiationRow
from contracts.negotiation import TERMINAL, Message, Role, State, allowed_messages

PAGE_SIZE = 20
MAX_PAGE = 10_000
MAX_REASON_LENGTH = 1000
_TABLE = table_of(NegotiationRow)
_N = _TABLE.c

STATES = (INITIAL, *(state.value for state in State))
STATE_WORDS = {
    INITIAL: "request sent, not yet acknowledged by the provider",
    State.REQUESTED: "the consumer has asked for the offer",
    State.OFFERED: "the provider has made an offer",
    State.ACCEPTED: "the consumer has accepted the offer",
    State.AGREED: "the provider has signed an agreement",
    State.VERIFIED: "the consumer has counter-signed the agreement",
    State.FINALIZED: "the agreement is in force",
    State.TERMINATED: "ended without an agreement",
}
ROLE_WORDS = {
    Role.PROVIDER.value: "provider (we offer the data)",
    Role.CONSUMER.value: "consumer (we asked for the data)",
}
# The steps these pages offer (counter-offers and counter-requests need a policy editor: not here).
ACTION_OF = {
    Message.AGREEMENT: "agree",
    Message.ACCEPTED: "accept",
    Message.VERIFICATION: "verify",
    Message.FINALIZED: "finalize",
    Message.TERMINATION: "terminate",
}
PAGE_ACTIONS = frozenset(ACTION_OF.values())
MESSAGE_NAMES = {
    Message.ACCEPTED: "ContractNegotiationEventMessage (ACCEPTED)",
    Message.FINALIZED: "ContractNegotiationEventMessage (FINALIZED)",
}
THEIR_STEPS = {
    Message.REQUEST: "make a counter-request",
    Message.OFFER: "make an offer",
    Message.ACCEPTED: "accept the offer",
    Message.AGREEMENT: "agree (sign an agreement)",
    Message.VERIFICATION: "verify (counter-sign) the agreement",
    Message.FINALIZED: "finalize the agreement",
}


def party_label(did: str) -> str:
    """A DID as people read it: ``did:web:127.0.0.1%3A8001:transit`` → ``127.0.0.1:8001/transit``."""
    if not did.startswith("did:web:"):
        return did
    host, *path = did[len("did:web:") :].split(":")
    return "/".join(unquote(part) for part in (host, *path))


def message_name(message: Message) -> str:
    return MESSAGE_NAMES.get(message, message.value)


def _state(row: NegotiationRow) -> State | None:
    try:
        return State(row.state)
    except ValueError:  # INITIAL (ours only: not in DSP)
        return None


def _pending(row: NegotiationRow) -> Pending | None:
    if row.pending_message is None:
        return None
    try:
        return Pending.from_json(row.pending_message)
    except (ValueError, KeyError, TypeError):
        return None


def delivering(row: NegotiationRow) -> str | None:
    """``delivering ContractAgreementMessage, attempt 2`` while the outbox holds a message."""
    if row.pending_message is None:
        return None
    pending = _pending(row)
    name = message_name(pending.message) if pending else "a message"
    return f"delivering {name}, attempt {row.attempts + 1}"


def state_text(state: str) -> str:
    return f"{state} — {STATE_WORDS.get(state, 'unknown state')}"


@dataclass(frozen=True)
class NegotiationFilter:
    state: str = ""
    role: str = ""
    page: int = 1

    @classmethod
    def from_query(cls, query: dict[str, str]) -> NegotiationFilter:
        state = query.get("state", "")
        role = query.get("role", "")
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
        return "/ui/negotiations" + (f"?{urlencode(params)}" if params else "")


@dataclass(frozen=True)
class NegotiationSummary:
    id: str
    url: str
    counter_party: str
    party: str
    dataset: str
    role: str
    state: str
    state_words: str
    approval: str
    created_at: int
    updated_at: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class NegotiationPage:
    rows: list[NegotiationSummary]
    total: int
    first: int
    last: int
    previous_url: str | None
    next_url: str | None


def negotiation_url(negotiation_id: str) -> str:
    return f"/ui/negotiations/{path_segment(negotiation_id)}"


def open_note(row: NegotiationRow) -> str | None:
    """The ``errorDetail`` of an open negotiation, unless it is a retry that has since succeeded
    (the worker records "retrying …" and does not clear it when the retry gets through)."""
    detail = row.error_detail
    if not detail or row.state == State.TERMINATED:
        return None
    if detail.startswith("retrying ") and row.pending_message is None:
        return None
    return detail


def notes_of(row: NegotiationRow) -> tuple[str, ...]:
    """What the table says beside the state: why it ended, or what is being delivered."""
    if row.state == State.TERMINATED:
        return (f"Reason: {row.error_detail or 'none given'}",)
    return tuple(note for note in (delivering(row), open_note(row)) if note)


def summary(row: NegotiationRow) -> NegotiationSummary:
    return NegotiationSummary(
        id=row.id,
        url=negotiation_url(row.id),
        counter_party=row.counter_party_did,
        party=party_label(row.counter_party_did),
        dataset=row.asset_id or "unknown dataset",
        role=row.role,
        state=row.state,
        state_words=STATE_WORDS.get(row.state, "unknown state"),
        approval=row.approval,
        created_at=row.created_at,
        updated_at=row.updated_at,
        notes=notes_of(row),
    )


def negotiation_page(session: Session, form: NegotiationFilter) -> NegotiationPage:
    """One page of negotiations (both roles), newest first, filtered by state and role."""
    conditions = []
    if form.state:
        conditions.append(_N.state == form.state)
    if form.role:
        conditions.append(_N.role == form.role)
    total = session.scalar(select(func.count()).select_from(_TABLE).where(*conditions)) or 0
    offset = (form.page - 1) * PAGE_SIZE
    statement = (
        select(NegotiationRow)
        .where(*conditions)
        .order_by(_N.created_at.desc(), _N.id.desc())
        .offset(offset)
        .limit(PAGE_SIZE)
    )
    rows = [summary(row) for row in session.scalars(statement)]
    return NegotiationPage(
        rows=rows,
        total=total,
        first=offset + 1 if rows else 0,
        last=offset + len(rows),
        previous_url=form.url(form.page - 1) if form.page > 1 else None,
        next_url=form.url(form.page + 1) if offset + len(rows) < total else None,
    )


# ---------------------------------------------------------------- one negotiation


@dataclass(frozen=True)
class ActionView:
    action: str
    label: str  # the button's text: what it does, to which negotiation
    hint: str


@dataclass(frozen=True)
class HistoryEntry:
    moment: int
    text: str


@dataclass(frozen=True)
class NegotiationDetail:
    summary: NegotiationSummary
    provider_pid: str | None
    consumer_pid: str | None
    counter_party_address: str
    contract_definition_id: str | None
    offer_id: str
    rules: tuple[str, ...]
    history: tuple[HistoryEntry, ...]
    reason: str | None
    note: str | None
    delivering: str | None
    next_step: str
    agreement_id: str | None
    agreement_stored: bool
    actions: tuple[ActionView, ...]


def _action_view(action: str, party: str, dataset: str, state: State | None) -> ActionView:
    if action == "agree":
        return ActionView(
            action,
            f"Approve the request from {party} for {dataset}",
            f"Agree: sign the agreement and send it to {party}, who counter-signs it.",
        )
    if action == "finalize":
        return ActionView(
            action,
            f"Finalize the agreement with {party} for {dataset}",
            f"{party} has counter-signed the agreement; finalizing puts it in force.",
        )
    if action == "accept":
        return ActionView(
            action,
            f"Accept the offer from {party} for {dataset}",
            f"Tell {party} that you accept its offer; it then signs an agreement.",
        )
    if action == "verify":
        return ActionView(
            action,
            f"Verify the agreement with {party} for {dataset}",
            f"Counter-sign the agreement {party} signed and send your signature.",
        )
    if state is None:
        return ActionView(
            action,
            f"Terminate the negotiation with {party} for {dataset}",
            f"Withdraw the request: {party} has not acknowledged it yet, so only this connector records why.",
        )
    return ActionView(
        action,
        f"Terminate the negotiation with {party} for {dataset}",
        f"End the negotiation without an agreement; {party} is told the reason you give.",
    )


def available_actions(row: NegotiationRow) -> tuple[ActionView, ...]:
    """The steps this side may take now, in the order of the buttons (terminate last)."""
    state = _state(row)
    party, dataset = party_label(row.counter_party_did), row.asset_id or "unknown dataset"
    if state in TERMINAL:
        return ()
    if row.state == INITIAL:  # the provider never acknowledged the request: only a local withdrawal
        return (_action_view("terminate", party, dataset, None),)
    if row.pending_message is not None:  # the connector refuses every step until it is delivered
        return ()
    messages = allowed_messages(state, Role(row.role))
    actions = [ACTION_OF[m] for m in messages if m in ACTION_OF and m is not Message.TERMINATION]
    if Message.TERMINATION in messages:
        actions.append("terminate")
    return tuple(_action_view(action, party, dataset, state) for action in actions)


def _next_step(row: NegotiationRow, actions: tuple[ActionView, ...]) -> str:
    state = _state(row)
    party = party_label(row.counter_party_did)
    if state is State.FINALIZED:
        return "Nothing more happens: the agreement is in force."
    if state is State.TERMINATED:
        return "Nothing more happens: the negotiation ended without an agreement."
    sending = delivering(row)
    if sending:
        return (
            f"This connector is {sending} to {party}; the state changes when {party} has accepted it. "
            "Reload the page to see the result."
        )
    steps = [a for a in actions if a.action != "terminate"]
    if steps:
        automatic = (
            "" if row.approval == "manual" else " This negotiation runs by itself, but it stopped here."
        )
        return f"Waiting for you: {' or '.join(a.label.lower() for a in steps)}.{automatic}"
    if state is None:
        return f"Waiting for {party} to acknowledge the request."
    other = Role(row.role).other
    theirs = [THEIR_STEPS[m] for m in allowed_messages(state, other) if m in THEIR_STEPS]
    return f"Waiting for the {other.value}, {party}, to {' or '.join(theirs) or 'answer'}."


def _history(row: NegotiationRow, agreed_at: int | None) -> tuple[HistoryEntry, ...]:
    party, dataset = party_label(row.counter_party_did), row.asset_id or "unknown dataset"
    started = (
        f"{party} asked for {dataset} (REQUESTED)"
        if row.role == Role.PROVIDER
        else f"This connector asked {party} for {dataset}"
    )
    entries = [HistoryEntry(row.created_at, f"Started: {started}.")]
    if agreed_at is not None:
        entries.append(
            HistoryEntry(agreed_at, "Agreement signed by the provider and recorded here (AGREED).")
        )
    entries.append(HistoryEntry(row.updated_at, f"Last change: now {state_text(row.state)}."))
    return tuple(sorted(entries, key=lambda entry: entry.moment))


def negotiation_detail(session: Session, row: NegotiationRow) -> NegotiationDetail:
    try:
        offer: Any = json.loads(row.offer)
    except ValueError:
        offer = {}
    offer = offer if isinstance(offer, dict) else {}
    agreement = get_agreement(session, row.agreement_id) if row.agreement_id else None
    actions = available_actions(row)
    return NegotiationDetail(
        summary=summary(row),
        provider_pid=row.provider_pid,
        consumer_pid=row.consumer_pid,
        counter_party_address=row.counter_party_address,
        contract_definition_id=row.contract_definition_id,
        offer_id=str(offer.get("@id", "(no id)")),
        rules=tuple(dsp_offer_words(offer)),
        history=_history(row, agreement.signed_at if agreement else None),
        reason=(row.error_detail or "none given") if row.state == State.TERMINATED else None,
        note=open_note(row),
        delivering=delivering(row),
        next_step=_next_step(row, actions),
        agreement_id=row.agreement_id,
        agreement_stored=agreement is not None,
        actions=actions,
    )


def confirmation(done: str, row: NegotiationRow) -> str | None:
    """What the page says after an operator's step succeeded (None for anything else)."""
    party = party_label(row.counter_party_did)
    return {
        "agree": f"Approved: the signed agreement is being sent to {party}.",
        "finalize": f"Finalized: {party} is being told that the agreement is in force.",
        "accept": f"Accepted: {party} is being told that you accept its offer.",
        "verify": f"Verified: your counter-signature is being sent to {party}.",
        "terminate": f"Terminated: {party} is being told the reason.",
        "withdrawn": f"Terminated: the request was withdrawn before {party} acknowledged it.",
    }.get(done)
