"""The transfer log in the connector database: append, read, root and proofs, all O(log n).

One row per entry (``models.LogLeafRow``): the entry, its leaf hash, the hashes of the
complete subtrees its append completed, and ``chain``, a digest of the history up to it. The
last row is the log's head: its index gives the size, and the right edge (the "frontier") is
read from the rows that completed its subtrees. An append writes one row and nothing else, so
a commit writes the table's last page (leaf hashes are indexed behind the appends, by
``index_leaf_hashes``: an index ordered by hash would cost a random page per commit).

Each engine remembers the head it last wrote (size, frontier, chain, time): a guess, never
trusted. Appends are serialised first: on SQLite by the database's writer lock (taken before
the append reads anything), on PostgreSQL by a transaction advisory lock, which queues
appenders in other processes until the appending transaction ends. The first row then goes
in only if the row before it carries the guessed chain (a hash over every leaf hash, so a
different history fails the check) and its index is free (the primary key): a stale guess
(another writer appended, a transaction rolled back) inserts nothing, and the append reads
the real head and inserts again. Appends run in the caller's transaction, so an entry is
written exactly when the state change it records is committed.

Entry times never decrease along the log (an append logs at least the previous entry's time),
so a time range is found by binary search on the index. Proofs read every hash they need and
the log's size in one query.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, select
from sqlmodel import Session

from connector.translog import merkle
from connector.translog.entries import canonical_entry
from connector.translog.models import LogLeafHashRow, LogLeafRow

LEAF = LogLeafRow.__table__  # type: ignore[attr-defined]
HASHES = LogLeafHashRow.__table__  # type: ignore[attr-defined]
# Any fixed 64-bit key: the PostgreSQL advisory lock that queues appenders ("translog" in ASCII).
_APPEND_LOCK = 0x7472616E736C6F67
_ATTEMPTS = 3  # a guess, then the real head; a third try only if PostgreSQL raced us


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


@dataclass(frozen=True)
class _Head:
    """The log's state after its last entry: what the next append builds on."""

    size: int
    frontier: list[bytes]  # the complete subtrees of the right edge, largest first (never mutated)
    chain: bytes  # the last row's chain (b"" for the empty log)
    time: int  # the last entry's time, epoch ms (0 for the empty log)


_EMPTY = _Head(0, [], b"", 0)


def _connection(target: Session | Connection) -> Connection:
    return target.connection() if isinstance(target, Session) else target


def chain_after(chain: bytes, leaf_hash: bytes) -> bytes:
    """The chain of a row: SHA-256 of the previous row's chain (b"" before the first) and its leaf hash."""
    return hashlib.sha256(chain + leaf_hash).digest()


def row_of(coord: merkle.Coord) -> int:
    """The index of the leaf whose append completed subtree (level, index): its last leaf."""
    level, index = coord
    return ((index + 1) << level) - 1


def node_in_row(level: int, leaf_hash: bytes, nodes: bytes) -> bytes | None:
    """Subtree hash of ``level`` kept in a leaf row (None when the row holds no such level)."""
    if level == 0:
        return leaf_hash
    found = nodes[(level - 1) * merkle.HASH_SIZE : level * merkle.HASH_SIZE]
    return found if len(found) == merkle.HASH_SIZE else None


