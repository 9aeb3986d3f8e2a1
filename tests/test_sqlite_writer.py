"""Writers to one SQLite file in one process queue on a lock of their own (runtime.sqlite_writer).

Each test uses real SQLite files and real threads: the lock must be held for exactly a write
transaction (from its first INSERT/UPDATE/DELETE or explicit BEGIN to its commit, rollback or
close), never by a reader, and a writer that waits too long must fail as SQLite itself would.
"""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from runtime.database import make_engine
from runtime.sqlite_writer import connection_factory, writer_lock_for


def _connect(path: Path, lock_timeout: float = 5.0) -> sqlite3.Connection:
    connection = sqlite3.connect(
        path, factory=connection_factory(str(path), lock_timeout), check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    return connection


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "writers.db"
    with _connect(path) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
    return path


def _names(path: Path) -> list[str]:
    with sqlite3.connect(path) as plain:
        return [row[0] for row in plain.execute("SELECT name FROM item ORDER BY id")]


def test_the_lock_is_held_from_the_first_write_to_the_commit(database: Path) -> None:
    lock = writer_lock_for(str(database))
    connection = _connect(database)
    connection.execute("SELECT count(*) FROM item").fetchall()
    assert not lock.locked(), "a read took the writer lock"
    connection.execute("INSERT INTO item (name) VALUES ('a')")
    assert lock.locked()
    connection.execute("INSERT INTO item (name) VALUES ('b')")
    connection.commit()
    assert not lock.locked()
    assert _names(database) == ["a", "b"]
    connection.close()


@pytest.mark.parametrize("ending", ["rollback", "close", "dropped"])
def test_a_transaction_ended_without_commit_gives_the_lock_back(database: Path, ending: str) -> None:
    lock = writer_lock_for(str(database))
    connection = _connect(database)
    connection.execute("INSERT INTO item (name) VALUES ('lost')")
    assert lock.locked()
    if ending == "rollback":
        connection.rollback()
        connection.close()
    elif ending == "close":
        connection.close()
    else:
        del connection
        gc.collect()
    assert not lock.locked()
    assert _names(database) == []


def test_a_failed_statement_outside_a_transaction_gives_the_lock_back(database: Path) -> None:
    lock = writer_lock_for(str(database))
    connection = _connect(database)
    with pytest.raises(sqlite3.OperationalError):
        connection.execute("INSERT INTO no_such_table (name) VALUES ('x')")
    assert not lock.locked()
    connection.close()


def test_an_explicit_begin_takes_the_lock(database: Path) -> None:
    lock = writer_lock_for(str(database))
    connection = _connect(database)
    connection.execute("BEGIN IMMEDIATE")
    assert lock.locked()
    connection.execute("SELECT count(*) FROM item").fetchall()
    connection.commit()
    assert not lock.locked()
    connection.close()


def test_an_outermost_savepoint_takes_the_lock_and_its_release_gives_it_back(database: Path) -> None:
    lock = writer_lock_for(str(database))
    connection = _connect(database)
    connection.execute("SAVEPOINT outer_sp")
    assert lock.locked()
    connection.execute("INSERT INTO item (name) VALUES ('nested')")
    connection.execute("SAVEPOINT inner_sp")
    connection.execute("RELEASE SAVEPOINT inner_sp")
    assert lock.locked()
    connection.execute("RELEASE SAVEPOINT outer_sp")  # the outermost release commits
    assert not lock.locked()
    assert _names(database) == ["nested"]
    connection.close()


def test_a_reader_is_never_held_up_by_a_writer(database: Path) -> None:
    writer, reader = _connect(database), _connect(database, lock_timeout=0.1)
    writer.execute("INSERT INTO item (name) VALUES ('uncommitted')")
    began = time.perf_counter()
    assert reader.execute("SELECT count(*) FROM item").fetchone() == (0,)
    assert time.perf_counter() - began < 0.1
    writer.commit()
    assert reader.execute("SELECT count(*) FROM item").fetchone() == (1,)
    writer.close()
    reader.close()


def test_a_writer_waits_for_the_other_and_goes_on_when_it_commits(database: Path) -> None:
    first, second = _connect(database), _connect(database)
    first.execute("INSERT INTO item (name) VALUES ('first')")
    finished = threading.Event()

    def write_second() -> None:
        second.execute("INSERT INTO item (name) VALUES ('second')")
        second.commit()
        finished.set()

    thread = threading.Thread(target=write_second)
    thread.start()
    assert not finished.wait(0.3), "the second writer did not wait for the first"
    first.commit()
    assert finished.wait(5)
    thread.join()
    assert _names(database) == ["first", "second"]
    first.close()
    second.close()


def test_a_writer_that_waits_too_long_is_told_the_database_is_locked_and_writes_nothing(
    database: Path,
) -> None:
    holder, late = _connect(database), _connect(database, lock_timeout=0.2)
    holder.execute("INSERT INTO item (name) VALUES ('held')")
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        late.execute("INSERT INTO item (name) VALUES ('late')")
    assert not late.in_transaction
    holder.commit()
    late.execute("INSERT INTO item (name) VALUES ('late')")  # the lock was not left taken by the failure
    late.commit()
    assert _names(database) == ["held", "late"]
    holder.close()
    late.close()


def test_two_files_have_two_locks(tmp_path: Path) -> None:
    assert writer_lock_for(str(tmp_path / "a.db")) is not writer_lock_for(str(tmp_path / "b.db"))
    assert writer_lock_for(str(tmp_path / "a.db")) is writer_lock_for(str(tmp_path / "." / "a.db"))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)"))
        connection.execute(text("INSERT INTO counter (id, value) VALUES (1, 0)"))
    yield engine
    engine.dispose()


def test_the_engine_s_concurrent_read_modify_write_transactions_lose_no_update(
    engine: Engine, tmp_path: Path
) -> None:
    """16 threads each add 1 twenty times, reading the value in the transaction that writes it.

    The sqlite3 module runs a SELECT before the first write outside any transaction, so the read
    and the write are only consistent because the UPDATE itself reads the row under the lock.
    """
    errors: list[BaseException] = []

    def add(times: int) -> None:
        try:
            for _ in range(times):
                with engine.begin() as connection:
                    connection.execute(text("UPDATE counter SET value = value + 1 WHERE id = 1"))
                    connection.execute(text("SELECT value FROM counter WHERE id = 1")).scalar_one()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(20,)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as connection:
        assert connection.execute(text("SELECT value FROM counter")).scalar_one() == 320
    assert not writer_lock_for(str(tmp_path / "engine.db")).locked()


def test_an_engine_on_an_in_memory_database_still_works() -> None:
    engine = make_engine("sqlite://")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (a INTEGER)"))
        connection.execute(text("INSERT INTO t VALUES (1)"))
        assert connection.execute(text("SELECT a FROM t")).scalar_one() == 1
    engine.dispose()
