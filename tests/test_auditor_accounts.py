"""Auditor accounts (``tessera auditor``), their sessions, and the timeline's index, on real databases."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from connector.auditor.accounts import AuditorError, add_auditor, authenticate, get_auditor, remove_auditor
from connector.auditor.log_view import entry_views
from connector.auditor.session import AuditorSessions
from connector.auditor.timeline import (
    TimelineFilter,
    daily_totals,
    matching_indexes,
    refresh_index,
    unindexed,
)
from connector.translog import merkle, store
from connector.translog.entries import REFUSAL
from connector.translog.store import append_entries
from tests.auditor_helpers import tessera, transfer
from tests.helpers import assert_one_line_error, new_participant
from tests.translog_helpers import append_refusals, migrated_engine

PASSWORD = "correct-horse-battery-staple"
TRANSIT = "did:web:transit.example"


def test_the_operator_adds_lists_and_removes_auditors(tmp_path: Path) -> None:
    city, _ = new_participant(tmp_path)
    added = tessera("auditor", "add", "alice", "--dir", str(city))
    assert added.code == 0, added.stderr
    generated = added.stdout.strip()
    assert len(generated) == 24, added.stdout  # 144 random bits, printed once
    assert "/ui/audit" in added.stderr
    given = tessera(
        "auditor", "add", "bob.smith", "--password-stdin", "--dir", str(city), stdin=PASSWORD + "\n"
    )
    assert given.code == 0, given.stderr
    assert given.stdout == ""  # a password the operator chose is not echoed

    listed = tessera("auditor", "list", "--dir", str(city))
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["alice", "bob.smith"]
    with sqlite3.connect(city / "tessera.db") as conn:
        hashes = dict(conn.execute("SELECT name, password_hash FROM auditor").fetchall())
    assert all(h.startswith("$argon2id$") for h in hashes.values()), hashes
    assert generated not in hashes["alice"]
    assert PASSWORD not in hashes["bob.smith"]

    assert_one_line_error(tessera("auditor", "add", "alice", "--dir", str(city)), "alice", "exists already")
    assert_one_line_error(tessera("auditor", "add", "Alice Smith", "--dir", str(city)), "not an auditor name")
    short = tessera("auditor", "add", "carol", "--password-stdin", "--dir", str(city), stdin="short\n")
    assert_one_line_error(short, "12 to 1024 characters")
    assert_one_line_error(tessera("auditor", "remove", "nobody", "--dir", str(city)), "no auditor 'nobody'")
    assert_one_line_error(
        tessera("auditor", "add", "dave", "--reset", "--dir", str(city)), "no auditor 'dave'"
    )

    assert tessera("auditor", "remove", "alice", "--dir", str(city)).code == 0
    assert tessera("auditor", "remove", "bob.smith", "--dir", str(city)).code == 0
    emptied = tessera("auditor", "list", "--dir", str(city))
    assert (emptied.stdout, emptied.stderr.strip()) == ("", "no auditors")


def test_auditors_belong_to_connectors(tmp_path: Path) -> None:
    consent, _ = new_participant(tmp_path, "consent", kind="consent")
    assert_one_line_error(tessera("auditor", "add", "alice", "--dir", str(consent)), "is not a connector")


def test_passwords_and_sessions(database_url: str) -> None:
    engine = migrated_engine(database_url)
    try:
        first = add_auditor(engine, "alice", PASSWORD)
        assert authenticate(engine, "alice", PASSWORD) == first
        assert authenticate(engine, "alice", PASSWORD + "x") is None
        assert authenticate(engine, "mallory", PASSWORD) is None
        assert authenticate(engine, "../etc", PASSWORD) is None
        sessions = AuditorSessions(Ed25519PrivateKey.generate())
        token = sessions.issue("alice", first.session_salt)
        assert sessions.is_valid(token, first.session_salt)
        # A token signed by another connector's key, or for another name, is no session here.
        assert not AuditorSessions(Ed25519PrivateKey.generate()).is_valid(token, first.session_salt)
        assert not sessions.is_valid(token.rsplit(".", 1)[0] + ".bob", first.session_salt)
        renewed = add_auditor(engine, "alice", PASSWORD + "-new", reset=True)
        assert not sessions.is_valid(token, renewed.session_salt)  # a new password ends the old sessions
        assert authenticate(engine, "alice", PASSWORD) is None
        with pytest.raises(AuditorError, match="exists already"):
            add_auditor(engine, "alice", PASSWORD)
        remove_auditor(engine, "alice")
        assert get_auditor(engine, "alice") is None
    finally:
        engine.dispose()


def _append_at(engine: Engine, moment: datetime, items: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    with (
        mock.patch("connector.translog.store.time.time", return_value=moment.timestamp()),
        engine.begin() as conn,
    ):
        append_entries(conn, items)


def test_the_timeline_index_filters_and_counts_per_day(database_url: str) -> None:
    engine = migrated_engine(database_url)
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    try:
        _append_at(
            engine,
            today - timedelta(days=2),
            transfer(1, "urn:a:1", "parking", TRANSIT, size=1000, personal=False),
        )
        refusal = {
            "subject": "transfer",
            "counterParty": "did:web:utility.example",
            "by": "us",
            "reason": "no consent",
        }
        _append_at(engine, today - timedelta(days=1), [(REFUSAL, refusal)])
        _append_at(engine, today, transfer(2, "urn:a:2", "card-trips", TRANSIT, size=4000, personal=True))
        _append_at(engine, today, transfer(3, "urn:a:2", "card-trips", TRANSIT, size=6000, personal=True))
        assert refresh_index(engine) == 7
        assert refresh_index(engine) == 0  # each entry is indexed once

        def found(**query: str) -> list[int]:
            wanted, errors = TimelineFilter.from_query(query)
            assert errors == []
            with engine.connect() as conn:
                return matching_indexes(conn, wanted)[0]

        assert found() == [6, 5, 4, 3, 2, 1, 0]
        assert found(personal="yes") == [6, 5, 4, 3]  # the starts too: card-trips was logged with consent
        assert found(counter_party="did:web:utility.example") == [2]
        assert found(dataset="parking", kind="transfers") == [1, 0]
        yesterday = (today - timedelta(days=1)).date().isoformat()
        assert found(**{"from": yesterday, "to": yesterday}) == [2]
        assert found(kind="refusals") == [2]

        with engine.connect() as conn:
            totals = daily_totals(conn, TimelineFilter(), today.date())
        by_day = {d.day: (d.transfers, d.bytes) for d in totals.days}
        assert len(totals.days) == 30
        assert by_day[today.date()] == (2, 10_000)
        assert by_day[today.date() - timedelta(days=1)] == (0, 0)
        assert by_day[today.date() - timedelta(days=2)] == (1, 1000)
        with engine.connect() as conn:
            personal = daily_totals(conn, TimelineFilter(personal_only=True), today.date())
        assert personal.transfers == 2
    finally:
        engine.dispose()


def test_bad_filters_are_named_and_ignored() -> None:
    wanted, errors = TimelineFilter.from_query(
        {"from": "2026-13-01", "to": "x", "kind": "drop table", "page": "-3"}
    )
    assert wanted == TimelineFilter()
    assert errors == [
        "There is no kind of entry 'drop table'.",
        "The from date '2026-13-01' is not a date like 2026-11-21.",
        "The to date 'x' is not a date like 2026-11-21.",
    ]
    reversed_range, errors = TimelineFilter.from_query({"from": "2026-11-21", "to": "2026-11-01"})
    assert (reversed_range.date_from, errors) == (None, ["The from date is after the to date."])
    wide, _ = TimelineFilter.from_query({"from": "2020-01-01", "to": "2026-11-21"})
    with mock.patch("connector.auditor.timeline.MAX_CHART_DAYS", 366):
        from connector.auditor.timeline import chart_days

        first, last, clipped = chart_days(wide, date(2026, 11, 21))
    assert (last - first).days == 365
    assert clipped


def test_a_large_log_is_indexed_a_bounded_part_per_page_load(database_url: str) -> None:
    engine = migrated_engine(database_url)
    try:
        append_refusals(engine, 2500, batch=500)
        assert refresh_index(engine, max_entries=1000) == 1000
        with engine.connect() as conn:
            assert unindexed(conn) == 1500
        assert refresh_index(engine) == 1500
        with engine.connect() as conn:
            assert unindexed(conn) == 0
            newest, more = matching_indexes(conn, TimelineFilter())
        assert newest == list(range(2499, 2474, -1))
        assert more
    finally:
        engine.dispose()


def test_the_proofs_a_page_serves_verify(database_url: str) -> None:
    engine = migrated_engine(database_url)
    try:
        append_refusals(engine, 37, batch=5)
        with engine.connect() as conn:
            size, root = store.tree_head(conn)
            wanted = [36, 35, 20, 8, 7, 1, 0]
            views = entry_views(conn, wanted, {}, size)
        assert [v.index for v in views] == wanted
        for view in views:
            proof = [base64.b64decode(h) for h in view.proof.split(" ")]
            merkle.verify_inclusion(merkle.leaf_hash(view.text.encode()), view.index, size, proof, root)
        with engine.connect() as conn:  # entries beyond the checkpoint get no proof
            (newest,) = entry_views(conn, [36], {}, 30)
        assert (newest.in_checkpoint, newest.proof) == (False, "")
    finally:
        engine.dispose()
