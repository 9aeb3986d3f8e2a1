"""The change sequence and the hash-chained event history.

Every change that can alter a decision takes the next number from the single
``consent_feed_head`` row. The ``UPDATE ... RETURNING`` holds that row's lock
until the transaction commits, so sequence numbers follow commit order: a
reader that sees change N has seen every change before it (the decision index
and the change feed rely on it). Consent events are chained in ``seq`` order:
each event's hash covers its fields and the previous event's hash, and the
head row keeps the last hash, so an edited, removed or inserted event shows
(``verify_history``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from consent.errors import HistoryTampered
from consent.hashing import content_hash
from consent.models import ConsentChange, ConsentEvent, ConsentRecord, FeedHead

HEAD_ID = 1
GENESIS = ""


def now_millis() -> int:
    return time.time_ns() // 1_000_000


def next_seq(session: Session) -> tuple[int, str]:
    """Take the next sequence number (locking the head row until commit); also the last event hash."""
    row = session.execute(
        update(FeedHead)
        .where(FeedHead.id == HEAD_ID)  # type: ignore[arg-type]
        .values(seq=FeedHead.seq + 1)
        .returning(FeedHead.__table__.c.seq, FeedHead.__table__.c.last_event_hash)  # type: ignore[attr-defined]
    ).first()
    if row is None:  # a database made without the migration's seed row
        session.add(FeedHead(id=HEAD_ID, seq=1, last_event_hash=GENESIS))
        session.flush()
        return 1, GENESIS
    return int(row[0]), str(row[1])


def record_change(
    session: Session,
    seq: int,
    *,
    kind: str,
    controller_did: str,
    at: int,
    agreement_id: str | None = None,
    citizen_id: str | None = None,
    recipient_did: str | None = None,
    state: str | None = None,
    subject_hashes: Iterable[str] = (),
) -> None:
    session.add(
        ConsentChange(
            seq=seq,
            kind=kind,
            at=at,
            controller_did=controller_did,
            agreement_id=agreement_id,
            citizen_id=citizen_id,
            recipient_did=recipient_did,
            state=state,
            subject_hashes=json.dumps(sorted(subject_hashes)),
        )
    )


def event_fields(event: ConsentEvent) -> dict[str, Any]:
    """What an event's hash covers (everything but the hash and the receipt)."""
    return {
        "seq": event.seq,
        "record": event.record_id,
        "citizen": event.citizen_id,
        "agreement": event.agreement_id,
        "agreementVersion": event.agreement_version,
        "agreementHash": event.agreement_hash,
        "recipient": event.recipient_did,
        "state": event.state,
        "at": event.at,
        "actor": event.actor,
        "method": event.method,
        "expiresAt": event.expires_at,
        "prev": event.prev_hash,
    }


def event_hash(event: ConsentEvent) -> str:
    return content_hash(event_fields(event))


@dataclass(frozen=True)
class NewEvent:
    state: str
    agreement_version: int
    agreement_hash: str
    actor: str
    method: str
    at: int
    expires_at: int | None


def append_event(session: Session, record: ConsentRecord, new: NewEvent) -> ConsentEvent:
    """Append one event to ``record``'s history and bring the record's state columns up to date.

    The caller records the change (it knows the subject hashes) and commits.
    """
    seq, previous = next_seq(session)
    record.state = new.state
    record.agreement_version = new.agreement_version
    record.state_at = new.at
    record.expires_at = new.expires_at
    record.last_seq = seq
    session.add(record)
    session.flush()  # a new record is inserted before its first event refers to it
    event = ConsentEvent(
        seq=seq,
        record_id=record.id,
        citizen_id=record.citizen_id,
        agreement_id=record.agreement_id,
        agreement_version=new.agreement_version,
        agreement_hash=new.agreement_hash,
        recipient_did=record.recipient_did,
        state=new.state,
        at=new.at,
        actor=new.actor,
        method=new.method,
        expires_at=new.expires_at,
        prev_hash=previous,
        hash="",
    )
    event.hash = event_hash(event)
    session.add(event)
    session.execute(
        update(FeedHead).where(FeedHead.id == HEAD_ID).values(last_event_hash=event.hash)  # type: ignore[arg-type]
    )
    return event


def verify_history(session: Session, *, batch: int = 10_000) -> int:
    """Recompute the chain over every event; return how many verified, or raise HistoryTampered.

    Also checks that each record's state columns agree with its last event.
    """
    previous = GENESIS
    count = 0
    last_seq = -1
    last_by_record: dict[
        str, tuple[int, str, int | None]
    ] = {}  # record -> (seq, state, expiry) of its last event
    while True:
        events = session.exec(
            select(ConsentEvent).where(ConsentEvent.seq > last_seq).order_by(ConsentEvent.seq).limit(batch)  # type: ignore[arg-type]
        ).all()
        if not events:
            break
        for event in events:
            if event.prev_hash != previous:
                raise HistoryTampered(
                    event.seq,
                    f"event {event.seq} does not follow the one before it: an event was removed or inserted",
                )
            if event_hash(event) != event.hash:
                raise HistoryTampered(event.seq, f"event {event.seq} was changed after it was written")
            previous = event.hash
            last_by_record[event.record_id] = (event.seq, event.state, event.expires_at)
            last_seq = event.seq
            count += 1
        session.expunge_all()  # keep memory flat over millions of events
    head = session.get(FeedHead, HEAD_ID)
    head_hash = head.last_event_hash if head is not None else GENESIS
    if head_hash != previous:
        raise HistoryTampered(
            None, "the newest events are missing: the history ends before the recorded head"
        )
    records = select(ConsentRecord.id, ConsentRecord.last_seq, ConsentRecord.state, ConsentRecord.expires_at)
    for record_id, seq, state, expires_at in session.execute(records).yield_per(batch):
        last = last_by_record.get(record_id)
        if last != (seq, state, expires_at):
            raise HistoryTampered(
                last[0] if last else None, f"consent record {record_id} does not match its history"
            )
    return count
