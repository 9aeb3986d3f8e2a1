"""Contract negotiation, both roles: what happens when a message arrives or an operator acts.

The protocol routes and the Management API call these functions; they never
send anything themselves. A step that needs a message to the counter-party
puts it in the negotiation's outbox (one pending message, see
``contracts.models.NegotiationRow``) and the delivery worker sends it; the
state changes when the counter-party has accepted the message. So the answer
to a request always goes out before any callback, and a restart loses
nothing: the outbox is a column.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import or_, select, update
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.contract_definitions import get_contract_definition
from catalog.errors import ConflictError
from catalog.queryspec import A_ID, selector_condition, table_of
from connector.dsp import negotiation_messages as wire
from connector.translog import events as translog
from contracts.agreed_terms import RULE_KEYS, terms_key
from contracts.agreements import (
    AgreementRecord,
    agreement_for_negotiation,
    set_consumer_signature,
    store_agreement,
)
from contracts.models import NegotiationRow
from contracts.negotiation import RULES, TERMINAL, Message, Role, State, TransitionError, transition
from contracts.offers import parse_offer_id, policy_fingerprint
from contracts.signing import SignatureError, agreement_key_id, sign_agreement, verify_agreement_signature
from identity.peer_auth import Peer
from identity.trustlist import get_member
from policies.decision import Decision, RequestContext
from policies.definitions import get_policy_definition
from policies.dsp_form import offer_to_dsp
from runtime.outbox import settle as settle_in_flight
from runtime.service import ServiceCore

# Set far enough ahead that only the explicit kick after the HTTP answer sends a message queued
# while answering; the poll loop is the fallback (and the retry path).
KICK_GRACE_MS = 1000
_N = table_of(NegotiationRow).c


class NegotiationError(Exception):
    """A message or action was refused; nothing changed. ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str, row: NegotiationRow | None = None) -> None:
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
    agreement: dict[str, Any] | None = None  # the agreement to record once an AGREEMENT is delivered

    def to_json(self) -> str:
        return json.dumps(
            {"message": self.message.value, "url": self.url, "body": self.body, "agreement": self.agreement}
        )

    @classmethod
    def from_json(cls, text: str) -> Pending:
        data = json.loads(text)
        return cls(Message(data["message"]), data["url"], data["body"], data.get("agreement"))


def new_pid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def address_is_under(url: str, base: str) -> bool:
    """Is ``url`` the counter-party's registered address or below it (same origin, path prefix)?"""
    a, b = urlsplit(url), urlsplit(base)
    if (a.scheme, a.hostname, a.port) != (b.scheme, b.hostname, b.port) or a.query or a.fragment:
        return False
    base_path = b.path.rstrip("/")
    return a.path.rstrip("/") == base_path or a.path.startswith(base_path + "/")


def _role(row: NegotiationRow) -> Role:
    return Role(row.role)


# Our consumer-side state before the provider has acknowledged the first request (DSP has no name
# for it; EDC calls it INITIAL too). The state machine sees it as "no negotiation yet".
INITIAL = "INITIAL"
# The end of the note on a negotiation that an automatic consumer left for an operator to decide.
WAITING_FOR_OPERATOR = "waiting for an operator"


def _state(row: NegotiationRow) -> State | None:
    return None if row.state == INITIAL else State(row.state)


def _incoming(row: NegotiationRow, kind: Message) -> State:
    """The state after the counter-party's ``kind`` arrives for ``row`` now, or TransitionError.

    To the state machine our INITIAL is "no negotiation yet", where a provider's offer would start
    one; but a message for a negotiation we hold can only follow our request, whose answer we have
    not recorded (it is in flight, or was lost): not allowed yet (``settle`` waits for an answer in
    flight; ``take_implied_delivery`` takes the message as proof that the request arrived).
    """
    if row.state == INITIAL:
        raise TransitionError(f"{kind.value} is not allowed before our request has been answered")
    return transition(_state(row), kind, _role(row).other)


def _peer_address(row: NegotiationRow) -> str:
    return row.counter_party_address.rstrip("/")


# ---------------------------------------------------------------- lookups


def find_by_pid(session: Session, pid: str, counter_party: str) -> NegotiationRow:
    """The negotiation whose pid on OUR side is ``pid``, with this counter-party; else 404."""
    statement = select(NegotiationRow).where(
        or_(
            (_N.role == Role.PROVIDER.value) & (_N.provider_pid == pid),
            (_N.role == Role.CONSUMER.value) & (_N.consumer_pid == pid),
        )
    )
    for row in session.scalars(statement):
        if row.counter_party_did == counter_party:
            return row
    raise NegotiationError(404, f"no negotiation {pid} with you")


