"""Transfer summaries: what a controller's connector reports having released about citizens.

A report names a transfer and, per subject hash, how many records went out. Hashes are
resolved to citizens through the controller's registered identifiers; unknown hashes are
counted and dropped. Counts are cumulative per (controller, transfer, citizen): sending a
report again, or a later one with higher totals, replaces the earlier figure.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from sqlmodel import Session, col, select

from consent.agreements import NAME_PATTERN, Did
from consent.ledger import now_millis
from consent.models import SubjectIdentifier, TransferSummary

MAX_REPORT_SUBJECTS = 10_000
SubjectHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class SubjectCount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: SubjectHash
    records: int = Field(ge=1, le=10**12)


class TransferReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transfer_id: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\s]+$")]
    recipient: Did
    purpose: Name
    dataset: Name
    transferred_at: AwareDatetime
    subjects: list[SubjectCount] = Field(min_length=1, max_length=MAX_REPORT_SUBJECTS)


def record_transfer_report(session: Session, controller_did: str, report: TransferReport) -> dict[str, int]:
    """Store the report per citizen; committed. Returns counts of citizens stored and hashes unmatched."""
    counts: dict[str, int] = {}
    for item in report.subjects:
        counts[item.subject] = counts.get(item.subject, 0) + item.records
    owners: dict[str, str] = {}
    hashes = list(counts)
    for start in range(0, len(hashes), 500):
        chunk = hashes[start : start + 500]
        for subject, citizen in session.exec(
            select(SubjectIdentifier.subject_hash, SubjectIdentifier.citizen_id).where(
                SubjectIdentifier.controller_did == controller_did,
                col(SubjectIdentifier.subject_hash).in_(chunk),
            )
        ).all():
            owners[subject] = citizen
    per_citizen: dict[str, int] = {}
    for subject, citizen in owners.items():
        per_citizen[citizen] = per_citizen.get(citizen, 0) + counts[subject]
    # Every read before the first write: SQLite's write lock is then held for the writes alone, not
    # across one query per citizen (which kept decision requests waiting on "database is locked").
    existing: dict[str, TransferSummary] = {}
    citizens = list(per_citizen)
    for start in range(0, len(citizens), 500):
        for found in session.exec(
            select(TransferSummary).where(
                TransferSummary.controller_did == controller_did,
                TransferSummary.transfer_id == report.transfer_id,
                col(TransferSummary.citizen_id).in_(citizens[start : start + 500]),
            )
        ).all():
            existing[found.citizen_id] = found
    now = now_millis()
    transferred_at = int(report.transferred_at.timestamp() * 1000)
    for citizen, records in per_citizen.items():
        row = existing.get(citizen) or TransferSummary(
            citizen_id=citizen, controller_did=controller_did, transfer_id=report.transfer_id,
            recipient_did=report.recipient, purpose=report.purpose, dataset=report.dataset,
            record_count=0, transferred_at=transferred_at, reported_at=now,
        )  # fmt: skip
        row.record_count = records
        row.reported_at = now
        session.add(row)
    session.commit()
    return {"citizens": len(per_citizen), "unmatched": len(counts) - len(owners)}
