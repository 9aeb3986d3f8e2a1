"""Tables of the auditor side: auditor accounts, and an index of log entries for the timeline's filters.

The index is a projection of ``transfer_log_leaf`` (counter-party, dataset, bytes...) kept only so
the timeline can filter and page in SQL; it is never evidence. The page always shows, hashes and
proves the leaf's own stored bytes.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, String, Text
from sqlmodel import Field, SQLModel


class AuditorRow(SQLModel, table=True):
    """A read-only account for the audit pages (its own password, never the management API key)."""

    __tablename__ = "auditor"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    password_hash: str = Field(sa_column=Column(Text, nullable=False))  # argon2id, PHC string
    # Named by every session of this account: a new password (or a re-added account) ends old sessions.
    session_salt: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))  # epoch ms


class AuditIndexRow(SQLModel, table=True):
    """What the timeline filters on, for one log entry (same index as its leaf)."""

    __tablename__ = "audit_log_index"
    # Each filter reads its matches newest first straight from an index; totals read one kind's rows by time.
    __table_args__ = (
        Index("ix_audit_log_index_counter_party_idx", "counter_party", "idx"),
        Index("ix_audit_log_index_dataset_idx", "dataset", "idx"),
        Index("ix_audit_log_index_kind_created_at", "kind", "created_at"),
    )

    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    counter_party: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
    dataset: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
    agreement_id: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
    transfer_id: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
    personal: bool = Field(sa_column=Column(Boolean, nullable=False))
    bytes: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    records: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class AuditFacetRow(SQLModel, table=True):
    """A counter-party or dataset the log names (the filter's choices, without scanning the index)."""

    __tablename__ = "audit_log_facet"

    field: str = Field(sa_column=Column(String(16), primary_key=True))  # "counter_party" or "dataset"
    value: str = Field(sa_column=Column(String(512), primary_key=True))