def find_initial_offer(session: Session, provider_pid: str, counter_party: str) -> NegotiationRow | None:
    """Our consumer negotiation started by this provider's offer with ``provider_pid``, if any."""
    statement = select(NegotiationRow).where(
        _N.role == Role.CONSUMER.value, _N.provider_pid == provider_pid, _N.counter_party_did == counter_party
    )
    return session.scalars(statement).first()


def get_negotiation(session: Session, negotiation_id: str) -> NegotiationRow | None:
    return session.get(NegotiationRow, negotiation_id)


def settle(session: Session, row: NegotiationRow, kind: Message) -> NegotiationRow:
    """``row`` once our own message in flight (if any) is recorded, before judging ``kind`` by it.

    The counter-party answers our message and may send its next one at once (an
    automatic provider answers the request, then sends the agreement); that one
    can arrive before our worker has recorded the answer, and so the state it
    moves to. While a delivery is in flight (its lease held) and ``kind`` is not
    allowed yet, wait for the worker to record it (``runtime.outbox``).
    """

    def allowed(current: NegotiationRow) -> bool:
        try:
            _incoming(current, kind)
            return True
        except TransitionError:
            return False

    return settle_in_flight(session, row, allowed)


# ---------------------------------------------------------------- repeats and lost answers
#
# An answer can be lost after the receiver has committed (a timeout, a sender killed before it
# records the delivery): the sender then sends the same message again, or the receiver's next
# message arrives while the sender still holds its own in the outbox. Both are recognised from
# what each side has recorded; see docs/negotiation.md, "Lost answers".


def _termination_detail(message: dict[str, Any]) -> str:
    reasons = message.get("reason") or []
    return "terminated by the counter-party" + (f": {reasons[0]}" if reasons else "")


def is_repeat(session: Session, row: NegotiationRow, kind: Message, message: dict[str, Any]) -> bool:
    """Is ``message`` the counter-party's message that produced our current state, sent again?

    It is when the state it leads to is the one we are in and it carries what we recorded from it:
    the offer (a counter-request's offer ``@id``, which fingerprints our terms; a counter-offer's
    whole offer), the agreement and its signature, the verification's signature, the termination's
    reason. An event carries nothing but its type. On an existing negotiation a repeat is refused
    all the same (``receive`` names it one); an initial offer sent again is answered as before.
    """
    senders, _, after = RULES[kind]
    if _role(row).other not in senders or _state(row) is not after:
        return False
    if kind is Message.TERMINATION:
        return row.error_detail == _termination_detail(message)
    if kind in (Message.REQUEST, Message.OFFER):
        offer, ours = message.get("offer"), json.loads(row.offer)
        if kind is Message.OFFER:
            return bool(offer == ours)
        return (
            isinstance(offer, dict)
            and offer.get("@id") == ours.get("@id")
            and offer.get("target", row.asset_id) == row.asset_id
        )
    if kind in (Message.AGREEMENT, Message.VERIFICATION):
        record = agreement_for_negotiation(session, row.id)
        signature = message.get(wire.SIGNATURE_MEMBER)
        signature = signature if isinstance(signature, str) else None
        if record is None:
            return False
        if kind is Message.VERIFICATION:
            return record.consumer_signature == signature
        return record.agreement == message.get("agreement") and record.provider_signature == signature
    return True  # ACCEPTED, FINALIZED


def _implied(row: NegotiationRow, kind: Message) -> Pending | None:
    """Our pending message, when ``kind`` from the counter-party is allowed only once it has arrived."""
    if row.pending_message is None:
        return None
    state = _state(row)
    try:
        _incoming(row, kind)
        return None  # allowed as things are: it says nothing about our message
    except TransitionError:
        pass
    pending = Pending.from_json(row.pending_message)
    try:
        transition(transition(state, pending.message, _role(row)), kind, _role(row).other)
    except TransitionError:
        return None
    return pending


# How long the row stays claimed if we stop between recording an agreement and the row (as a lease).
CLAIM_MS = 30_000