# The append's SQL, written with qmark placeholders (rewritten to %s for PostgreSQL's driver).
_COLUMNS = "idx, leaf_hash, nodes, chain, entry, kind, created_at"
_APPEND_SQL = {
    "leaf": f"INSERT INTO transfer_log_leaf ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constants
    "last": "SELECT idx, chain, created_at FROM transfer_log_leaf ORDER BY idx DESC LIMIT 1",
    "chain": "SELECT chain FROM transfer_log_leaf WHERE idx = ?",
}
_PERCENT_SQL = {name: statement.replace("?", "%s") for name, statement in _APPEND_SQL.items()}
# PostgreSQL: the lock, and the first row inserted only on top of the head the append built on
# (checked in the statement, since an error would abort the caller's transaction). A parameter
# in a SELECT list is typed as text unless cast.
_GUARDED = (
    f"INSERT INTO transfer_log_leaf ({_COLUMNS}) "
    "SELECT %s::bigint, %s::bytea, %s::bytea, %s::bytea, %s, %s, %s::bigint WHERE {} ON CONFLICT DO NOTHING"
)
_PERCENT_SQL |= {
    "lock": f"SELECT pg_advisory_xact_lock({_APPEND_LOCK})",
    "after": _GUARDED.format("EXISTS (SELECT 1 FROM transfer_log_leaf WHERE idx = %s AND chain = %s)"),
    "first": _GUARDED.format("NOT EXISTS (SELECT 1 FROM transfer_log_leaf)"),
}

# The head each engine last wrote: a guess, checked before it is built on (see the docstring).
_last_head: WeakKeyDictionary[Engine, _Head] = WeakKeyDictionary()


def _statements(conn: Connection) -> dict[str, str]:
    """The append's SQL in the driver's own placeholder style: no SQLAlchemy compilation on the hot path."""
    return _APPEND_SQL if conn.dialect.paramstyle == "qmark" else _PERCENT_SQL


def _read_head(conn: Connection, cursor: Any, sql: dict[str, str]) -> _Head:
    """The log's head as stored: the last row and the rows holding its right edge."""
    cursor.execute(sql["last"])
    last = cursor.fetchone()
    if last is None:
        return _EMPTY
    size = int(last[0]) + 1
    coords = merkle.subtrees_of(0, size)
    found = _read_nodes(conn, coords, with_head=False)[1]
    try:
        frontier = [found[c] for c in coords]
    except KeyError as missing:
        raise LookupError(f"the log lacks the subtree {missing.args[0]}") from None
    return _Head(size, frontier, bytes(last[1]), int(last[2]))


def _rows(
    head: _Head, items: Sequence[tuple[str, Mapping[str, Any]]], canonical: list[bytes], now: int
) -> tuple[list[tuple[Any, ...]], _Head]:
    """The rows that append ``items`` on top of ``head``, and the head after them."""
    when = max(now, head.time)  # never before the previous entry: time ranges stay binary-searchable
    if when != now:
        canonical = [canonical_entry(kind, fields, when) for kind, fields in items]
    frontier, chain, rows = head.frontier, head.chain, []
    for offset, ((kind, _), data) in enumerate(zip(items, canonical, strict=True)):
        hashed = merkle.leaf_hash(data)
        frontier, completed = merkle.frontier_after(frontier, head.size + offset, hashed)
        chain = chain_after(chain, hashed)
        nodes = b"".join([h for _, h in completed])
        rows.append((head.size + offset, hashed, nodes, chain, data.decode(), kind, when))
    return rows, _Head(head.size + len(items), frontier, chain, when)


def append_entries(
    target: Session | Connection, items: Sequence[tuple[str, Mapping[str, Any]]]
) -> list[LeafReceipt]:
    """Append several entries in the caller's transaction (one lock, one statement per row kind).

    Every entry is validated first (``EntryError``): a refused entry writes nothing.
    """
    if not items:
        return []
    now = int(time.time() * 1000)
    canonical = [canonical_entry(kind, fields, now) for kind, fields in items]
    conn = _connection(target)
    if not conn.in_transaction():
        # A plain Connection: begin its transaction so the caller's commit() commits the entry
        # (the driver cursor below is invisible to SQLAlchemy's autobegin).
        conn.begin()
    sql = _statements(conn)
    head = _last_head.get(conn.engine)
    # The driver's cursor on the caller's connection (and so in its transaction): SQLAlchemy's
    # per-statement bookkeeping cost more than the statements themselves.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        place = _place_sqlite if sql is _APPEND_SQL else _place_postgres
        rows, after = place(conn, cursor, sql, head, lambda h: _rows(h, items, canonical, now))
        if len(rows) == 2:
            cursor.execute(sql["leaf"], rows[1])
        elif len(rows) > 2:
            cursor.executemany(sql["leaf"], rows[1:])
    finally:
        cursor.close()
    _last_head[conn.engine] = after
    return [LeafReceipt(row[0], row[1], row[5], row[6]) for row in rows]


