"""The transfer log in SQLite and PostgreSQL: appends, roots and proofs, concurrent writers, refused entries."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, func, select

from connector.translog import merkle, store
from connector.translog.entries import REFUSAL, EntryError, subject_hash
from connector.translog.models import LogLeafRow
from tests.conftest import Participant
from tests.translog_helpers import append_from_processes, append_refusals, migrated_engine, refusal

LEAF = LogLeafRow.__table__  # type: ignore[attr-defined]


def _recomputed(engine: Engine) -> merkle.MemoryTree:
    """The tree rebuilt from the stored entries' bytes alone."""
    with engine.connect() as conn:
        size = store.tree_size(conn)
        entries = store.read_entries(conn, 0, size)
    assert [e.index for e in entries] == list(range(size))
    return merkle.MemoryTree(merkle.leaf_hash(e.entry) for e in entries)


def test_roots_and_proofs_from_the_database_match_the_tree_of_the_entries(database_url: str) -> None:
    engine = migrated_engine(database_url)
    try:
        append_refusals(engine, 20)
        append_refusals(engine, 17, batch=6, start=20)
        tree = _recomputed(engine)
        assert tree.size == 37
        with engine.connect() as conn:
            size, root = store.tree_head(conn)
            assert (size, root) == (37, tree.root())
            for n in (1, 2, 5, 16, 31, 37):
                assert store.root_at(conn, n) == tree.root(n)
            for index, n in [(0, 1), (4, 5), (12, 37), (36, 37), (15, 16)]:
                proof = store.inclusion_proof(conn, index, n)
                merkle.verify_inclusion(tree.levels[0][index], index, n, proof, tree.root(n))
            for first, second in [(1, 37), (7, 13), (16, 32), (36, 37), (37, 37)]:
                proof = store.consistency_proof(conn, first, second)
                merkle.verify_consistency(first, second, proof, tree.root(first), tree.root(second))
            assert store.index_of_leaf(conn, tree.levels[0][9]) == 9
            first_entry = json.loads(store.read_entries(conn, 0, 1)[0].entry)
            assert first_entry["kind"] == REFUSAL
            assert first_entry["reason"] == "refusal number 0"
    finally:
        engine.dispose()


def test_out_of_range_proofs_are_refused(database_url: str) -> None:
    engine = migrated_engine(database_url)
    try:
        append_refusals(engine, 3)
        with engine.connect() as conn:
            for index, size in [(3, 3), (-1, 3), (0, 4), (0, -1)]:
                with pytest.raises(store.RangeError):
                    store.inclusion_proof(conn, index, size)
            for first, second in [(0, 3), (2, 1), (1, 2**62), (-5, 2)]:
                with pytest.raises(store.RangeError):
                    store.consistency_proof(conn, first, second)
    finally:
        engine.dispose()


def test_entries_with_personal_data_or_unknown_fields_are_refused_and_write_nothing(
    database_url: str,
) -> None:
    engine = migrated_engine(database_url)
    try:
        append_refusals(engine, 2)
        bad = [
            ("no.such.kind", refusal(0)),
            (REFUSAL, {**refusal(0), "email": "x"}),
            (REFUSAL, {**refusal(0), "reason": "ask jane.doe@example.org"}),
            (REFUSAL, {**refusal(0), "reason": "call +49 30 1234 5678"}),
            (REFUSAL, {k: v for k, v in refusal(0).items() if k != "reason"}),
            (
                "transfer.completed",
                {
                    "transferId": "t1",
                    "agreementId": "a1",
                    "dataset": "d",
                    "counterParty": "did:web:x",
                    "role": "provider",
                    "bytes": 1,
                    "payloadSha256": "0" * 64,
                    "records": 1,
                    "consent": {
                        "decisionIds": ["c1"],
                        "released": 1,
                        "withheld": 0,
                        "subjects": ["citizen-42"],
                    },
                },
            ),
        ]
        for kind, fields in bad:
            with pytest.raises(EntryError), engine.begin() as conn:
                store.append_entries(conn, [(REFUSAL, refusal(9)), (kind, fields)])
        with engine.connect() as conn:
            assert store.tree_size(conn) == 2
            assert conn.execute(select(func.count()).select_from(LEAF)).scalar_one() == 2
        # Subjects as keyed hashes are fine.
        good = dict(bad[-1][1])
        good["consent"] = {**good["consent"], "subjects": [subject_hash(b"k" * 32, "citizen-42")]}
        with engine.begin() as conn:
            assert store.append_entry(conn, "transfer.completed", good).index == 2
    finally:
        engine.dispose()


def test_appends_on_a_plain_connection_are_committed_by_its_commit_and_undone_by_its_rollback(
    database_url: str,
) -> None:
    engine = migrated_engine(database_url)
    try:
        with engine.connect() as conn:  # no begin(): the append starts the connection's transaction
            store.append_entry(conn, REFUSAL, refusal(0))
            conn.commit()
            store.append_entry(conn, REFUSAL, refusal(1))
            conn.rollback()
            store.append_entry(conn, REFUSAL, refusal(2))  # built on the real head, not on the undone entry
            conn.commit()
        tree = _recomputed(engine)
        assert tree.size == 2
        with engine.connect() as conn:
            assert [json.loads(e.entry)["reason"] for e in store.read_entries(conn, 0, 2)] == [
                "refusal number 0",
                "refusal number 2",
            ]
            assert store.tree_head(conn) == (2, tree.root())
    finally:
        engine.dispose()