def take_implied_delivery(
    session: Session, row: NegotiationRow, kind: Message, message: dict[str, Any]
) -> NegotiationRow:
    """Record our pending message as delivered when the counter-party's ``message`` shows it arrived.

    The counter-party may send ``kind`` only in the state our message leads to, so it has applied
    our message and its answer was lost (or is not recorded yet). Taken only when no delivery of
    ours is in flight: the row is claimed like the worker's lease, in this transaction, so the
    worker cannot send the message again meanwhile; the caller's commit records both steps. While
    one is in flight (``settle`` has waited for it), a 503 asks the counter-party to try again.
    """
    pending = _implied(row, kind)
    if pending is None or message.get("consumerPid") != row.consumer_pid:
        return row
    if row.provider_pid is not None and message.get("providerPid") != row.provider_pid:
        return row
    now = now_millis()
    claim = (
        update(table_of(NegotiationRow))
        .where(
            _N.id == row.id,
            _N.pending_message == row.pending_message,
            or_(_N.lease_until.is_(None), _N.lease_until < now),
        )
        .values(lease_owner="receiver", lease_until=now + CLAIM_MS)
    )
    if not session.connection().execute(claim).rowcount:
        session.refresh(row)
        if _implied(row, kind) is None:
            return row  # our delivery was recorded meanwhile: judged as things are
        # Still in flight (or its worker was killed, and its lease has not expired): not a conflict,
        # and not yet decided. Retryable, so that the counter-party does not give up.
        raise NegotiationError(
            503, f"our {pending.message.value} to you is still on its way; try again shortly", row
        )
    session.refresh(row)
    delivered(session, row, pending, None, commit=False)
    row.lease_owner = None
    row.lease_until = None
    return row


def applied_by_counter_party(row: NegotiationRow, pending: Pending, their_state: object) -> bool:
    """Does the counter-party's state show that our refused ``pending`` message reached it before?

    Yes when it is in the state our message leads to, or one step beyond by a message of its own
    (other than a termination) that has not reached us yet: it could only be there after our
    message. Not when it is where we are: then our message has not arrived.
    """
    try:
        theirs = State(str(their_state))
        ours = _state(row)
        after = transition(ours, pending.message, _role(row))
    except (ValueError, TransitionError):
        return False
    if theirs is ours:
        return False
    if theirs is after:
        return True
    for message in Message:
        if message is Message.TERMINATION:
            continue
        try:
            if transition(after, message, _role(row).other) is theirs:
                return True
        except TransitionError:
            continue
    return False


def state_url(row: NegotiationRow) -> str | None:
    """The counter-party's ``GET /negotiations/{pid}`` for this negotiation (None: its pid is unknown)."""
    pid = row.consumer_pid if _role(row) is Role.PROVIDER else row.provider_pid
    return f"{_peer_address(row)}/negotiations/{pid}" if pid else None


# ---------------------------------------------------------------- state changes


def _touch(row: NegotiationRow) -> None:
    row.updated_at = now_millis()


def _allowed(row: NegotiationRow, message: Message) -> State:
    """The state after we send ``message`` now; a 409 (nothing changed) when that is not allowed."""
    try:
        return transition(_state(row), message, _role(row))
    except TransitionError as exc:
        raise NegotiationError(409, str(exc), row) from None


def _enqueue(row: NegotiationRow, pending: Pending) -> None:
    if row.pending_message is not None:
        current = Pending.from_json(row.pending_message).message.value
        raise NegotiationError(409, f"a {current} is still being delivered; try again when it is", row)
    _allowed(row, pending.message)  # refuse now what the counter-party would refuse
    row.pending_message = pending.to_json()
    row.attempts = 0
    row.next_attempt_at = now_millis() + KICK_GRACE_MS
    _touch(row)


def _receive(row: NegotiationRow, message: Message) -> State:
    """Apply a message from the counter-party to our state (or refuse it, changing nothing)."""
    try:
        after = _incoming(row, message)
    except TransitionError as exc:
        raise NegotiationError(409, str(exc), row) from None
    row.state = after.value
    _touch(row)
    return after


def _terminate_locally(row: NegotiationRow, reason: str) -> None:
    row.state = State.TERMINATED.value
    row.error_detail = reason[:4000]
    row.pending_message = None
    row.next_attempt_at = None
    _touch(row)


def delivered(
    session: Session,
    row: NegotiationRow,
    pending: Pending,
    response: dict[str, Any] | None,
    *,
    commit: bool = True,
) -> None:
    """The counter-party accepted our message: now our state moves."""
    after = transition(_state(row), pending.message, _role(row))
    if pending.message is Message.AGREEMENT and pending.agreement is not None:
        # Saved with the row's move to AGREED, in the caller's commit (a retry after a stop between
        # two commits would find the agreement stored; with one, either both are there or neither).
        agreement = pending.agreement
        store_agreement(
            session,
            AgreementRecord(
                id=agreement["@id"],
                negotiation_id=row.id,
                provider_did=agreement["assigner"],
                consumer_did=agreement["assignee"],
                asset_id=agreement["target"],
                agreement=agreement,
                signed_at=now_millis(),
                provider_signature=pending.body.get(wire.SIGNATURE_MEMBER),
                consumer_signature=None,
            ),
            commit=False,
            if_absent=True,  # stored already by a try whose answer was lost
        )
        row.agreement_id = agreement["@id"]
    if pending.message in (Message.OFFER, Message.REQUEST) and isinstance(pending.body.get("offer"), dict):
        row.offer = json.dumps(pending.body["offer"])  # the current offer: the one both sides now have
    row.state = after.value
    if pending.message is Message.TERMINATION:
        reasons = pending.body.get("reason") or [row.error_detail or ""]
        _log_conclusion(session, row, "us", str(reasons[0]), pending.body.get("code"))
    elif pending.message is Message.FINALIZED:
        _log_conclusion(session, row, "us")
    if pending.message is Message.REQUEST and response is not None and row.provider_pid is None:
        provider_pid = response.get("providerPid")
        if isinstance(provider_pid, str) and provider_pid:
            row.provider_pid = provider_pid
    row.pending_message = None
    row.next_attempt_at = None
    row.attempts = 0
    if row.error_detail and row.error_detail.startswith("retrying "):
        row.error_detail = None  # delivered after all: the retry note no longer applies
    elif row.error_detail and row.error_detail.endswith(WAITING_FOR_OPERATOR) and _state(row) not in TERMINAL:
        row.error_detail = None  # the operator has acted: the pause it explained is over
    _touch(row)
    session.add(row)
    if commit:
        session.commit()


