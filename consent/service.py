"""The citizen-facing service layer: pure functions over a Session, one transaction each.

Every function takes the citizen's id and touches only that citizen's rows:
an id of another citizen's record, event or identifier answers NotFound,
exactly like an id that does not exist. Changes return a ``ConsentChange``
result with the signed receipt (see consent/receipts.py).
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from consent.agreements import latest_revision, revision_dict
from consent.errors import Conflict, InvalidInput, NotFound
from consent.hashing import SUBJECT_HASH, subject_hash
from consent.ledger import NewEvent, append_event, next_seq, now_millis, record_change
from consent.models import (
    AgreementRevision,
    Citizen,
    ConsentEvent,
    ConsentRecord,
    DataAgreement,
    Organisation,
    SubjectIdentifier,
    TransferSummary,
)
from consent.receipts import ReceiptSigner, receipt_claims, sign_receipt
from consent.states import GIVEN_STATES, CurrentState, DpvState, LastEvent, derive_state, next_given_state

DAY_MS = 86_400_000
ATTEMPTS = 3
F = TypeVar("F", bound=Callable[..., Any])


def one_transaction(function: F) -> F:
    """Run a change as one transaction, again (up to ATTEMPTS) when a concurrent change got in first:
    the same switch flipped twice at once (unique record), or SQLite refusing a write whose read
    snapshot is stale. Each attempt starts from a rolled-back session, so nothing is half-written."""

    @functools.wraps(function)
    def attempt(session: Session, *args: Any, **kwargs: Any) -> Any:
        for remaining in range(ATTEMPTS - 1, -1, -1):
            try:
                return function(session, *args, **kwargs)
            except IntegrityError:
                session.rollback()
            except OperationalError as exc:
                session.rollback()
                if "locked" not in str(exc.orig):
                    raise
            if not remaining:
                raise Conflict("another change to the same consent happened at the same time; try again")
        raise AssertionError("unreachable")

    return attempt  # type: ignore[return-value]


ACTOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
METHOD = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
MAX_IDENTIFIER_LENGTH = 256


# ---- views ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Switch:
    """One (agreement, recipient) switch of a citizen: on only while consent is valid."""

    agreement_id: str
    recipient_did: str
    recipient_name: str
    purpose: str
    state: str  # a DPV state (derived)
    on: bool
    consented_version: int | None  # the revision the last decision was about
    latest_version: int
    needs_review: bool  # the notice changed materially since consent was given
    since: int | None
    expires_at: int | None


@dataclass(frozen=True)
class AgreementNotice:
    agreement_id: str
    name: str
    version: int
    content_hash: str
    purpose: str
    purpose_description: str
    data_categories: list[str]
    lawful_basis: str
    retention: str
    notice_text: str
    notice_version: str
    language: str
    valid_from: int | None
    valid_until: int | None
    consent_duration_days: int | None
    switches: list[Switch]


@dataclass(frozen=True)
class OrganisationView:
    did: str
    name: str
    agreements: list[AgreementNotice]


@dataclass(frozen=True)
class ConsentChange:
    record_id: str
    agreement_id: str
    recipient_did: str
    state: str
    on: bool
    changed: bool  # False: the switch already was in that position, no event was written
    seq: int | None
    at: int | None
    receipt: str | None


@dataclass(frozen=True)
class HistoryEntry:
    seq: int
    record_id: str
    agreement_id: str
    agreement_version: int
    agreement_hash: str
    recipient_did: str
    purpose: str
    controller_did: str
    state: str
    at: int
    actor: str
    method: str
    expires_at: int | None
    hash: str
    has_receipt: bool


@dataclass(frozen=True)
class IdentifierView:
    controller_did: str
    subject_hash: str
    label: str
    hint: str
    registered_at: int


@dataclass(frozen=True)
class TransferView:
    controller_did: str
    recipient_did: str
    purpose: str
    dataset: str
    transfer_id: str
    record_count: int
    transferred_at: int
    reported_at: int


def as_dict(view: Any) -> dict[str, Any]:
    result: dict[str, Any] = asdict(view)
    return result


# ---- citizens and their identifiers ---------------------------------------------------------


def create_citizen(session: Session, citizen_id: str | None = None) -> str:
    """A new citizen (the page links its account to this id); committed."""
    citizen_id = citizen_id or uuid.uuid4().hex
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", citizen_id):
        raise InvalidInput("a citizen id is 1-64 letters, digits, '_' or '-'")
    if session.get(Citizen, citizen_id) is not None:
        raise Conflict("that citizen id is taken")
    session.add(Citizen(id=citizen_id, created_at=now_millis()))
    session.commit()
    return citizen_id


def _citizen(session: Session, citizen_id: str) -> Citizen:
    citizen = session.get(Citizen, citizen_id)
    if citizen is None:
        raise NotFound("no such citizen")
    return citizen


def _organisation(session: Session, controller_did: str) -> Organisation:
    organisation = session.get(Organisation, controller_did)
    if organisation is None:
        raise NotFound(f"no organisation {controller_did!r}")
    return organisation


def register_subject_identifier(
    session: Session, citizen_id: str, controller_did: str, identifier: str, label: str
) -> IdentifierView:
    """Register the citizen's identifier at a controller (a card number); only its keyed hash is kept."""
    identifier = identifier.strip() if isinstance(identifier, str) else ""
    if not identifier or len(identifier) > MAX_IDENTIFIER_LENGTH or not identifier.isprintable():
        raise InvalidInput(f"an identifier is 1-{MAX_IDENTIFIER_LENGTH} printable characters")
    organisation = _organisation(session, controller_did)
    pseudonym = subject_hash(organisation.pseudonym_key, identifier)
    return register_subject_hash(session, citizen_id, controller_did, pseudonym, label, hint=identifier[-4:])