def test_appends_from_several_processes_serialise(database_url: str) -> None:
    engine = migrated_engine(database_url)
    try:
        append_from_processes(database_url, processes=4, each=40)
        tree = _recomputed(engine)
        assert tree.size == 160
        with engine.connect() as conn:
            assert store.tree_head(conn) == (160, tree.root())
            reasons = sorted(json.loads(e.entry)["reason"] for e in store.read_entries(conn, 0, 160))
        assert reasons == sorted(f"refusal number {n}" for n in range(160))
    finally:
        engine.dispose()


def test_rolled_back_appends_and_other_writers_leave_a_correct_tree(database_url: str) -> None:
    """Each engine remembers the head it last wrote: rolled-back appends and appends through
    another engine (as another process would make) make that memory stale, and nothing breaks."""
    first, second = migrated_engine(database_url), migrated_engine(database_url)
    try:
        append_refusals(first, 3)
        with first.connect() as conn:  # the caller's transaction fails and rolls back
            transaction = conn.begin()
            assert store.append_entry(conn, REFUSAL, refusal(100)).index == 3
            transaction.rollback()
        append_refusals(second, 1, start=3)  # the size the rolled-back append reached, another entry
        with first.begin() as conn:
            assert store.append_entry(conn, REFUSAL, refusal(4)).index == 4
        append_refusals(second, 4, batch=2, start=5)
        append_refusals(first, 3, start=9)
        tree = _recomputed(first)
        assert tree.size == 12
        with first.connect() as conn:
            assert store.tree_head(conn) == (12, tree.root())
            for n in (4, 5, 9, 12):
                assert store.root_at(conn, n) == tree.root(n)
            reasons = [json.loads(e.entry)["reason"] for e in store.read_entries(conn, 0, 12)]
        assert reasons == [f"refusal number {n}" for n in range(12)]
    finally:
        first.dispose()
        second.dispose()


def test_entries_are_written_in_rfc8785_form() -> None:
    import rfc8785

    from connector.translog.entries import canonical_entry

    tricky = [
        "plain",
        "é ü ß",
        "tab\tnew\nline",
        'quote " back \\ slash',
        "\u2028\u2029",
        "😀 astral",
        "\x7f del",
        "<>&'",
    ]
    for reason in tricky:
        fields = {
            **refusal(0),
            "reason": reason,
            "dataset": "d-" + reason.replace("\t", " ").replace("\n", " "),
        }
        data = canonical_entry(REFUSAL, fields, 1_795_255_200_123)
        assert data == rfc8785.dumps(json.loads(data))
    with pytest.raises(EntryError, match="lone surrogate"):
        canonical_entry(REFUSAL, {**refusal(0), "reason": "\ud800"}, 0)


def test_a_refusal_with_unloggable_details_is_still_logged(
    make_connector: Callable[..., Participant],
) -> None:
    from sqlmodel import Session

    from connector.translog.events import negotiation_refused
    from contracts.models import NegotiationRow

    city = make_connector("city")
    row = NegotiationRow(
        id="n-1",
        role="provider",
        counter_party_did="did:web:peer.example",
        counter_party_address="http://peer.example/dsp",
        state="TERMINATED",
        asset_id="mailto:jane@example.org",  # an asset id the log refuses to hold
        offer="{}",
        created_at=0,
        updated_at=0,
    )
    with Session(city.core.engine) as session:
        negotiation_refused(
            session, row, by="counter-party", reason="call me: +49 30 1234 5678", code="bad\ncode"
        )
        session.commit()
    with city.core.engine.connect() as conn:
        entry = json.loads(store.read_entries(conn, 0, 1)[0].entry)
    assert entry["reason"] == "call me: [redacted]"
    assert "dataset" not in entry
    assert "code" not in entry


def test_the_leaf_hash_index_is_caught_up_in_the_background_and_before_a_lookup(database_url: str) -> None:
    import asyncio

    from sqlalchemy import text

    from connector.translog.indexer import LeafHashIndexer

    def indexed(engine: Engine) -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM transfer_log_leaf_hash")).scalar_one())

    engine = migrated_engine(database_url)
    try:
        append_refusals(engine, 30)
        assert indexed(engine) == 0  # appends leave the index behind
        tree = _recomputed(engine)
        with engine.connect() as conn:  # a lookup catches up first: every committed entry is found
            assert store.index_of_leaf(conn, tree.levels[0][29]) == 29
        assert indexed(engine) == 30

        append_refusals(engine, 10, start=30)

        async def indexed_in_background() -> int:
            task = asyncio.create_task(LeafHashIndexer(engine, interval_seconds=0.05).run())
            try:
                for _ in range(1200):  # up to a minute on a loaded machine; usually one round
                    count = await asyncio.to_thread(indexed, engine)
                    if count == 40:
                        return count
                    await asyncio.sleep(0.05)
                return count
            finally:
                task.cancel()

        assert asyncio.run(indexed_in_background()) == 40
        with engine.connect() as conn:
            assert store.index_of_leaf(conn, _recomputed(engine).levels[0][35]) == 35
            assert store.index_of_leaf(conn, b"\x00" * 32) is None
    finally:
        engine.dispose()
