"""The transfer log in the connector database: append, read, root and proofs, all O(log n).

The head row (size and the hashes of the right edge, the "frontier") serialises appends. An
append first tries one ``UPDATE`` that moves the head from the state this engine last wrote to
the new one, its ``WHERE`` checking that state while the update holds the lock; when another
writer got there first it locks the head (``UPDATE ... RETURNING``), learns it and writes the
new frontier. On PostgreSQL the row lock queues concurrent appenders in other processes until
the appending transaction ends; on SQLite the write takes the database's single writer lock.
From the frontier an append computes the new complete subtrees without reading the tree and
stores each once: a leaf row and about one node row. Appends run in the caller's transaction,
so an entry is written exactly when the state change it records is committed.

Proofs read the head and every hash they need in one query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, func, insert, select
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
    # The usual case, one statement: the head is what this engine last saw, checked under the lock.
    "advance": "UPDATE transfer_log_head SET size = ?, frontier = ? WHERE id = 1 AND size = ? AND frontier = ?",
    # Otherwise lock first, learn the head, then write the new frontier.
    "lock": "UPDATE transfer_log_head SET size = size + ? WHERE id = 1 RETURNING size, frontier",
    "frontier": "UPDATE transfer_log_head SET frontier = ? WHERE id = 1",
    "leaf": "INSERT INTO transfer_log_leaf (idx, leaf_hash, entry, kind, created_at) VALUES (?, ?, ?, ?, ?)",
    "node": "INSERT INTO transfer_log_node (level, idx, hash) VALUES (?, ?, ?)",
}
_PERCENT_SQL = {name: statement.replace("?", "%s") for name, statement in _APPEND_SQL.items()}

# The head (size, frontier) each engine last wrote: a guess, never trusted. The "advance"
# statement's WHERE compares it with the stored head while holding the write lock (SQLite) or
# the row lock (PostgreSQL), so a stale guess (another process appended, a transaction rolled
# back) only sends the append down the locking path.
_last_head: WeakKeyDictionary[Engine, tuple[int, bytes]] = WeakKeyDictionary()


def _statements(conn: Connection) -> dict[str, str]:
    """The append's SQL in the driver's own placeholder style: no SQLAlchemy compilation on the hot path."""
    return _APPEND_SQL if conn.dialect.paramstyle == "qmark" else _PERCENT_SQL


def _lock_head(conn: Connection, cursor: Any, sql: dict[str, str], grow_by: int) -> tuple[int, bytes]:
    """Reserve ``grow_by`` indexes: (size before, frontier before), the head locked until commit."""
    cursor.execute(sql["lock"], (grow_by,))
    row = cursor.fetchone()
    if row is None:  # a database made before the head row existed: create it (empty log)
        conn.execute(insert(HEAD).values(id=HEAD_ID, size=grow_by, frontier=b""))
        return 0, b""
    return int(row[0]) - grow_by, bytes(row[1])


def _grow(
    frontier_blob: bytes, size: int, hashes: Sequence[bytes]
) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """(the frontier after appending ``hashes`` at ``size``, the node rows they complete)."""
    frontier = _split_frontier(frontier_blob)
    nodes: list[tuple[int, int, bytes]] = []
    for offset, hashed in enumerate(hashes):
        frontier, completed = merkle.frontier_after(frontier, size + offset, hashed)
        nodes.extend((lv, ix, h) for (lv, ix), h in completed)
    return b"".join(frontier), nodes


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
    hashes = [merkle.leaf_hash(data) for data in canonical]
    conn = _connection(target)
    sql = _statements(conn)
    guess = _last_head.get(conn.engine)
    # The driver's cursor on the caller's connection (and so in its transaction): SQLAlchemy's
    # per-statement bookkeeping cost more than the statements themselves.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        advanced = False
        if guess is not None:
            size, before = guess
            after, nodes = _grow(before, size, hashes)
            cursor.execute(sql["advance"], (size + len(items), after, size, before))
            advanced = cursor.rowcount == 1
        if not advanced:
            size, before = _lock_head(conn, cursor, sql, len(items))
            after, nodes = _grow(before, size, hashes)
            cursor.execute(sql["frontier"], (after,))
        leaves = [
            (size + offset, hashed, data.decode(), kind, now)
            for offset, ((kind, _), data, hashed) in enumerate(zip(items, canonical, hashes, strict=True))
        ]
        _write(cursor, sql["leaf"], leaves)
        _write(cursor, sql["node"], nodes)
    finally:
        cursor.close()
    _last_head[conn.engine] = (size + len(items), after)
    return [
        LeafReceipt(size + offset, hashed, kind, now)
        for offset, ((kind, _), hashed) in enumerate(zip(items, hashes, strict=True))
    ]


def _write(cursor: Any, statement: str, rows: list[tuple[Any, ...]]) -> None:
    if len(rows) == 1:
        cursor.execute(statement, rows[0])
    elif rows:
        cursor.executemany(statement, rows)


def append_entry(target: Session | Connection, kind: str, fields: Mapping[str, Any]) -> LeafReceipt:
    """Append one entry in the caller's transaction; committed when the caller commits."""
    return append_entries(target, [(kind, fields)])[0]


