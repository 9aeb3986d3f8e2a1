"""Tables of the transfer log: leaves (with the complete-subtree hashes each completed), signed
checkpoints, cosignatures received, what we witnessed of other members' logs, and alerts.

Append-only by construction: nothing in ``connector.translog`` updates or deletes a leaf row.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class LogLeafRow(SQLModel, table=True):
    """One entry, and every complete-subtree hash its append completed: one row write per append.

    Leaf ``idx`` completes the subtrees (level, ``idx >> level``) for level 1 up to the number of
    trailing one bits of ``idx``; ``nodes`` holds their hashes in that order (empty for even
    ``idx``), so any subtree's hash is found by primary key. ``chain`` is SHA-256 of the previous
    row's chain and this leaf hash: a digest of the whole history that an append checks its
    guess of the log's state against (see ``store.py``). The last row is the log's head.
    """

    __tablename__ = "transfer_log_leaf"

    # INTEGER PRIMARY KEY on SQLite: the table's own rowid, so no separate key index to write.
    idx: int = Field(
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
        )
    )
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    nodes: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    chain: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    entry: str = Field(sa_column=Column(Text, nullable=False))  # the RFC 8785 bytes, as UTF-8 text
    # No index but the key: every index is one more page written per append (a random one, for a
    # hash). ``created_at`` never decreases along the log (an append never logs a time before the
    # previous entry's), so a time range is found by binary search on ``idx``; leaf hashes are
    # looked up in ``transfer_log_leaf_hash``, filled behind the appends.
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))  # epoch ms


class LogLeafHashRow(SQLModel, table=True):
    """Leaf hash to index, for proofs asked by leaf hash: filled from ``transfer_log_leaf`` behind the
    appends (``store.index_leaf_hashes``, before a lookup and when a checkpoint is signed), not by them."""

    __tablename__ = "transfer_log_leaf_hash"

    idx: int = Field(
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
        )
    )
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False, index=True))


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
