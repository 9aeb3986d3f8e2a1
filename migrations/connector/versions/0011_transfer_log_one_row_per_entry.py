"""transfer log: one row per entry (subtree hashes and a history chain in the leaf row; no node or head table)

An append used to write the leaf row, about one node row, the head row and two indexes: ~7 pages
of SQLite's WAL per commit. The leaf row now carries the subtree hashes its append completed and
the chain digest an append checks, its key is SQLite's rowid, ``created_at`` (never decreasing
along the log, so searched by bisection) has no index, and leaf hashes are indexed in a table of
their own filled behind the appends (``transfer_log_leaf_hash``): one page per commit, or two.

Existing rows are copied with their stored hashes (not recomputed: the migration must not repair
evidence of tampering); the chain is computed from the stored leaf hashes. ``created_at`` becomes
the running maximum of the old values, so a log written while the clock stepped back stays
searchable (the entries' own times are untouched).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-21 17:45:00.000000
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

CHUNK = 10_000
HASH_SIZE = 32
OLD = "transfer_log_leaf_0010"
NEW = "transfer_log_leaf_0011"

LEAF = sa.table(
    "transfer_log_leaf",
    *(sa.column(c) for c in ("idx", "leaf_hash", "nodes", "chain", "entry", "kind", "created_at")),
)
OLD_LEAF = sa.table(
    "transfer_log_leaf", *(sa.column(c) for c in ("idx", "leaf_hash", "entry", "kind", "created_at"))
)
NODE = sa.table("transfer_log_node", sa.column("level"), sa.column("idx"), sa.column("hash"))
HEAD = sa.table("transfer_log_head", sa.column("id"), sa.column("size"), sa.column("frontier"))


def _completed_levels(index: int) -> int:
    """How many subtrees of level >= 1 leaf ``index`` completes: its trailing one bits."""
    return (~index & (index + 1)).bit_length() - 1


def _nodes_of(conn: sa.Connection, start: int, end: int) -> dict[tuple[int, int], bytes]:
    """The node rows completed by leaves [start, end): node (level, k) is completed by leaf ((k+1) << level) - 1."""
    found: dict[tuple[int, int], bytes] = {}
    level = 1
    while (1 << level) <= end:
        low, high = -(-(start + 1) // (1 << level)) - 1, -(-(end + 1) // (1 << level)) - 1
        rows = conn.execute(
            sa.select(NODE.c.idx, NODE.c.hash).where(
                NODE.c.level == level, NODE.c.idx >= low, NODE.c.idx < high
            )
        )
        found.update(((level, int(r.idx)), bytes(r.hash)) for r in rows)
        level += 1
    return found


def _old_leaves(conn: sa.Connection) -> Iterator[Any]:  # rows of (idx, leaf_hash, entry, kind, created_at)
    start = 0
    while True:
        rows = conn.execute(
            sa.select(
                OLD_LEAF.c.idx, OLD_LEAF.c.leaf_hash, OLD_LEAF.c.entry, OLD_LEAF.c.kind, OLD_LEAF.c.created_at
            )
            .where(OLD_LEAF.c.idx >= start)
            .order_by(OLD_LEAF.c.idx)
            .limit(CHUNK)
        ).all()
        if not rows:
            return
        yield from rows
        start = int(rows[-1].idx) + 1


def _create_leaf_table(name: str) -> None:
    op.create_table(
        name,
        # INTEGER on SQLite: the key is the rowid, no separate index to write per append.
        sa.Column(
            "idx", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False
        ),
        sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
        sa.Column("nodes", sa.LargeBinary(), nullable=False),
        sa.Column("chain", sa.LargeBinary(), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("idx"),
    )


def _copy(conn: sa.Connection, target: sa.TableClause) -> None:
    """Every old row into ``target`` in the new layout; RuntimeError when the old log is not whole."""
    expected, chain, clock, batch = 0, b"", 0, []
    nodes: dict[tuple[int, int], bytes] = {}
    for row in _old_leaves(conn):
        index = int(row.idx)
        if index != expected:
            raise RuntimeError(f"transfer_log_leaf has no row {expected}: the log is not contiguous")
        if index % CHUNK == 0:
            nodes = _nodes_of(conn, index, index + CHUNK)
        leaf = bytes(row.leaf_hash)
        completed = []
        for level in range(1, _completed_levels(index) + 1):
            value = nodes.get((level, index >> level))
            if value is None or len(value) != HASH_SIZE:
                raise RuntimeError(f"transfer_log_node lacks subtree ({level}, {index >> level})")
            completed.append(value)
        chain = hashlib.sha256(chain + leaf).digest()
        clock = max(clock, int(row.created_at))
        batch.append(
            {
                "idx": index,
                "leaf_hash": leaf,
                "nodes": b"".join(completed),
                "chain": chain,
                "entry": row.entry,
                "kind": row.kind,
                "created_at": clock,
            }
        )
        if len(batch) == CHUNK:
            conn.execute(target.insert(), batch)
            batch = []
        expected += 1
    if batch:
        conn.execute(target.insert(), batch)
    head = conn.execute(sa.select(HEAD.c.size).where(HEAD.c.id == 1)).first()
    if head is not None and int(head.size) != expected:
        raise RuntimeError(f"transfer_log_head says {head.size} entries, transfer_log_leaf holds {expected}")


def upgrade() -> None:
    conn = op.get_bind()
    # The new rows go into a table of their own first: SQLite runs DDL outside the transaction,
    # so nothing old is dropped until the whole log has been copied and checked (a failed
    # attempt may leave that table behind, empty: the next attempt starts by dropping it).
    op.execute(f"DROP TABLE IF EXISTS {NEW}")
    _create_leaf_table(NEW)
    _copy(conn, sa.table(NEW, *(sa.column(c.name) for c in LEAF.c)))
    with op.batch_alter_table("transfer_log_leaf", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfer_log_leaf_leaf_hash"))
        batch_op.drop_index(batch_op.f("ix_transfer_log_leaf_created_at"))
    op.drop_table("transfer_log_leaf")
    op.drop_table("transfer_log_node")
    op.drop_table("transfer_log_head")
    op.rename_table(NEW, "transfer_log_leaf")
    if conn.dialect.name == "postgresql":  # the key's index keeps the name it was created with
        op.execute(f"ALTER INDEX {NEW}_pkey RENAME TO transfer_log_leaf_pkey")
    op.create_table(
        "transfer_log_leaf_hash",
        sa.Column(
            "idx", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False
        ),
        sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("idx"),
    )
    op.execute(
        "INSERT INTO transfer_log_leaf_hash (idx, leaf_hash) SELECT idx, leaf_hash FROM transfer_log_leaf"
    )
    with op.batch_alter_table("transfer_log_leaf_hash", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transfer_log_leaf_hash_leaf_hash"), ["leaf_hash"], unique=False)


def downgrade() -> None:
    conn = op.get_bind()
    op.create_table(
        "transfer_log_node",
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
    )
    op.create_table(
        "transfer_log_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("frontier", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    size, start = 0, 0
    while True:
        rows = conn.execute(
            sa.select(LEAF.c.idx, LEAF.c.nodes).where(LEAF.c.idx >= start).order_by(LEAF.c.idx).limit(CHUNK)
        ).all()
        if not rows:
            break
        node_rows = [
            {
                "level": level,
                "idx": int(r.idx) >> level,
                "hash": bytes(r.nodes)[(level - 1) * 32 : level * 32],
            }
            for r in rows
            for level in range(1, len(bytes(r.nodes)) // HASH_SIZE + 1)
        ]
        if node_rows:
            conn.execute(NODE.insert(), node_rows)
        size = int(rows[-1].idx) + 1
        start = size
    frontier = b""
    if size:
        # The right edge: subtree (level, k) of the decomposition of size is kept by leaf ((k+1) << level) - 1.
        parts, begin, left = [], 0, size
        while left:
            level = left.bit_length() - 1
            holder = begin + (1 << level) - 1
            row = conn.execute(sa.select(LEAF.c.leaf_hash, LEAF.c.nodes).where(LEAF.c.idx == holder)).one()
            parts.append(
                bytes(row.leaf_hash) if level == 0 else bytes(row.nodes)[(level - 1) * 32 : level * 32]
            )
            begin += 1 << level
            left -= 1 << level
        frontier = b"".join(parts)
    conn.execute(HEAD.insert(), [{"id": 1, "size": size, "frontier": frontier}])

    with op.batch_alter_table("transfer_log_leaf_hash", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfer_log_leaf_hash_leaf_hash"))
    op.drop_table("transfer_log_leaf_hash")
    op.rename_table("transfer_log_leaf", OLD)
    if conn.dialect.name == "postgresql":
        op.execute(f"ALTER INDEX transfer_log_leaf_pkey RENAME TO {OLD}_pkey")
    op.create_table(
        "transfer_log_leaf",
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("idx"),
    )
    op.execute(
        f"INSERT INTO transfer_log_leaf (idx, leaf_hash, entry, kind, created_at) "  # noqa: S608 - constants
        f"SELECT idx, leaf_hash, entry, kind, created_at FROM {OLD}"
    )
    op.drop_table(OLD)
    with op.batch_alter_table("transfer_log_leaf", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transfer_log_leaf_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_transfer_log_leaf_leaf_hash"), ["leaf_hash"], unique=False)
