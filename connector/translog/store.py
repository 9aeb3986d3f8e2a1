"""The transfer log in the connector database: append, read, root and proofs, all O(log n).

Appending locks the head row first (``UPDATE ... RETURNING``): on PostgreSQL that row lock
queues concurrent appenders in other processes until the appending transaction ends; on
SQLite the write takes the database's single writer lock. The head holds the hashes of the
right edge (the "frontier"), so an append computes the new complete subtrees from them
without reading the tree, and stores each one once: a leaf row, about one node row, and the
new frontier. Appends run in the caller's transaction, so an entry is written exactly when
the state change it records is committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select
from sqlmodel import Session

from connector.translog import merkle
from connector.translog.entries import canonical_entry
from connector.translog.models import LogHeadRow, LogLeafRow, LogNodeRow

LEAF = LogLeafRow.__table__  # type: ignore[attr-defined]
NODE = LogNodeRow.__table__  # type: ignore[attr-defined]
HEAD = LogHeadRow.__table__  # type: ignore[attr-defined]
HEAD_ID = 1


@dataclass(frozen=True)
class LeafReceipt:
    """Where an entry landed: its index, its leaf hash, and the tree size that first includes it."""

    index: int
    leaf_hash: bytes
    kind: str
    created_at: int  # epoch ms

    @property
    def tree_size(self) -> int:
        return self.index + 1


@dataclass(frozen=True)
class StoredEntry:
    index: int
    entry: bytes  # the canonical JSON, exactly the leaf's data
    leaf_hash: bytes
    kind: str
    created_at: int


def _connection(target: Session | Connection) -> Connection:
    return target.connection() if isinstance(target, Session) else target


def _split_frontier(blob: bytes) -> list[bytes]:
    return [blob[i : i + merkle.HASH_SIZE] for i in range(0, len(blob), merkle.HASH_SIZE)]


# The append's SQL, written with qmark placeholders (rewritten to %s for PostgreSQL's driver).
_APPEND_SQL = {
    "lock": "UPDATE transfer_log_head SET size = size + ? WHERE id = 1 RETURNING size, frontier",
    "leaf": "INSERT INTO transfer_log_leaf (idx, leaf_hash, entry, kind, created_at) VALUES (?, ?, ?, ?, ?)",
    "node": "INSERT INTO transfer_log_node (level, idx, hash) VALUES (?, ?, ?)",
    "frontier": "UPDATE transfer_log_head SET frontier = ? WHERE id = 1",
}
_PERCENT_SQL = {name: statement.replace("?", "%s") for name, statement in _APPEND_SQL.items()}


def _statements(conn: Connection) -> dict[str, str]:
    """The append's SQL in the driver's own placeholder style: no SQLAlchemy compilation on the hot path."""
    return _APPEND_SQL if conn.dialect.paramstyle == "qmark" else _PERCENT_SQL


def _lock_head(conn: Connection, cursor: Any, sql: dict[str, str], grow_by: int) -> tuple[int, list[bytes]]:
    """Reserve ``grow_by`` indexes: (size before, frontier before), the head locked until commit."""
    cursor.execute(sql["lock"], (grow_by,))
    row = cursor.fetchone()
    if row is None:  # a database made before the head row existed: create it (empty log)
        conn.execute(insert(HEAD).values(id=HEAD_ID, size=grow_by, frontier=b""))
        return 0, []
    return int(row[0]) - grow_by, _split_frontier(bytes(row[1]))


def append_entries(
    target: Session | Connection, items: Sequence[tuple[str, Mapping[str, Any]]]
) -> list[LeafReceipt]:
    """Append several entries in the caller's transaction (one lock, one write per table).

    Every entry is validated first (``EntryError``): a refused entry writes nothing.
    """
    if not items:
        return []
    now = int(time.time() * 1000)
    canonical = [canonical_entry(kind, fields, now) for kind, fields in items]
    conn = _connection(target)
    sql = _statements(conn)
    # The driver's cursor on the caller's connection (and so in its transaction): SQLAlchemy's
    # per-statement bookkeeping cost more than the statements themselves.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        size, frontier = _lock_head(conn, cursor, sql, len(items))
        leaves: list[tuple[Any, ...]] = []
        nodes: list[tuple[int, int, bytes]] = []
        receipts: list[LeafReceipt] = []
        for offset, ((kind, _), data) in enumerate(zip(items, canonical, strict=True)):
            index = size + offset
            hashed = merkle.leaf_hash(data)
            frontier, completed = merkle.frontier_after(frontier, index, hashed)
            leaves.append((index, hashed, data.decode(), kind, now))
            nodes.extend((lv, ix, h) for (lv, ix), h in completed)
            receipts.append(LeafReceipt(index, hashed, kind, now))
        _write(cursor, sql["leaf"], leaves)
        _write(cursor, sql["node"], nodes)
        cursor.execute(sql["frontier"], (b"".join(frontier),))
    finally:
        cursor.close()
    return receipts


def _write(cursor: Any, statement: str, rows: list[tuple[Any, ...]]) -> None:
    if len(rows) == 1:
        cursor.execute(statement, rows[0])
    elif rows:
        cursor.executemany(statement, rows)


def append_entry(target: Session | Connection, kind: str, fields: Mapping[str, Any]) -> LeafReceipt:
    """Append one entry in the caller's transaction; committed when the caller commits."""
    return append_entries(target, [(kind, fields)])[0]