_Build = Callable[[_Head], tuple[list[tuple[Any, ...]], _Head]]


def _place_sqlite(
    conn: Connection, cursor: Any, sql: dict[str, str], head: _Head | None, build: _Build
) -> tuple[list[tuple[Any, ...]], _Head]:
    """Insert the first row on SQLite; (the rows, the head after them).

    The append holds the writer lock before it reads (``BEGIN IMMEDIATE`` unless the caller's
    transaction has written already), so what it reads is current and cannot move. The guess
    is checked by reading its last row's chain; if other writers appended after that row, the
    primary key refuses the INSERT (a statement error: the transaction goes on) and the append
    reads the head and inserts again.
    """
    if not cursor.connection.in_transaction:  # the caller's transaction has not written yet
        cursor.execute("BEGIN IMMEDIATE")
    for attempt in range(_ATTEMPTS):
        if head is not None and head.size:
            cursor.execute(sql["chain"], (head.size - 1,))
            found = cursor.fetchone()
            if found is None or found[0] != head.chain:
                head = None
        if head is None:
            head = _read_head(conn, cursor, sql)
        rows, after = build(head)
        try:
            cursor.execute(sql["leaf"], rows[0])
        except sqlite3.IntegrityError:
            if attempt == _ATTEMPTS - 1:
                raise
            head = None  # another writer took the index: read the head, now under the writer lock
            continue
        return rows, after
    raise AssertionError("unreachable")  # pragma: no cover


def _place_postgres(
    conn: Connection, cursor: Any, sql: dict[str, str], head: _Head | None, build: _Build
) -> tuple[list[tuple[Any, ...]], _Head]:
    """Insert the first row on PostgreSQL under the append lock; (the rows, the head after them).

    The INSERT's own WHERE checks the guessed chain and ON CONFLICT skips a taken index: an
    error would abort the caller's transaction.
    """
    cursor.execute(sql["lock"])
    for _ in range(_ATTEMPTS):
        if head is None:
            head = _read_head(conn, cursor, sql)
        rows, after = build(head)
        if head.size == 0:
            cursor.execute(sql["first"], rows[0])
        else:
            cursor.execute(sql["after"], (*rows[0], head.size - 1, head.chain))
        if cursor.rowcount == 1:
            return rows, after
        head = None  # the guess was stale: read the head as stored
    raise RuntimeError(f"the transfer log's head moved during {_ATTEMPTS} attempts to append")


def append_entry(target: Session | Connection, kind: str, fields: Mapping[str, Any]) -> LeafReceipt:
    """Append one entry in the caller's transaction; committed when the caller commits."""
    return append_entries(target, [(kind, fields)])[0]


# ------------------------------------------------------------------ reading


def _node_query(
    conn: Connection, coords: Iterable[merkle.Coord], with_head: bool
) -> tuple[str, tuple[int, ...]]:
    """One SELECT for the leaf rows holding these subtrees' hashes, optionally with the log's size.

    Every row is (index, leaf hash, nodes); the size comes back as (-1 - size, NULL, NULL). One
    round trip per proof: on a loaded machine each extra trip is another chance to wait for a CPU.
    """
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    rows = sorted({row_of(c) for c in coords})
    parts: list[str] = []
    if rows:
        marks = ", ".join([mark] * len(rows))
        parts.append(f"SELECT idx, leaf_hash, nodes FROM transfer_log_leaf WHERE idx IN ({marks})")  # noqa: S608 - placeholders only
    if with_head:
        parts.append("SELECT -2 - MAX(idx), NULL, NULL FROM transfer_log_leaf")
    return " UNION ALL ".join(parts), tuple(rows)