def undeliverable(session: Session, row: NegotiationRow, reason: str) -> None:
    _terminate_locally(row, reason)
    _log_conclusion(session, row, "delivery", reason, "undeliverable")
    session.add(row)
    session.commit()


def _log_conclusion(
    session: Session, row: NegotiationRow, by: str, reason: str = "", code: str | None = None
) -> None:
    """Record in the transfer log, in this transaction, a negotiation that has just ended."""
    if row.state == State.FINALIZED.value:
        # No autoflush: the row's own change is saved by the caller's commit; flushing it here
        # first would cost a second UPDATE of it. (What this reads is the agreement, stored earlier.)
        with session.no_autoflush:
            record = agreement_for_negotiation(session, row.id)
        if record is not None:
            translog.agreement_finalized(session, record, row.role)
    elif row.state == State.TERMINATED.value:
        translog.negotiation_refused(session, row, by=by, reason=reason, code=code)


# ---------------------------------------------------------------- the provider's side


def _context_of(did: str, memberships: frozenset[str]) -> RequestContext:
    # Purpose, count and elapsed time constrain the use of the data: usage control decides them at
    # every access (connector.usage); a negotiation decides who may agree, and whether now.
    return RequestContext(participant_id=did, memberships=memberships, stage="negotiation")


def _request_context(session: Session, did: str) -> RequestContext:
    member = get_member(session, did)
    return _context_of(did, frozenset(member.memberships if member else ()))


def _policy_decision(core: ServiceCore, policy_id: str, context: RequestContext) -> Decision:
    """The contract (or access) policy's decision, through the compiled policy engine."""
    return core.policy_engine.decide(policy_id, context)


@dataclass(frozen=True)
class ResolvedOffer:
    contract_definition_id: str
    asset_id: str
    contract_policy_id: str
    approval: str
    offer: dict[str, Any]  # our offer, DSP form, with target


def resolve_offer(
    session: Session,
    core: ServiceCore,
    peer_did: str,
    offer: dict[str, Any],
    context: RequestContext | None = None,
) -> ResolvedOffer:
    """Check that ``offer`` is one we made to this peer and is still current; 400 naming why not.

    ``context``: the peer as its request's authentication found it (else read from the trust list).
    """
    offer_id = offer.get("@id")
    if not isinstance(offer_id, str):
        raise NegotiationError(400, "the offer has no @id")
    parsed = parse_offer_id(offer_id)
    if parsed is None:
        raise NegotiationError(400, f"offer {offer_id!r} is not an offer this provider made")
    definition = get_contract_definition(session, parsed.contract_definition_id)
    contract = get_policy_definition(session, definition.contract_policy_id) if definition else None
    if definition is None or contract is None:
        raise NegotiationError(400, f"offer {offer_id} is no longer offered")
    selected = session.scalars(  # none when the asset is gone, or no longer selected by the definition
        select(A_ID).where(A_ID == parsed.asset_id, selector_condition([definition.assets_selector]))
    ).first()
    if selected is None:
        raise NegotiationError(400, f"offer {offer_id} is no longer offered")
    if parsed.policy_fingerprint != policy_fingerprint(contract.policy_node):
        raise NegotiationError(
            400, f"offer {offer_id} is outdated: its terms have changed; fetch the catalog again"
        )
    target = offer.get("target")
    if target is not None and target != parsed.asset_id:
        raise NegotiationError(400, f"offer {offer_id} is for {parsed.asset_id}, not {target}")
    context = context or _request_context(session, peer_did)
    access = _policy_decision(core, definition.access_policy_id, context)
    if not access.allowed:
        # The offer is not in this peer's catalog; say so without the access policy's details.
        raise NegotiationError(400, f"offer {offer_id} is not an offer this provider made to you")
    ours = offer_to_dsp(contract.policy, offer_id, assigner=core.settings.did, target=parsed.asset_id)
    return ResolvedOffer(definition.id, parsed.asset_id, contract.id, definition.negotiation_approval, ours)