@one_transaction
def register_subject_hash(
    session: Session, citizen_id: str, controller_did: str, pseudonym: str, label: str, *, hint: str = ""
) -> IdentifierView:
    """Register an already keyed hash (the demo's seed, or a controller that hashed it); committed."""
    if not SUBJECT_HASH.match(pseudonym):
        raise InvalidInput("a subject hash is 64 lowercase hex digits (HMAC-SHA256)")
    if not LABEL.match(label):
        raise InvalidInput("a label is a short name such as 'card_id'")
    _citizen(session, citizen_id)
    _organisation(session, controller_did)
    existing = session.get(SubjectIdentifier, (controller_did, pseudonym))
    if existing is not None:
        if existing.citizen_id != citizen_id:
            raise Conflict("this identifier is registered to another account")
        return _identifier_view(existing)
    row = SubjectIdentifier(
        controller_did=controller_did,
        subject_hash=pseudonym,
        citizen_id=citizen_id,
        label=label,
        hint=hint[-4:],
        registered_at=now_millis(),
    )
    session.add(row)
    seq, _ = next_seq(session)
    record_change(
        session,
        seq,
        kind="identifier",
        controller_did=controller_did,
        at=row.registered_at,
        citizen_id=citizen_id,
        state="registered",
        subject_hashes=[pseudonym],
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("this identifier is registered to another account") from None
    return _identifier_view(row)


@one_transaction
def remove_subject_identifier(session: Session, citizen_id: str, controller_did: str, pseudonym: str) -> None:
    row = session.get(SubjectIdentifier, (controller_did, pseudonym))
    if row is None or row.citizen_id != citizen_id:
        raise NotFound("no such identifier of yours")
    session.delete(row)
    seq, _ = next_seq(session)
    record_change(
        session,
        seq,
        kind="identifier",
        controller_did=controller_did,
        at=now_millis(),
        citizen_id=citizen_id,
        state="removed",
        subject_hashes=[pseudonym],
    )
    session.commit()


def subject_identifiers(session: Session, citizen_id: str) -> list[IdentifierView]:
    rows = session.exec(
        select(SubjectIdentifier)
        .where(SubjectIdentifier.citizen_id == citizen_id)
        .order_by(col(SubjectIdentifier.controller_did), col(SubjectIdentifier.registered_at))
    ).all()
    return [_identifier_view(row) for row in rows]


def _identifier_view(row: SubjectIdentifier) -> IdentifierView:
    return IdentifierView(row.controller_did, row.subject_hash, row.label, row.hint, row.registered_at)


def _hashes_at(session: Session, citizen_id: str, controller_did: str) -> list[str]:
    return list(
        session.exec(
            select(SubjectIdentifier.subject_hash).where(
                SubjectIdentifier.citizen_id == citizen_id, SubjectIdentifier.controller_did == controller_did
            )
        ).all()
    )


# ---- what a citizen sees --------------------------------------------------------------------


def _records_of(session: Session, citizen_id: str) -> dict[tuple[str, str], ConsentRecord]:
    rows = session.exec(select(ConsentRecord).where(ConsentRecord.citizen_id == citizen_id)).all()
    return {(row.agreement_id, row.recipient_did): row for row in rows}


def _switch(
    agreement: DataAgreement, recipient: dict[str, str], record: ConsentRecord | None, now: int
) -> Switch:
    current = current_state(record, agreement, now)
    return Switch(
        agreement_id=agreement.id,
        recipient_did=recipient["did"],
        recipient_name=recipient["name"],
        purpose=agreement.purpose,
        state=current.state.value,
        on=current.valid,
        consented_version=current.agreement_version,
        latest_version=agreement.latest_version,
        needs_review=current.state is DpvState.INVALIDATED,
        since=current.since,
        expires_at=current.expires_at,
    )


def current_state(record: ConsentRecord | None, agreement: DataAgreement, now: int) -> CurrentState:
    """The record's state, derived from its last event (the record's state columns mirror it)."""
    if record is None or record.last_seq == 0:
        return derive_state([], min_version=agreement.min_consent_version, now=now)
    last = LastEvent(record.state, record.agreement_version, record.state_at, record.expires_at)
    return derive_state([last], min_version=agreement.min_consent_version, now=now)


def organisations_for(session: Session, citizen_id: str, now: int | None = None) -> list[OrganisationView]:
    """Every organisation with its agreements' current notices and the citizen's switches (off by default)."""
    _citizen(session, citizen_id)
    now = now_millis() if now is None else now
    records = _records_of(session, citizen_id)
    organisations = session.exec(select(Organisation).order_by(col(Organisation.name))).all()
    agreements = session.exec(select(DataAgreement).order_by(col(DataAgreement.name))).all()
    by_controller: dict[str, list[AgreementNotice]] = {}
    for agreement in agreements:
        revision = latest_revision(session, agreement)
        terms = revision_dict(revision)
        switches = [
            _switch(agreement, recipient, records.get((agreement.id, recipient["did"])), now)
            for recipient in terms["recipients"]
        ]
        by_controller.setdefault(agreement.controller_did, []).append(
            AgreementNotice(
                agreement_id=agreement.id,
                name=agreement.name,
                version=revision.version,
                content_hash=revision.content_hash,
                purpose=agreement.purpose,
                purpose_description=terms["purpose_description"],
                data_categories=list(terms["data_categories"]),
                lawful_basis=terms["lawful_basis"],
                retention=terms["retention"],
                notice_text=terms["notice"]["text"],
                notice_version=terms["notice"]["version"],
                language=terms["notice"]["language"],
                valid_from=terms["valid_from"],
                valid_until=terms["valid_until"],
                consent_duration_days=terms["consent_duration_days"],
                switches=switches,
            )
        )
    return [
        OrganisationView(org.did, org.name, by_controller[org.did])
        for org in organisations
        if org.did in by_controller
    ]


def switches(session: Session, citizen_id: str, now: int | None = None) -> list[Switch]:
    """All of a citizen's switches, flat."""
    return [
        switch
        for organisation in organisations_for(session, citizen_id, now)
        for agreement in organisation.agreements
        for switch in agreement.switches
    ]


# ---- changing consent -----------------------------------------------------------------------


def _check_actor(actor: str, method: str) -> None:
    if not ACTOR.match(actor):
        raise InvalidInput("actor must be a short identifier such as 'citizen:<id>'")
    if not METHOD.match(method):
        raise InvalidInput("method must be a short lowercase name such as 'self-service-page'")


def _target(
    session: Session, citizen_id: str, agreement_id: str, recipient_did: str
) -> tuple[DataAgreement, AgreementRevision, dict[str, Any]]:
    _citizen(session, citizen_id)
    agreement = session.get(DataAgreement, agreement_id)
    if agreement is None:
        raise NotFound(f"no agreement {agreement_id!r}")
    revision = latest_revision(session, agreement)
    terms = revision_dict(revision)
    if recipient_did not in {r["did"] for r in terms["recipients"]}:
        raise NotFound(f"agreement {agreement_id!r} names no recipient {recipient_did!r}")
    return agreement, revision, terms


def _record_for(
    session: Session, citizen_id: str, agreement_id: str, recipient_did: str
) -> ConsentRecord | None:
    return session.exec(
        select(ConsentRecord).where(
            ConsentRecord.citizen_id == citizen_id,
            ConsentRecord.agreement_id == agreement_id,
            ConsentRecord.recipient_did == recipient_did,
        )
    ).first()


def _events_of(session: Session, record_id: str) -> list[ConsentEvent]:
    return list(
        session.exec(
            select(ConsentEvent).where(ConsentEvent.record_id == record_id).order_by(col(ConsentEvent.seq))
        ).all()
    )


def _write(
    session: Session,
    signer: ReceiptSigner,
    agreement: DataAgreement,
    revision: AgreementRevision,
    terms: dict[str, Any],
    record: ConsentRecord,
    state: DpvState,
    *,
    actor: str,
    method: str,
    at: int,
    expires_at: int | None,
) -> ConsentChange:
    event = append_event(
        session,
        record,
        NewEvent(state.value, revision.version, revision.content_hash, actor, method, at, expires_at),
    )
    record_change(
        session,
        event.seq,
        kind="consent",
        controller_did=agreement.controller_did,
        at=at,
        agreement_id=agreement.id,
        citizen_id=record.citizen_id,
        recipient_did=record.recipient_did,
        state=state.value,
        subject_hashes=_hashes_at(session, record.citizen_id, agreement.controller_did),
    )
    event.receipt = sign_receipt(receipt_claims(signer, event, record, terms, revision.content_hash), signer)
    session.add(event)
    return ConsentChange(
        record.id,
        agreement.id,
        record.recipient_did,
        state.value,
        state in GIVEN_STATES,
        True,
        event.seq,
        at,
        event.receipt,
    )


def _unchanged(
    record: ConsentRecord | None, agreement: DataAgreement, recipient_did: str, now: int
) -> ConsentChange:
    current = current_state(record, agreement, now)
    return ConsentChange(
        record.id if record else "",
        agreement.id,
        recipient_did,
        current.state.value,
        current.valid,
        False,
        None,
        None,
        None,
    )


@one_transaction
def give_consent(
    session: Session,
    signer: ReceiptSigner,
    citizen_id: str,
    agreement_id: str,
    recipient_did: str,
    *,
    actor: str,
    method: str,
    now: int | None = None,
) -> ConsentChange:
    """Turn the switch on: ``ConsentGiven`` (or ``RenewedConsentGiven`` after an earlier consent)."""
    _check_actor(actor, method)
    now = now_millis() if now is None else now
    agreement, revision, terms = _target(session, citizen_id, agreement_id, recipient_did)
    if terms["valid_until"] is not None and terms["valid_until"] <= now:
        raise Conflict("this agreement is no longer in force")
    if terms["valid_from"] is not None and terms["valid_from"] > now:
        raise Conflict("this agreement is not in force yet")
    record = _record_for(session, citizen_id, agreement_id, recipient_did)
    if record is not None:
        current = current_state(record, agreement, now)
        if current.valid and record.agreement_version == revision.version:
            return _unchanged(record, agreement, recipient_did, now)
        state = next_given_state(_events_of(session, record.id))
    else:
        record = _new_record(session, citizen_id, agreement_id, recipient_did, now)
        state = DpvState.GIVEN
    days = terms["consent_duration_days"]
    expires_at = now + days * DAY_MS if days else None
    if terms["valid_until"] is not None:
        expires_at = min(expires_at or terms["valid_until"], terms["valid_until"])
    result = _write(
        session,
        signer,
        agreement,
        revision,
        terms,
        record,
        state,
        actor=actor,
        method=method,
        at=now,
        expires_at=expires_at,
    )
    session.commit()
    return result


def _new_record(
    session: Session, citizen_id: str, agreement_id: str, recipient_did: str, now: int
) -> ConsentRecord:
    return ConsentRecord(
        id=uuid.uuid4().hex,
        citizen_id=citizen_id,
        agreement_id=agreement_id,
        recipient_did=recipient_did,
        created_at=now,
        state=DpvState.UNKNOWN.value,
        agreement_version=0,
        state_at=now,
        last_seq=0,
    )


@one_transaction
def withdraw_consent(
    session: Session,
    signer: ReceiptSigner,
    citizen_id: str,
    agreement_id: str,
    recipient_did: str,
    *,
    actor: str,
    method: str,
    now: int | None = None,
) -> ConsentChange:
    """Turn the switch off: ``ConsentWithdrawn`` if consent was given (expired or not), else no change."""
    _check_actor(actor, method)
    now = now_millis() if now is None else now
    agreement, revision, terms = _target(session, citizen_id, agreement_id, recipient_did)
    record = _record_for(session, citizen_id, agreement_id, recipient_did)
    if record is None or record.state not in GIVEN_STATES:
        return _unchanged(record, agreement, recipient_did, now)
    result = _write(
        session,
        signer,
        agreement,
        revision,
        terms,
        record,
        DpvState.WITHDRAWN,
        actor=actor,
        method=method,
        at=now,
        expires_at=None,
    )
    session.commit()
    return result


@one_transaction
def refuse_consent(
    session: Session,
    signer: ReceiptSigner,
    citizen_id: str,
    agreement_id: str,
    recipient_did: str,
    *,
    actor: str,
    method: str,
    now: int | None = None,
) -> ConsentChange:
    """Record a "no": ``ConsentRefused``; when consent was given this is a withdrawal."""
    _check_actor(actor, method)
    now = now_millis() if now is None else now
    agreement, revision, terms = _target(session, citizen_id, agreement_id, recipient_did)
    record = _record_for(session, citizen_id, agreement_id, recipient_did)
    if record is not None and record.state in GIVEN_STATES:
        return withdraw_consent(
            session, signer, citizen_id, agreement_id, recipient_did, actor=actor, method=method, now=now
        )
    if record is not None and record.state in (DpvState.REFUSED, DpvState.WITHDRAWN):
        return _unchanged(record, agreement, recipient_did, now)
    record = record or _new_record(session, citizen_id, agreement_id, recipient_did, now)
    result = _write(
        session,
        signer,
        agreement,
        revision,
        terms,
        record,
        DpvState.REFUSED,
        actor=actor,
        method=method,
        at=now,
        expires_at=None,
    )
    session.commit()
    return result


def set_consent(
    session: Session,
    signer: ReceiptSigner,
    citizen_id: str,
    agreement_id: str,
    recipient_did: str,
    on: bool,
    *,
    actor: str,
    method: str,
    now: int | None = None,
) -> ConsentChange:
    """The switch: on gives (or renews) consent; off withdraws it, or records a refusal if none was given."""
    change = give_consent if on else refuse_consent
    return change(
        session, signer, citizen_id, agreement_id, recipient_did, actor=actor, method=method, now=now
    )


@one_transaction
def withdraw_everything(
    session: Session,
    signer: ReceiptSigner,
    citizen_id: str,
    *,
    actor: str,
    method: str,
    now: int | None = None,
) -> list[ConsentChange]:
    """Withdraw every consent the citizen has given, in one transaction; one receipt per withdrawal."""
    _check_actor(actor, method)
    _citizen(session, citizen_id)
    now = now_millis() if now is None else now
    results: list[ConsentChange] = []
    records = session.exec(
        select(ConsentRecord)
        .where(
            ConsentRecord.citizen_id == citizen_id,
            col(ConsentRecord.state).in_([s.value for s in GIVEN_STATES]),
        )
        .order_by(col(ConsentRecord.created_at))
    ).all()
    for record in records:
        agreement = session.get(DataAgreement, record.agreement_id)
        assert agreement is not None
        revision = latest_revision(session, agreement)
        results.append(
            _write(
                session,
                signer,
                agreement,
                revision,
                revision_dict(revision),
                record,
                DpvState.WITHDRAWN,
                actor=actor,
                method=method,
                at=now,
                expires_at=None,
            )
        )
    session.commit()
    return results


@one_transaction
def expire_due(session: Session, signer: ReceiptSigner, now: int | None = None, *, limit: int = 1000) -> int:
    """Write ``ConsentExpired`` for given consents whose time ran out (decisions already treat them as
    expired; this makes the history say so). Returns how many."""
    now = now_millis() if now is None else now
    records = session.exec(
        select(ConsentRecord)
        .where(
            col(ConsentRecord.state).in_([s.value for s in GIVEN_STATES]),
            col(ConsentRecord.expires_at).is_not(None),
            col(ConsentRecord.expires_at) <= now,
        )
        .limit(limit)
    ).all()
    for record in records:
        agreement = session.get(DataAgreement, record.agreement_id)
        assert agreement is not None
        revision = latest_revision(session, agreement)
        _write(
            session,
            signer,
            agreement,
            revision,
            revision_dict(revision),
            record,
            DpvState.EXPIRED,
            actor="consent-service",
            method="expiry",
            at=now,
            expires_at=None,
        )
    session.commit()
    return len(records)


# ---- history, receipts, transfers, export ---------------------------------------------------


def history(session: Session, citizen_id: str) -> list[HistoryEntry]:
    """The citizen's events, newest first."""
    _citizen(session, citizen_id)
    rows = session.exec(
        select(ConsentEvent, DataAgreement)
        .join(DataAgreement, col(DataAgreement.id) == col(ConsentEvent.agreement_id))
        .where(ConsentEvent.citizen_id == citizen_id)
        .order_by(col(ConsentEvent.seq).desc())
    ).all()
    return [
        HistoryEntry(
            seq=event.seq,
            record_id=event.record_id,
            agreement_id=event.agreement_id,
            agreement_version=event.agreement_version,
            agreement_hash=event.agreement_hash,
            recipient_did=event.recipient_did,
            purpose=agreement.purpose,
            controller_did=agreement.controller_did,
            state=event.state,
            at=event.at,
            actor=event.actor,
            method=event.method,
            expires_at=event.expires_at,
            hash=event.hash,
            has_receipt=event.receipt is not None,
        )
        for event, agreement in rows
    ]


def receipt_of(session: Session, citizen_id: str, seq: int) -> str:
    """The signed receipt of one of the citizen's events."""
    event = session.get(ConsentEvent, seq)
    if event is None or event.citizen_id != citizen_id or event.receipt is None:
        raise NotFound("no such receipt of yours")
    return event.receipt


def transfers_of(session: Session, citizen_id: str) -> list[TransferView]:
    """Who received the citizen's data and when (as connectors reported it), newest first."""
    _citizen(session, citizen_id)
    rows = session.exec(
        select(TransferSummary)
        .where(TransferSummary.citizen_id == citizen_id)
        .order_by(col(TransferSummary.transferred_at).desc())
    ).all()
    return [
        TransferView(
            row.controller_did,
            row.recipient_did,
            row.purpose,
            row.dataset,
            row.transfer_id,
            row.record_count,
            row.transferred_at,
            row.reported_at,
        )
        for row in rows
    ]


def export_citizen(session: Session, citizen_id: str, now: int | None = None) -> dict[str, Any]:
    """Everything the service holds about the citizen, as JSON-ready data."""
    citizen = _citizen(session, citizen_id)
    events = session.exec(
        select(ConsentEvent).where(ConsentEvent.citizen_id == citizen_id).order_by(col(ConsentEvent.seq))
    ).all()
    revisions: dict[str, dict[str, Any]] = {}
    for event in events:
        key = f"{event.agreement_id}:{event.agreement_version}"
        if key not in revisions:
            revision = session.get(AgreementRevision, (event.agreement_id, event.agreement_version))
            if revision is not None:
                revisions[key] = {"content_hash": revision.content_hash, "terms": revision_dict(revision)}
    return {
        "citizen": citizen.id,
        "created_at": citizen.created_at,
        "exported_at": now_millis() if now is None else now,
        "subject_identifiers": [as_dict(view) for view in subject_identifiers(session, citizen_id)],
        "consents": [as_dict(view) for view in switches(session, citizen_id, now)],
        "history": [
            {**as_dict(entry), "receipt": event.receipt}
            for entry, event in zip(reversed(history(session, citizen_id)), events, strict=True)
        ],
        "transfers": [as_dict(view) for view in transfers_of(session, citizen_id)],
        "agreement_revisions": revisions,
    }