# ------------------------------------------------------------------ reading


class DatabaseNodes:
    """``merkle.NodeReader`` over the log tables."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def node_hashes(self, coords: Iterable[merkle.Coord]) -> dict[merkle.Coord, bytes]:
        """Two primary-key queries (leaves, inner nodes) for the ~2 log2(n) subtrees a proof needs."""
        wanted = set(coords)
        mark = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
        leaves = [ix for lv, ix in wanted if lv == 0]
        inner = [(lv, ix) for lv, ix in wanted if lv > 0]
        found: dict[merkle.Coord, bytes] = {}
        if leaves:
            marks = ", ".join([mark] * len(leaves))
            rows = self.conn.exec_driver_sql(
                f"SELECT idx, leaf_hash FROM transfer_log_leaf WHERE idx IN ({marks})",  # noqa: S608 - placeholders only
                tuple(leaves),
            )
            found.update({(0, int(r[0])): bytes(r[1]) for r in rows})
        if inner:
            terms = " OR ".join([f"(level = {mark} AND idx = {mark})"] * len(inner))
            rows = self.conn.exec_driver_sql(
                f"SELECT level, idx, hash FROM transfer_log_node WHERE {terms}",  # noqa: S608 - placeholders only
                tuple(value for pair in inner for value in pair),
            )
            found.update({(int(r[0]), int(r[1])): bytes(r[2]) for r in rows})
        return found


def tree_head(target: Session | Connection) -> tuple[int, bytes]:
    """(size, root) of the log now."""
    row = (
        _connection(target)
        .exec_driver_sql("SELECT size, frontier FROM transfer_log_head WHERE id = 1")
        .first()
    )
    if row is None:
        return 0, merkle.EMPTY_ROOT
    return int(row[0]), merkle.fold_subtrees(_split_frontier(bytes(row[1])))


def tree_size(target: Session | Connection) -> int:
    return tree_head(target)[0]


class RangeError(ValueError):
    """Indexes or sizes outside the log (or nonsensical); the message says which."""


def _check_size(size: int, current: int) -> None:
    if size < 0:
        raise RangeError(f"size {size} is negative")
    if size > current:
        raise RangeError(f"size {size} is larger than the log ({current} entries)")


def root_at(target: Session | Connection, size: int) -> bytes:
    conn = _connection(target)
    _check_size(size, tree_size(conn))
    return merkle.root(DatabaseNodes(conn), size)


def inclusion_proof(target: Session | Connection, index: int, size: int) -> list[bytes]:
    conn = _connection(target)
    _check_size(size, tree_size(conn))
    if not 0 <= index < size:
        raise RangeError(f"index {index} is not in a tree of size {size}")
    return merkle.inclusion_proof(DatabaseNodes(conn), index, size)


def consistency_proof(target: Session | Connection, first: int, second: int) -> list[bytes]:
    conn = _connection(target)
    _check_size(second, tree_size(conn))
    if not 0 < first <= second:
        raise RangeError(f"first must be between 1 and second ({second}), not {first}")
    return merkle.consistency_proof(DatabaseNodes(conn), first, second)


def index_of_leaf(target: Session | Connection, leaf_hash: bytes) -> int | None:
    """The first index holding this leaf hash (the column is indexed)."""
    row = (
        _connection(target).execute(select(LEAF.c.idx).where(LEAF.c.leaf_hash == leaf_hash).limit(1)).first()
    )
    return None if row is None else int(row.idx)


def read_entries(target: Session | Connection, start: int, end: int) -> list[StoredEntry]:
    """Entries [start, end) in index order (the caller bounds the range)."""
    rows = _connection(target).execute(
        select(LEAF.c.idx, LEAF.c.entry, LEAF.c.leaf_hash, LEAF.c.kind, LEAF.c.created_at)
        .where(LEAF.c.idx >= start, LEAF.c.idx < end)
        .order_by(LEAF.c.idx)
    )
    return [
        StoredEntry(int(r.idx), r.entry.encode(), bytes(r.leaf_hash), r.kind, int(r.created_at)) for r in rows
    ]


def index_range_for_time(target: Session | Connection, from_ms: int, to_ms: int) -> tuple[int, int]:
    """[start, end) of the entries logged between the two times (inclusive); empty range when none."""
    row = (
        _connection(target)
        .execute(
            select(func.min(LEAF.c.idx), func.max(LEAF.c.idx)).where(
                LEAF.c.created_at >= from_ms, LEAF.c.created_at <= to_ms
            )
        )
        .first()
    )
    if row is None or row[0] is None:
        return 0, 0
    return int(row[0]), int(row[1]) + 1