def provider_receive_initial_request(
    session: Session, core: ServiceCore, peer: Peer, message: dict[str, Any]
) -> tuple[NegotiationRow, bool]:
    """(the negotiation, whether this request created it: False for a repeat, answered as before)."""
    consumer_pid = message["consumerPid"]
    callback = message.get("callbackAddress")
    if not isinstance(callback, str) or not address_is_under(callback, peer.dsp_url):
        raise NegotiationError(
            400, f"callbackAddress {callback!r} is not under your registered DSP address {peer.dsp_url}"
        )
    existing = session.scalars(
        select(NegotiationRow).where(
            _N.role == Role.PROVIDER.value, _N.consumer_pid == consumer_pid, _N.counter_party_did == peer.did
        )
    ).first()
    if existing is not None:
        if not _same_initial_request(existing, message["offer"], callback):
            raise NegotiationError(
                409, f"consumerPid {consumer_pid} names another negotiation with you", existing
            )
        return existing, False  # a repeated initial request (the consumer retried): same answer
    context = _context_of(peer.did, peer.memberships)
    resolved = resolve_offer(session, core, peer.did, message["offer"], context)
    row = NegotiationRow(
        id=str(uuid.uuid4()),
        role=Role.PROVIDER.value,
        provider_pid=new_pid(),
        consumer_pid=consumer_pid,
        counter_party_did=peer.did,
        counter_party_address=callback.rstrip("/"),
        state=transition(None, Message.REQUEST, Role.CONSUMER).value,
        asset_id=resolved.asset_id,
        contract_definition_id=resolved.contract_definition_id,
        offer=json.dumps(resolved.offer),
        approval=resolved.approval,
        created_at=now_millis(),
        updated_at=now_millis(),
    )
    if row.approval == "automatic":
        _provider_agree_or_refuse(
            session, core, row, contract_policy_id=resolved.contract_policy_id, context=context
        )
    session.add(row)
    session.commit()
    return row, True


def _same_initial_request(row: NegotiationRow, offer: Any, callback: str) -> bool:
    """Does an initial request name the offer and callback address that ``row`` was started with?

    A repeat is answered as the first time; the same consumerPid for other terms or another
    address is a different negotiation, which must not be silently answered as the first one.
    """
    recorded = json.loads(row.offer)
    return (
        isinstance(offer, dict)
        and offer.get("@id") == recorded.get("@id")
        and offer.get("target", row.asset_id) == row.asset_id
        and callback.rstrip("/") == row.counter_party_address
    )