# ------------------------------------------------------------------ reading


def _node_query(
    conn: Connection, coords: Iterable[merkle.Coord], with_head: bool
) -> tuple[str, tuple[int, ...]]:
    """One SELECT for complete-subtree hashes (leaves and inner nodes), optionally with the head row.

    Every row is (level, index, hash); the head comes back as (-1, size, frontier). One round
    trip per proof: on a loaded machine each extra trip is another chance to wait for a CPU.
    """
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    leaves = [ix for lv, ix in coords if lv == 0]
    inner = [(lv, ix) for lv, ix in coords if lv > 0]
    parts: list[str] = []
    params: list[int] = []
    if with_head:
        parts.append("SELECT -1, size, frontier FROM transfer_log_head WHERE id = 1")
    if leaves:
        marks = ", ".join([mark] * len(leaves))
        parts.append(f"SELECT 0, idx, leaf_hash FROM transfer_log_leaf WHERE idx IN ({marks})")  # noqa: S608 - placeholders only
        params += leaves
    if inner:
        terms = " OR ".join([f"(level = {mark} AND idx = {mark})"] * len(inner))
        parts.append(f"SELECT level, idx, hash FROM transfer_log_node WHERE {terms}")  # noqa: S608 - placeholders only
        params += [value for pair in inner for value in pair]
    return " UNION ALL ".join(parts), tuple(params)


def _read_nodes(
    conn: Connection, coords: Iterable[merkle.Coord], with_head: bool
) -> tuple[int | None, dict[merkle.Coord, bytes]]:
    """(the log's size if asked for (None if the log has no head yet), the hashes found)."""
    wanted = set(coords)
    if not wanted and not with_head:
        return None, {}
    statement, params = _node_query(conn, wanted, with_head)
    size: int | None = None
    found: dict[merkle.Coord, bytes] = {}
    for level, index, value in conn.exec_driver_sql(statement, params):
        if level < 0:
            size = int(index)
        else:
            found[(int(level), int(index))] = bytes(value)
    return size, found


class DatabaseNodes:
    """``merkle.NodeReader`` over the log tables."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def node_hashes(self, coords: Iterable[merkle.Coord]) -> dict[merkle.Coord, bytes]:
        """One primary-key query for the ~2 log2(n) subtrees a proof needs."""
        return _read_nodes(self.conn, coords, with_head=False)[1]


class _Fetched:
    """``merkle.NodeReader`` over hashes already read."""

    def __init__(self, found: dict[merkle.Coord, bytes]) -> None:
        self.found = found

    def node_hashes(self, coords: Iterable[merkle.Coord]) -> dict[merkle.Coord, bytes]:
        return {c: self.found[c] for c in coords if c in self.found}


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


# No log grows this large; a larger size is refused before it reaches a query as a parameter.
_MAX_SIZE = 2**62


def _check_size(size: int, current: int) -> None:
    if size < 0:
        raise RangeError(f"size {size} is negative")
    if size > current:
        raise RangeError(f"size {size} is larger than the log ({current} entries)")


def _refuse_impossible(conn: Connection, size: int) -> None:
    """Refuse a negative or absurd size before it reaches a query (the message names the log's size)."""
    if size < 0 or size > _MAX_SIZE:
        _check_size(size, tree_size(conn))
        raise RangeError(f"size {size} is larger than any log")


def _prove(conn: Connection, size: int, ranges: Callable[[], list[merkle.Range]]) -> list[bytes]:
    """The roots of ``ranges()`` in a tree of ``size``, read with the log's size in one query."""
    wanted = ranges()
    per_range = [merkle.subtrees_of(start, end) for start, end in wanted]
    current, found = _read_nodes(conn, (c for coords in per_range for c in coords), with_head=True)
    _check_size(size, current or 0)  # checked before any hash read is used
    return merkle.range_roots(_Fetched(found), wanted)


def root_at(target: Session | Connection, size: int) -> bytes:
    conn = _connection(target)
    _refuse_impossible(conn, size)
    if size == 0:
        return merkle.EMPTY_ROOT
    return _prove(conn, size, lambda: [(0, size)])[0]


def inclusion_proof(target: Session | Connection, index: int, size: int) -> list[bytes]:
    conn = _connection(target)
    _refuse_impossible(conn, size)
    if not 0 <= index < size:
        raise RangeError(f"index {index} is not in a tree of size {size}")
    return _prove(conn, size, lambda: merkle.inclusion_ranges(index, size))


def consistency_proof(target: Session | Connection, first: int, second: int) -> list[bytes]:
    conn = _connection(target)
    _refuse_impossible(conn, second)
    if not 0 < first <= second:
        raise RangeError(f"first must be between 1 and second ({second}), not {first}")
    return _prove(conn, second, lambda: merkle.consistency_ranges(first, second))


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
