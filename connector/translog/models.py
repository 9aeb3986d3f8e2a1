"""Tables of the transfer log: leaves, complete-subtree hashes, the head, signed checkpoints,
cosignatures received, what we witnessed of other members' logs, and alerts.

Append-only by construction: nothing in ``connector.translog`` updates or deletes a leaf or a
node; the head row is the one mutable row, and it serialises appends (see ``store.py``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class LogLeafRow(SQLModel, table=True):
    __tablename__ = "transfer_log_leaf"

    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False, index=True))
    entry: str = Field(sa_column=Column(Text, nullable=False))  # the RFC 8785 bytes, as UTF-8 text
    # Not indexed: every index is one more page written per append (filter by kind within a time range).
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))  # epoch ms


class LogNodeRow(SQLModel, table=True):
    """The hash of a complete subtree of level >= 1 (level 0 is the leaf's own hash)."""

    __tablename__ = "transfer_log_node"

    level: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class LogHeadRow(SQLModel, table=True):
    """The log's size and the hashes of its right edge (one row, id 1): every append locks it."""

    __tablename__ = "transfer_log_head"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    frontier: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # 32-byte hashes, largest first


class LogCheckpointRow(SQLModel, table=True):
    """A checkpoint we signed (our signature only; cosignatures are rows of their own)."""

    __tablename__ = "transfer_log_checkpoint"

    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    signed_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


class LogCosignatureRow(SQLModel, table=True):
    """A witness's cosignature on one of our checkpoints: a signature line to add to the note."""

    __tablename__ = "transfer_log_cosignature"
    __table_args__ = (UniqueConstraint("checkpoint_size", "witness_did", name="uq_transfer_log_cosignature"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    checkpoint_size: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    witness_did: str = Field(sa_column=Column(String(512), nullable=False))
    signature_line: str = Field(sa_column=Column(Text, nullable=False))
    cosigned_at: int = Field(sa_column=Column(BigInteger, nullable=False))  # the cosignature's own time (s)
    received_at: int = Field(sa_column=Column(BigInteger, nullable=False))  # epoch ms


class WitnessedLogRow(SQLModel, table=True):
    """The newest consistent checkpoint we have seen (and cosigned) of a member's log."""

    __tablename__ = "witnessed_log"

    member_did: str = Field(sa_column=Column(String(512), primary_key=True))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    checked_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class LogAlertRow(SQLModel, table=True):
    """A member's log was seen to fork, shrink or rewrite history (evidence: both notes)."""

    __tablename__ = "transfer_log_alert"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    member_did: str = Field(sa_column=Column(String(512), nullable=False, index=True))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    detail: str = Field(sa_column=Column(Text, nullable=False))
    previous_note: str = Field(sa_column=Column(Text, nullable=False))
    new_note: str = Field(sa_column=Column(Text, nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
