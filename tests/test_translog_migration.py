"""Migration 0011 moves a transfer log written in the old layout (leaf, node and head tables) into
one row per entry: the same tree, the same proofs, appends continue, and it migrates back."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import Engine, text

from connector.translog import merkle, store
from connector.translog.entries import REFUSAL, canonical_entry
from runtime.database import make_engine
from runtime.migrate import alembic_config, upgrade
from tests.translog_helpers import append_refusals, refusal

BASE_MS = 1_795_255_200_000
# Entry times as the old layout stored them: the clock stepped back once (entries 20 to 24).
TIMES = [BASE_MS + 1000 * i - (30_000 if 20 <= i < 25 else 0) for i in range(45)]


def _write_old_layout(engine: Engine, count: int) -> merkle.MemoryTree:
    """Entries stored exactly as the 0007-0010 store wrote them: leaf rows, node rows, the head row."""
    tree = merkle.MemoryTree()
    frontier: list[bytes] = []
    with engine.begin() as conn:
        for i in range(count):
            data = canonical_entry(REFUSAL, refusal(i), TIMES[i])
            leaf = merkle.leaf_hash(data)
            tree.append(leaf)
            frontier, completed = merkle.frontier_after(frontier, i, leaf)
            conn.execute(
                text("INSERT INTO transfer_log_leaf VALUES (:i, :h, :e, :k, :t)"),
                {"i": i, "h": leaf, "e": data.decode(), "k": REFUSAL, "t": TIMES[i]},
            )
            for (level, index), value in completed:
                conn.execute(
                    text("INSERT INTO transfer_log_node VALUES (:l, :i, :h)"),
                    {"l": level, "i": index, "h": value},
                )
        conn.execute(
            text("UPDATE transfer_log_head SET size = :s, frontier = :f WHERE id = 1"),
            {"s": count, "f": b"".join(frontier)},
        )
    return tree


def _check_proofs(engine: Engine, tree: merkle.MemoryTree) -> None:
    with engine.connect() as conn:
        assert store.tree_head(conn) == (tree.size, tree.root())
        for index in range(tree.size):
            proof = store.inclusion_proof(conn, index, tree.size)
            merkle.verify_inclusion(tree.levels[0][index], index, tree.size, proof, tree.root())
            assert store.index_of_leaf(conn, tree.levels[0][index]) == index
        for first in range(1, tree.size + 1):
            proof = store.consistency_proof(conn, first, tree.size)
            merkle.verify_consistency(first, tree.size, proof, tree.root(first), tree.root())
            assert store.root_at(conn, first) == tree.root(first)


def test_an_old_layout_log_migrates_keeps_its_proofs_and_grows(database_url: str) -> None:
    upgrade("connector", database_url, "0010")
    engine = make_engine(database_url)
    try:
        tree = _write_old_layout(engine, 45)
        upgrade("connector", database_url)
        engine.dispose()  # a process started after the migration
        _check_proofs(engine, tree)
        with engine.connect() as conn:
            entries = store.read_entries(conn, 0, 45)
            assert [merkle.leaf_hash(e.entry) for e in entries] == tree.levels[
                0
            ]  # the entries, byte for byte
            # Times made monotonic (the running maximum) so ranges can be bisected; entries untouched.
            assert [e.created_at for e in entries][19:26] == [TIMES[19]] * 6 + [TIMES[25]]
            assert store.index_range_for_time(conn, TIMES[10], TIMES[30]) == (10, 31)
            assert store.index_range_for_time(conn, TIMES[44] + 1, TIMES[44] + 9) == (0, 0)

        append_refusals(engine, 12, start=45)  # the log grows on top of the migrated head
        with engine.connect() as conn:
            for e in store.read_entries(conn, 45, 57):
                tree.append(merkle.leaf_hash(e.entry))
        _check_proofs(engine, tree)

        # And back: the old tables are rebuilt (head and right edge included), and forward again.
        command.downgrade(alembic_config("connector", database_url), "0010")
        with engine.connect() as conn:
            size, frontier = conn.execute(text("SELECT size, frontier FROM transfer_log_head")).one()
            assert size == 57
            assert (
                merkle.fold_subtrees([bytes(frontier)[i : i + 32] for i in range(0, len(frontier), 32)])
                == tree.root()
            )
            nodes = conn.execute(text("SELECT COUNT(*) FROM transfer_log_node")).scalar_one()
            assert nodes == 57 - bin(57).count("1")  # every complete subtree above the leaves
        upgrade("connector", database_url)
        engine.dispose()
        _check_proofs(engine, tree)
    finally:
        engine.dispose()


def test_a_log_with_a_missing_subtree_is_not_migrated(database_url: str) -> None:
    upgrade("connector", database_url, "0010")
    engine = make_engine(database_url)
    try:
        _write_old_layout(engine, 9)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM transfer_log_node WHERE level = 2 AND idx = 1"))
        with pytest.raises(RuntimeError, match=r"transfer_log_node lacks subtree \(2, 1\)"):
            upgrade("connector", database_url)  # nothing is silently recomputed
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            assert version == "0010"
    finally:
        engine.dispose()