def _read_nodes(
    conn: Connection, coords: Iterable[merkle.Coord], with_head: bool
) -> tuple[int | None, dict[merkle.Coord, bytes]]:
    """(the log's size if asked for, the hashes found)."""
    wanted = set(coords)
    if not wanted and not with_head:
        return None, {}
    statement, params = _node_query(conn, wanted, with_head)
    size: int | None = None
    stored: dict[int, tuple[bytes, bytes]] = {}
    for index, leaf, nodes in conn.exec_driver_sql(statement, params):
        if index is None:  # MAX over no rows: the empty log
            size = 0
        elif index < 0:
            size = -1 - int(index)
        else:
            stored[int(index)] = (bytes(leaf), bytes(nodes))
    found: dict[merkle.Coord, bytes] = {}
    for coord in wanted:
        row = stored.get(row_of(coord))
        value = None if row is None else node_in_row(coord[0], *row)
        if value is not None:
            found[coord] = value
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
    conn = _connection(target)
    size = tree_size(conn)
    if size == 0:
        return 0, merkle.EMPTY_ROOT
    return size, _prove(conn, size, lambda: [(0, size)])[0]


def tree_size(target: Session | Connection) -> int:
    """The number of entries (one primary-key lookup: the last row)."""
    return _read_nodes(_connection(target), (), with_head=True)[0] or 0


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


# Leaf hashes appended since the last catch-up, into the lookup table: one statement, run in the
# database (the subquery is the table's last key; the range scan starts after it).
_CATCH_UP = (
    "INSERT INTO transfer_log_leaf_hash (idx, leaf_hash) SELECT idx, leaf_hash FROM transfer_log_leaf "
    "WHERE idx > (SELECT COALESCE(MAX(idx), -1) FROM transfer_log_leaf_hash) ON CONFLICT DO NOTHING"
)


def index_leaf_hashes(target: Engine | Session | Connection) -> int:
    """Make every committed entry findable by its leaf hash; how many were added.

    Appends do not write the leaf-hash index (a random page per commit); this catches it up in
    one statement, in a transaction of its own (committed even when the caller's is not), or in
    the caller's when that already holds SQLite's writer lock (a second writer would wait on it).
    """
    if isinstance(target, Engine):
        with target.begin() as conn:
            return max(conn.exec_driver_sql(_CATCH_UP).rowcount, 0)
    conn = _connection(target)
    if conn.dialect.name == "sqlite" and conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        return max(conn.exec_driver_sql(_CATCH_UP).rowcount, 0)
    return index_leaf_hashes(conn.engine)


def index_of_leaf(target: Session | Connection, leaf_hash: bytes) -> int | None:
    """The first index holding this leaf hash among the committed entries (the caller's own uncommitted
    ones too on SQLite, where the catch-up runs in the caller's write transaction)."""
    conn = _connection(target)
    index_leaf_hashes(conn)
    row = conn.execute(
        select(HASHES.c.idx).where(HASHES.c.leaf_hash == leaf_hash).order_by(HASHES.c.idx).limit(1)
    ).first()
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


def _first_at_or_after(conn: Connection, size: int, moment: int) -> int:
    """The first index whose time is at least ``moment`` (``size`` when none): times never decrease."""
    low, high = 0, size
    while low < high:
        middle = (low + high) // 2
        row = conn.execute(select(LEAF.c.created_at).where(LEAF.c.idx == middle)).first()
        if row is not None and int(row[0]) >= moment:
            high = middle
        else:
            low = middle + 1
    return low


def index_range_for_time(target: Session | Connection, from_ms: int, to_ms: int) -> tuple[int, int]:
    """[start, end) of the entries logged between the two times (inclusive); empty range when none.

    A binary search on the index, about 2 log2(n) primary-key reads: times never decrease along the log.
    """
    conn = _connection(target)
    size = tree_size(conn)
    start = _first_at_or_after(conn, size, from_ms)
    end = _first_at_or_after(conn, size, to_ms + 1)
    return (start, end) if start < end else (0, 0)
