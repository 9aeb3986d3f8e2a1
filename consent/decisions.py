"""Consent decisions from an in-memory index that follows the change log.

The index holds, per (agreement, recipient), the subject hashes whose consent
is valid and when each expires. It is loaded from the database once, then kept
current by replaying ``consent_change`` rows: before every decision it reads
the head sequence number (one indexed single-row query) and, if another
writer (this process, a page, another replica) committed something newer,
applies those changes first. Sequence numbers follow commit order (see
consent/ledger.py), so a decision always reflects every change committed
before it started, on any replica; ``revision`` in the answer is that number.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, Table, and_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from consent.errors import NoAgreement
from consent.ledger import HEAD_ID, now_millis
from consent.models import (
    AgreementRevision,
    ConsentChange,
    ConsentRecord,
    DataAgreement,
    FeedHead,
    SubjectIdentifier,
)
from consent.states import GIVEN_STATES

FULL_RELOAD_AFTER = 5_000  # more pending changes than this: reload everything instead of replaying

AGREEMENTS: Table = DataAgreement.__table__  # type: ignore[attr-defined]
RECORDS: Table = ConsentRecord.__table__  # type: ignore[attr-defined]
IDENTIFIERS: Table = SubjectIdentifier.__table__  # type: ignore[attr-defined]
REVISIONS: Table = AgreementRevision.__table__  # type: ignore[attr-defined]
CHANGES: Table = ConsentChange.__table__  # type: ignore[attr-defined]
HEAD: Table = FeedHead.__table__  # type: ignore[attr-defined]
_A, _R, _I, _V, _C, _H = AGREEMENTS.c, RECORDS.c, IDENTIFIERS.c, REVISIONS.c, CHANGES.c, HEAD.c
_HEAD_QUERY = select(_H.seq).where(_H.id == HEAD_ID)
_GIVEN = [state.value for state in GIVEN_STATES]
_VALID_JOIN = (
    select(_R.agreement_id, _R.recipient_did, _I.subject_hash, _R.expires_at)
    .select_from(RECORDS)
    .join(AGREEMENTS, _A.id == _R.agreement_id)
    .join(
        IDENTIFIERS,
        and_(_I.citizen_id == _R.citizen_id, _I.controller_did == _A.controller_did),
    )
    .where(_R.state.in_(_GIVEN), _R.agreement_version >= _A.min_consent_version)
)


@dataclass
class ValidSubjects:
    """Subject hashes with valid consent: a set for consent without an end (intersected in C), a dict
    with the expiry time (epoch ms) for the rest."""

    lasting: set[str] = field(default_factory=set)
    expiring: dict[str, int] = field(default_factory=dict)

    def add(self, subject: str, expires_at: int | None) -> None:
        if expires_at is None:
            self.lasting.add(subject)
        else:
            self.expiring[subject] = expires_at

    def discard(self, subject: str) -> None:
        self.lasting.discard(subject)
        self.expiring.pop(subject, None)

    def among(self, subjects: Sequence[str], now: int) -> set[str]:
        found = self.lasting.intersection(subjects)
        if self.expiring:
            found.update(s for s in self.expiring.keys() & set(subjects) if self.expiring[s] > now)
        return found

    def __len__(self) -> int:
        return len(self.lasting) + len(self.expiring)


@dataclass
class AgreementEntry:
    id: str
    controller: str
    purpose: str
    version: int
    recipients: frozenset[str]
    datasets: frozenset[str]  # empty: every dataset of the controller
    valid_from: int | None
    valid_until: int | None
    # recipient -> the subjects whose consent for it is valid
    valid: dict[str, ValidSubjects] = field(default_factory=dict)

    def subjects_for(self, recipient: str) -> ValidSubjects:
        found = self.valid.get(recipient)
        if found is None:
            found = self.valid[recipient] = ValidSubjects()
        return found


@dataclass(frozen=True)
class Decision:
    decision_id: str
    revision: int
    allowed: list[str]
    agreements: list[tuple[str, int]]


class DecisionIndex:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._seq = -1
        self._agreements: dict[str, AgreementEntry] = {}
        self._by_purpose: dict[tuple[str, str], list[str]] = {}
        self._watch: Connection | None = None

    @property
    def loaded(self) -> bool:
        return self._seq >= 0

    @property
    def revision(self) -> int:
        return self._seq

    def size(self) -> int:
        return sum(len(subjects) for entry in self._agreements.values() for subjects in entry.valid.values())

    # ---- deciding ---------------------------------------------------------------------------

    def decide(
        self,
        controller: str,
        recipient: str,
        purpose: str,
        dataset: str,
        subjects: Sequence[str],
        now: int | None = None,
    ) -> Decision:
        """Which ``subjects`` (keyed hashes) may be released; NoAgreement when nothing covers the request."""
        now = now_millis() if now is None else now
        with self._lock:
            self._catch_up()
            covering = self._covering(controller, recipient, purpose, dataset, now)
            allowed: set[str] = set()
            for entry in covering:
                valid = entry.valid.get(recipient)
                if valid is not None:
                    allowed |= valid.among(subjects, now)
            return Decision(uuid.uuid4().hex, self._seq, list(allowed), [(e.id, e.version) for e in covering])

    def _covering(
        self, controller: str, recipient: str, purpose: str, dataset: str, now: int
    ) -> list[AgreementEntry]:
        ids = self._by_purpose.get((controller, purpose))
        if not ids:
            raise NoAgreement(f"you ({controller}) have no data agreement for purpose {purpose!r}")
        entries = [self._agreements[i] for i in ids]
        entries = [e for e in entries if recipient in e.recipients]
        if not entries:
            raise NoAgreement(
                f"none of your data agreements for purpose {purpose!r} names recipient {recipient}"
            )
        entries = [e for e in entries if not e.datasets or dataset in e.datasets]
        if not entries:
            raise NoAgreement(
                f"none of your data agreements for purpose {purpose!r} covers dataset {dataset!r}"
            )
        entries = [
            e
            for e in entries
            if (e.valid_from is None or e.valid_from <= now)
            and (e.valid_until is None or e.valid_until > now)
        ]
        if not entries:
            raise NoAgreement(f"your data agreements for purpose {purpose!r} are not in force")
        return entries

    # ---- following the database -------------------------------------------------------------

    def refresh(self) -> int:
        with self._lock:
            self._catch_up()
            return self._seq

    def _head(self) -> int:
        """The newest sequence number, on a connection of its own (autocommit: each read sees the latest
        commit); reopened once if the database dropped it."""
        for attempt in (1, 2):
            try:
                if self._watch is None:
                    self._watch = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                return int(self._watch.execute(_HEAD_QUERY).scalar() or 0)
            except DBAPIError:
                if self._watch is not None:
                    self._watch.invalidate()
                    self._watch.close()
                self._watch = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    def _catch_up(self) -> None:
        head = self._head()
        if head == self._seq:
            return
        with self._engine.connect() as connection:
            if self._seq < 0 or head - self._seq > FULL_RELOAD_AFTER or head < self._seq:
                self._load_all(connection, head)
                return
            changes = connection.execute(
                select(_C.seq, _C.kind, _C.controller_did, _C.agreement_id, _C.citizen_id, _C.subject_hashes)
                .where(_C.seq > self._seq, _C.seq <= head)
                .order_by(_C.seq)
            ).all()
            agreements = {c.agreement_id for c in changes if c.kind == "agreement"}
            citizens = {
                (c.citizen_id, c.controller_did): set(json.loads(c.subject_hashes))
                for c in changes
                if c.kind != "agreement" and c.citizen_id
            }
            for change in changes:  # several changes of one citizen: gather every hash they name
                if change.kind != "agreement" and change.citizen_id:
                    citizens[(change.citizen_id, change.controller_did)].update(
                        json.loads(change.subject_hashes)
                    )
            for agreement_id in agreements:
                self._load_agreement(connection, agreement_id)
            for (citizen_id, controller), hashes in citizens.items():
                self._reload_citizen(connection, citizen_id, controller, hashes)
            self._seq = head

    def _load_all(self, connection: Connection, head: int) -> None:
        self._agreements = {}
        self._by_purpose = {}
        for (agreement_id,) in connection.execute(select(_A.id)).all():
            self._load_agreement(connection, agreement_id, with_subjects=False)
        for row in connection.execute(_VALID_JOIN).yield_per(50_000):
            entry = self._agreements.get(row.agreement_id)
            if entry is not None:
                entry.subjects_for(row.recipient_did).add(row.subject_hash, row.expires_at)
        self._seq = head

    def _load_agreement(
        self, connection: Connection, agreement_id: str, *, with_subjects: bool = True
    ) -> None:
        row = connection.execute(
            select(_A.id, _A.controller_did, _A.purpose, _A.latest_version, _V.content)
            .join(REVISIONS, and_(_V.agreement_id == _A.id, _V.version == _A.latest_version))
            .where(_A.id == agreement_id)
        ).first()
        if row is None:
            return
        terms = json.loads(row.content)
        entry = AgreementEntry(
            id=row.id,
            controller=row.controller_did,
            purpose=row.purpose,
            version=row.latest_version,
            recipients=frozenset(r["did"] for r in terms["recipients"]),
            datasets=frozenset(terms["datasets"]),
            valid_from=terms["valid_from"],
            valid_until=terms["valid_until"],
        )
        self._agreements[entry.id] = entry
        ids = self._by_purpose.setdefault((entry.controller, entry.purpose), [])
        if entry.id not in ids:
            ids.append(entry.id)
        if with_subjects:
            for valid in connection.execute(_VALID_JOIN.where(_R.agreement_id == agreement_id)).all():
                entry.subjects_for(valid.recipient_did).add(valid.subject_hash, valid.expires_at)

    def _reload_citizen(
        self, connection: Connection, citizen_id: str, controller: str, hashes: set[str]
    ) -> None:
        current = {
            row.subject_hash
            for row in connection.execute(
                select(_I.subject_hash).where(_I.citizen_id == citizen_id, _I.controller_did == controller)
            ).all()
        }
        for agreement_id in {i for (c, _p), ids in self._by_purpose.items() if c == controller for i in ids}:
            for table in self._agreements[agreement_id].valid.values():
                for subject in hashes | current:
                    table.discard(subject)
        for row in connection.execute(
            _VALID_JOIN.where(_R.citizen_id == citizen_id, _A.controller_did == controller)
        ).all():
            entry = self._agreements.get(row.agreement_id)
            if entry is not None:
                entry.subjects_for(row.recipient_did).add(row.subject_hash, row.expires_at)