def _build_agreement(core: ServiceCore, row: NegotiationRow) -> dict[str, Any]:
    offer = json.loads(row.offer)
    agreement: dict[str, Any] = {
        "@id": new_pid(),
        "@type": "Agreement",
        "target": row.asset_id,
        "assigner": core.settings.did,
        "assignee": row.counter_party_did,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for rules in ("permission", "prohibition", "obligation"):
        if rules in offer:
            agreement[rules] = offer[rules]
    return agreement


def _signed_by_us(core: ServiceCore, agreement: dict[str, Any]) -> str:
    """Our signature over ``agreement`` (the provider's, or the consumer's counter-signature)."""
    return sign_agreement(agreement, core.key, agreement_key_id(core.settings.did))


def _provider_agree_or_refuse(
    session: Session,
    core: ServiceCore,
    row: NegotiationRow,
    *,
    by_operator: bool = False,
    contract_policy_id: str | None = None,
    context: RequestContext | None = None,
) -> None:
    """Agree when the contract policy admits the consumer; otherwise terminate, saying why.

    An operator's "agree" is refused instead (409, with the explanation): a person asked, so the
    negotiation stays as it was for them to decide what next. ``contract_policy_id`` and
    ``context``: what the caller has just read (else they are read here).
    """
    if contract_policy_id is None:
        definition = get_contract_definition(session, row.contract_definition_id or "")
        contract_policy_id = definition.contract_policy_id if definition else ""
    context = context or _request_context(session, row.counter_party_did)
    decision = _policy_decision(core, contract_policy_id, context)
    if not decision.allowed and by_operator:
        raise NegotiationError(
            409, f"the contract policy does not admit {row.counter_party_did}: {decision.explanation}", row
        )
    if not decision.allowed:
        row.error_detail = decision.explanation
        _enqueue(
            row,
            _termination(row, "policy", f"the contract policy does not admit you: {decision.explanation}"),
        )
        return
    agreement = _build_agreement(core, row)
    signature = _signed_by_us(core, agreement)
    body = wire.agreement_message(row.provider_pid or "", row.consumer_pid or "", agreement, signature)
    _enqueue(
        row,
        Pending(
            Message.AGREEMENT,
            f"{_peer_address(row)}/negotiations/{row.consumer_pid}/agreement",
            body,
            agreement,
        ),
    )


def _termination(row: NegotiationRow, code: str, reason: str) -> Pending:
    if _role(row) is Role.PROVIDER:
        url = f"{_peer_address(row)}/negotiations/{row.consumer_pid}/termination"
    else:
        url = f"{_peer_address(row)}/negotiations/{row.provider_pid}/termination"
    return Pending(
        Message.TERMINATION,
        url,
        wire.termination_message(row.provider_pid or "", row.consumer_pid or "", code, reason),
    )


def receive(
    session: Session,
    core: ServiceCore,
    row: NegotiationRow,
    kind: Message,
    message: dict[str, Any],
    *,
    their_key: dict[str, str] | None = None,
) -> None:
    """A message from the counter-party for an existing negotiation (both roles). ``their_key``: the
    counter-party's pinned public key, when the caller has just read it (authenticating the message)."""
    # The state machine first: a message the counter-party may not send now (or at all, in its
    # role) is refused as such before any role's own checks look at it. So is a repeat of the
    # message that brought us here (DSP: not allowed in this state; the TCK's CN:03-04): its
    # sender, if its first answer was lost, learns from our state that it arrived (the worker's
    # judgement of a 409). The reason says so, to spare a human the puzzle.
    try:
        _incoming(row, kind)
    except TransitionError as exc:
        reason = str(exc)
        if is_repeat(session, row, kind, message):
            reason += f"; it repeats the {kind.value} that brought this negotiation to {row.state}"
        raise NegotiationError(409, reason, row) from None
    if kind is Message.TERMINATION:
        _receive(row, kind)
        row.error_detail = _termination_detail(message)
        row.pending_message = None
        row.next_attempt_at = None
        code = message.get("code")
        _log_conclusion(
            session, row, "counter-party", row.error_detail, code if isinstance(code, str) else None
        )
    elif kind is Message.AGREEMENT:
        _consumer_receive_agreement(session, core, row, message, their_key)
    elif kind is Message.VERIFICATION:
        _provider_receive_verification(session, row, message, their_key)
    elif kind is Message.REQUEST:  # a counter-request from the consumer
        context = _request_context(session, row.counter_party_did)
        resolved = resolve_offer(session, core, row.counter_party_did, message["offer"], context)
        _receive(row, kind)
        row.offer = json.dumps(resolved.offer)
        if row.approval == "automatic":
            _provider_agree_or_refuse(session, core, row, context=context)
    elif kind is Message.OFFER:  # a counter-offer from the provider
        _receive(row, kind)
        offered = message["offer"]
        asked = json.loads(row.offer)
        row.offer = json.dumps(offered)
        if row.approval == "automatic":
            if _same_terms(offered, asked):
                _enqueue(row, _event(row, Message.ACCEPTED))
            else:
                row.error_detail = f"the provider offered different terms; {WAITING_FOR_OPERATOR}"
    elif kind is Message.ACCEPTED:
        _receive(row, kind)
        if row.approval == "automatic":
            _provider_agree_or_refuse(session, core, row)
    elif kind is Message.FINALIZED:
        _receive(row, kind)
        _log_conclusion(session, row, "counter-party")
    session.add(row)
    session.commit()


def _same_terms(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Do two offers (or an offer and an agreement) say the same, however written? Unreadable: no."""
    same_target = a.get("target", b.get("target")) == b.get("target", a.get("target"))
    if not same_target:
        return False
    if all(a.get(k) == b.get(k) for k in RULE_KEYS):
        return True  # written alike (the usual case): no JSON-LD needed
    key = terms_key(a)
    return key is not None and key == terms_key(b)


def _event(row: NegotiationRow, event: Message) -> Pending:
    pid = row.consumer_pid if _role(row) is Role.PROVIDER else row.provider_pid
    url = f"{_peer_address(row)}/negotiations/{pid}/events"
    return Pending(event, url, wire.event_message(event, row.provider_pid or "", row.consumer_pid or ""))


def _check_their_signature(
    session: Session,
    row: NegotiationRow,
    agreement: dict[str, Any],
    signature: str,
    their_key: dict[str, str] | None,
) -> None:
    """The counter-party's signature over ``agreement`` verifies with its pinned key (``their_key``
    when the caller has it from authenticating the message; else read here)."""
    if their_key is None:
        member = get_member(session, row.counter_party_did)
        if member is None:
            raise NegotiationError(401, "you are no longer a member", row)
        their_key = member.public_jwk
    try:
        verify_agreement_signature(agreement, signature, their_key, expected_kid_did=row.counter_party_did)
    except SignatureError as exc:
        raise NegotiationError(
            400, f"your signature over the agreement does not verify: {exc}", row
        ) from None


def _provider_receive_verification(
    session: Session, row: NegotiationRow, message: dict[str, Any], their_key: dict[str, str] | None
) -> None:
    signature = message.get(wire.SIGNATURE_MEMBER)
    record = agreement_for_negotiation(session, row.id)
    if record is None:
        raise NegotiationError(409, "there is no agreement to verify", row)
    if isinstance(signature, str):
        _check_their_signature(session, row, record.agreement, signature, their_key)
    _receive(row, Message.VERIFICATION)
    if isinstance(signature, str):
        try:  # in this transaction: VERIFIED, the signature and the FINALIZED queued are saved together
            set_consumer_signature(session, record.id, signature, commit=False)
        except ConflictError as exc:
            raise NegotiationError(409, str(exc), row) from None
    if row.approval == "automatic":
        _enqueue(row, _event(row, Message.FINALIZED))


# ---------------------------------------------------------------- the consumer's side


def consumer_start(
    session: Session,
    core: ServiceCore,
    counter_party: str,
    address: str,
    offer: dict[str, Any],
    approval: str,
    *,
    commit: bool = True,
) -> NegotiationRow:
    """Start negotiating for ``offer`` as the consumer; ``commit=False``: the caller's transaction saves it."""
    member = get_member(session, counter_party)
    if member is None:
        raise NegotiationError(400, f"{counter_party} is not a member of this data space")
    if address.rstrip("/") != member.dsp_url.rstrip("/"):
        raise NegotiationError(
            400, f"counterPartyAddress {address} is not the DSP address registered for {counter_party}"
        )
    if not isinstance(offer.get("@id"), str) or not isinstance(offer.get("target"), str):
        raise NegotiationError(
            400, "the offer needs its @id (from the catalog) and its target (the dataset id)"
        )
    consumer_pid = new_pid()
    row = NegotiationRow(
        id=str(uuid.uuid4()),
        role=Role.CONSUMER.value,
        consumer_pid=consumer_pid,
        counter_party_did=member.did,
        counter_party_address=member.dsp_url.rstrip("/"),
        state=INITIAL,
        asset_id=offer["target"],
        offer=json.dumps(offer),
        approval=approval,
        created_at=now_millis(),
        updated_at=now_millis(),
    )
    body = wire.request_message(consumer_pid, offer, callback=core.settings.dsp_url)
    _enqueue(row, Pending(Message.REQUEST, f"{_peer_address(row)}/negotiations/request", body))
    session.add(row)
    if commit:
        session.commit()
    return row


def _consumer_receive_agreement(
    session: Session,
    core: ServiceCore,
    row: NegotiationRow,
    message: dict[str, Any],
    their_key: dict[str, str] | None,
) -> None:
    agreement = message["agreement"]
    signature = message.get(wire.SIGNATURE_MEMBER)
    if agreement.get("assignee") != core.settings.did or agreement.get("assigner") != row.counter_party_did:
        raise NegotiationError(400, "the agreement must name you as assigner and us as assignee", row)
    if agreement.get("target") != row.asset_id:
        raise NegotiationError(
            400, f"the agreement is for {agreement.get('target')}, not {row.asset_id}", row
        )
    if isinstance(signature, str):
        _check_their_signature(session, row, agreement, signature, their_key)
    _receive(row, Message.AGREEMENT)
    # Our counter-signature commits us to the terms: it is made only when we verify, now (an
    # automatic consumer given the terms it asked for) or when an operator does (``verify``).
    verifies_now = row.approval == "automatic" and _same_terms(agreement, json.loads(row.offer))
    own_signature = _signed_by_us(core, agreement) if verifies_now else None
    # In this transaction: AGREED, the agreement and our verification queued are saved together (a
    # stop between two commits would leave AGREED with nothing queued, and the provider's retry
    # would be answered as a repeat: stuck on both sides).
    record = AgreementRecord(
        id=agreement["@id"],
        negotiation_id=row.id,
        provider_did=row.counter_party_did,
        consumer_did=core.settings.did,
        asset_id=agreement["target"],
        agreement=agreement,
        signed_at=now_millis(),
        provider_signature=signature if isinstance(signature, str) else None,
        consumer_signature=own_signature,
    )
    try:
        store_agreement(session, record, commit=False)
    except ConflictError:
        raise NegotiationError(
            409, f"agreement {agreement['@id']} is already recorded for another negotiation", row
        ) from None
    row.agreement_id = agreement["@id"]
    if verifies_now:
        _enqueue(row, _verification(row, own_signature))
    elif row.approval == "automatic":
        # Never counter-sign by ourselves terms we did not ask for (or accept): an operator looks.
        row.error_detail = f"the agreement's terms are not those of the offer; {WAITING_FOR_OPERATOR}"


def _verification(row: NegotiationRow, signature: str | None) -> Pending:
    url = f"{_peer_address(row)}/negotiations/{row.provider_pid}/agreement/verification"
    return Pending(
        Message.VERIFICATION,
        url,
        wire.verification_message(row.provider_pid or "", row.consumer_pid or "", signature),
    )


# ---------------------------------------------------------------- operator actions (manual approval)


def _check_role(row: NegotiationRow, role: Role, action: str) -> None:
    if _role(row) is not role:
        raise NegotiationError(
            409, f"only the {role.value} can {action}; this connector is the {row.role}", row
        )


def _operator_offer(row: NegotiationRow, body: dict[str, Any] | None) -> dict[str, Any]:
    """An operator's (counter-)offer: the terms given, for this negotiation's dataset and offer id."""
    offer = dict(body or {})
    offer.setdefault("@id", json.loads(row.offer).get("@id"))
    offer["target"] = row.asset_id
    offer["@type"] = "Offer"
    return offer


def operator_action(
    session: Session, core: ServiceCore, row: NegotiationRow, action: str, body: dict[str, Any] | None
) -> None:
    """Perform an operator's step: offer, agree, finalize (provider); accept, request, verify (consumer); terminate."""
    if _state(row) in TERMINAL or (_state(row) is None and action != "terminate"):
        raise NegotiationError(409, f"the negotiation is {row.state}; that cannot happen now", row)
    if action == "terminate" and row.lease_until is not None and row.lease_until > now_millis():
        raise NegotiationError(409, "a message is being sent right now; try again in a moment", row)
    if action == "terminate" and row.pending_message is not None:
        # The counter-party has not accepted the queued message: the termination replaces it.
        row.pending_message = None
        row.next_attempt_at = None
    if action == "terminate" and _state(row) is None:
        # The provider never acknowledged it: there is no one to tell.
        _terminate_locally(row, str((body or {}).get("reason") or "terminated by the operator"))
        _log_conclusion(session, row, "us", row.error_detail or "", "operator")
    elif action == "terminate":
        reason = (body or {}).get("reason") or "terminated by the operator"
        _enqueue(row, _termination(row, "operator", str(reason)))
        row.error_detail = str(reason)
    elif action == "agree":
        _check_role(row, Role.PROVIDER, "agree")
        _allowed(row, Message.AGREEMENT)
        _provider_agree_or_refuse(session, core, row, by_operator=True)
    elif action == "finalize":
        _check_role(row, Role.PROVIDER, "finalize")
        _enqueue(row, _event(row, Message.FINALIZED))
    elif action == "offer":
        _check_role(row, Role.PROVIDER, "offer")
        offer = _operator_offer(row, body)
        url = f"{_peer_address(row)}/negotiations/{row.consumer_pid}/offers"
        message = wire.offer_message(row.provider_pid or "", offer, consumer_pid=row.consumer_pid)
        _enqueue(row, Pending(Message.OFFER, url, message))  # the offer becomes current once delivered
    elif action == "accept":
        _check_role(row, Role.CONSUMER, "accept")
        _enqueue(row, _event(row, Message.ACCEPTED))
    elif action == "request":
        _check_role(row, Role.CONSUMER, "make a counter-request")
        offer = _operator_offer(row, body)
        url = f"{_peer_address(row)}/negotiations/{row.provider_pid}/request"
        message = wire.request_message(row.consumer_pid or "", offer, provider_pid=row.provider_pid)
        _enqueue(row, Pending(Message.REQUEST, url, message))  # the offer becomes current once delivered
    elif action == "verify":
        _check_role(row, Role.CONSUMER, "verify")
        _allowed(row, Message.VERIFICATION)  # before anything is signed
        record = agreement_for_negotiation(session, row.id)
        if record is None:
            raise NegotiationError(409, "there is no agreement to verify", row)
        signature = record.consumer_signature or _signed_by_us(core, record.agreement)
        _enqueue(row, _verification(row, signature))
        try:  # the operator's counter-signature, saved with the verification it travels in
            set_consumer_signature(session, record.id, signature, commit=False)
        except ConflictError as exc:
            raise NegotiationError(409, str(exc), row) from None
    else:
        raise NegotiationError(404, f"there is no action {action!r}")
    session.add(row)
    session.commit()
