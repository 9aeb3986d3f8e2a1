"""The transfer log: durable appends, proofs at 1,000,000 entries, offline verification of a 1,000,000-entry bundle.

Appends (SQLite, and PostgreSQL when a server answers): ``append_entry`` committed one per
transaction, ``append_entries`` in transactions of 100 (what a caller logging several events
at once gets), and ``append_entry`` calls inside a caller's transaction; on SQLite also the
write-ahead-log pages one committed append writes, beside a committed raw insert's. Baselines in the same
run, on the same database, alternated with the figures round by round: raw SHA-256 of the same
entry bytes, and raw inserts of the same rows into a plain table through the same driver,
committed the same way. "Durable" is defined in the notes (SQLite: WAL, synchronous=NORMAL).

Proofs: a 1,000,000-entry log is built by bulk insertion (leaf rows with their subtree hashes
and chain, as appends would have stored them), then ``store.inclusion_proof`` and
``store.consistency_proof`` are timed (wall and CPU, after a warm-up) on random indexes and
sizes, beside a raw primary-key SELECT of one leaf. Verification: the whole log is exported as an audit bundle and
``verify_bundle`` checks it, beside raw SHA-256 of every entry.

Targets: at least 5,000 appends/s on SQLite; proofs at most 5 ms at 1,000,000 entries (p99);
offline verification of the 1,000,000-entry bundle at most 60 s.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine, text

from bench.common import BenchResult, Distribution, Figure, Measure, Target, summarise
from bench.processes import postgres_admin_url, postgres_unreachable, throwaway_postgres
from connector.translog import merkle, store
from connector.translog.audit import verify_bundle
from connector.translog.bundle import write_bundle
from connector.translog.entries import REFUSAL, canonical_entry
from connector.translog.times import MAX_TIME_MS
from identity.keys import generate_private_key
from runtime.database import make_engine
from runtime.migrate import upgrade

NAME = "translog"
TITLE = "Transfer log: appends, proofs at 1M entries, offline verification"
FIELDS = {"subject": "negotiation", "counterParty": "did:web:peer.example", "by": "us", "reason": "refused"}
ORIGIN = "did:web:bench.example"
BATCH = 100
WARM_UP = 200  # untimed proofs first: page cache, statement cache and the interpreter warm
PER_S = "ops/s"
MS = "ms"
S = "s"
TEMPLATE = (
    '{"by":"us","counterParty":"did:web:peer.example","kind":"refusal","reason":"refusal number %d",'
    '"subject":"negotiation","time":"2026-11-21T10:00:00.000Z"}'
)


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def _timed(work: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _raw_table(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE raw_leaf (idx BIGINT PRIMARY KEY, leaf_hash BYTEA, entry TEXT, kind VARCHAR(64), "
                "created_at BIGINT)".replace("BYTEA", "BLOB" if engine.dialect.name == "sqlite" else "BYTEA")
            )
        )


ROUNDS = 10  # the append measurements alternate in this many rounds: load changes hit all of them alike


def _appends(url: str, count: int) -> dict[str, float]:
    """Appends per second for ours and the raw baselines, on one fresh database.

    Each round runs ``count / ROUNDS`` operations of every kind, one kind after the other, and
    each kind's time is summed over the rounds: on a shared machine whose load swings within
    seconds, a baseline measured minutes apart from the figure would compare two machines.
    """
    upgrade("connector", url)
    engine = make_engine(url)
    try:
        _raw_table(engine)
        data = canonical_entry(REFUSAL, FIELDS, 0)
        row = (merkle.leaf_hash(data), data.decode(), REFUSAL, 0)
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        insert = f"INSERT INTO raw_leaf VALUES ({mark}, {mark}, {mark}, {mark}, {mark})"
        chunk = count // ROUNDS
        raw_index = iter(range(10**9))

        def raw_single() -> None:
            for _ in range(chunk):
                with engine.begin() as conn:
                    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                    cursor.execute(insert, (next(raw_index), *row))
                    cursor.close()

        def raw_batched() -> None:
            for _ in range(0, chunk, BATCH):
                with engine.begin() as conn:
                    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                    cursor.executemany(insert, [(next(raw_index), *row) for _ in range(BATCH)])
                    cursor.close()

        def raw_in_caller_transaction() -> None:
            with engine.begin() as conn:
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                for _ in range(chunk):
                    cursor.execute(insert, (next(raw_index), *row))
                cursor.close()

        def ours_single() -> None:
            for _ in range(chunk):
                with engine.begin() as conn:
                    store.append_entry(conn, REFUSAL, FIELDS)

        def ours_batched() -> None:
            for _ in range(0, chunk, BATCH):
                with engine.begin() as conn:
                    store.append_entries(conn, [(REFUSAL, FIELDS)] * BATCH)

        def ours_in_caller_transaction() -> None:
            # What a negotiation or transfer pays: one append_entry call inside the transaction
            # that records its state change (committed once, with it).
            with engine.begin() as conn:
                for _ in range(chunk):
                    store.append_entry(conn, REFUSAL, FIELDS)

        def sha() -> None:
            for _ in range(chunk * 10):
                hashlib.sha256(b"\x00" + data).digest()

        kinds: dict[str, Callable[[], None]] = {
            "sha256": sha,
            "raw_single": raw_single,
            "ours_single": ours_single,
            "raw_batched": raw_batched,
            "ours_batched": ours_batched,
            "raw_in_transaction": raw_in_caller_transaction,
            "ours_in_transaction": ours_in_caller_transaction,
        }
        seconds = dict.fromkeys(kinds, 0.0)
        cpu_seconds = dict.fromkeys(kinds, 0.0)
        for _ in range(ROUNDS):
            for name, work in kinds.items():
                gc.collect()
                start, cpu = time.perf_counter(), time.thread_time()
                work()
                seconds[name] += time.perf_counter() - start
                cpu_seconds[name] += time.thread_time() - cpu
        done = {name: chunk * ROUNDS * (10 if name == "sha256" else 1) for name in kinds}
        figures = {name: _rate(done[name], t) for name, t in seconds.items()}
        # Per second of this thread's CPU (user + system, so the writes of a commit count; time
        # spent waiting for a CPU or a disk does not): what one free core would sustain.
        figures |= {f"{name}_cpu": _rate(done[name], t) for name, t in cpu_seconds.items()}
        if engine.dialect.name == "sqlite":
            figures |= _wal_pages(engine, insert, row, raw_index)
        with engine.connect() as conn:  # what was appended is a correct tree
            size, root = store.tree_head(conn)
            entries = store.read_entries(conn, 0, size)
        assert size == 3 * chunk * ROUNDS + (WAL_SAMPLE if "ours_wal_pages" in figures else 0)
        assert merkle.root_of_leaves(merkle.leaf_hash(e.entry) for e in entries) == root
        return figures
    finally:
        engine.dispose()


WAL_SAMPLE = 500  # committed appends (and raw inserts) whose write-ahead log growth is measured


def _wal_pages(
    engine: Engine, insert: str, row: tuple[object, ...], raw_index: Iterator[int]
) -> dict[str, float]:
    """SQLite WAL pages written per committed append and per committed raw insert (what a commit costs).

    On one connection with automatic checkpoints off, after a checkpoint that empties the WAL: its
    growth divided by the frame size (a page and its 24-byte header) is the pages written.
    """
    database = Path(str(engine.url.database))
    wal = database.with_name(database.name + "-wal")
    out: dict[str, float] = {}
    with engine.connect() as conn:
        page = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
        conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
        conn.commit()
        for name in ("ours_wal_pages", "raw_wal_pages"):
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.commit()
            before = wal.stat().st_size
            for _ in range(WAL_SAMPLE):
                with conn.begin():
                    if name == "ours_wal_pages":
                        store.append_entry(conn, REFUSAL, FIELDS)
                    else:
                        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                        cursor.execute(insert, (next(raw_index), *row))
                        cursor.close()
            out[name] = (wal.stat().st_size - before) / (page + 24) / WAL_SAMPLE
        conn.exec_driver_sql("PRAGMA wal_autocheckpoint=1000")  # SQLite's default, as the connector runs
        conn.commit()
    return out


def _bulk_log(url: str, size: int) -> None:
    """A log of ``size`` entries stored as appends store it, written in bulk."""
    upgrade("connector", url)
    engine = make_engine(url)
    try:
        assert TEMPLATE.encode() % 7 == canonical_entry(
            REFUSAL, {**FIELDS, "reason": "refusal number 7"}, 1795255200000
        )
        frontier: list[bytes] = []
        chain = b""
        leaves: list[tuple[object, ...]] = []
        with engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            for i in range(size):  # streamed in chunks: memory stays flat
                data = TEMPLATE.encode() % i
                leaf = merkle.leaf_hash(data)
                frontier, completed = merkle.frontier_after(frontier, i, leaf)
                chain = store.chain_after(chain, leaf)
                nodes = b"".join(h for _, h in completed)
                leaves.append((i, leaf, nodes, chain, data.decode(), REFUSAL, 1795255200000 + i))
                if len(leaves) == 50_000 or i == size - 1:
                    cursor.executemany(store._APPEND_SQL["leaf"], leaves)
                    leaves = []
            cursor.close()
    finally:
        engine.dispose()


def _latencies(engine: Engine, size: int, samples: int, rng: random.Random) -> dict[str, list[float]]:
    """Wall and CPU milliseconds per proof on random indexes and sizes, after an untimed warm-up."""
    out: dict[str, list[float]] = {
        name: [] for name in ("inclusion", "inclusion_cpu", "consistency", "consistency_cpu", "select")
    }
    with engine.connect() as conn:
        root = store.tree_head(conn)[1]
        for sample in range(-WARM_UP, samples):
            index, first = rng.randrange(size), rng.randrange(1, size)
            start, cpu = time.perf_counter(), time.thread_time()
            proof = store.inclusion_proof(conn, index, size)
            inclusion = (time.perf_counter() - start) * 1000, (time.thread_time() - cpu) * 1000
            start, cpu = time.perf_counter(), time.thread_time()
            store.consistency_proof(conn, first, size)
            consistency = (time.perf_counter() - start) * 1000, (time.thread_time() - cpu) * 1000
            start = time.perf_counter()
            conn.exec_driver_sql("SELECT leaf_hash FROM transfer_log_leaf WHERE idx = ?", (index,)).first()
            select = (time.perf_counter() - start) * 1000
            leaf = store.read_entries(conn, index, index + 1)[0].leaf_hash
            merkle.verify_inclusion(leaf, index, size, proof, root)
            if sample >= 0:
                out["inclusion"].append(inclusion[0])
                out["inclusion_cpu"].append(inclusion[1])
                out["consistency"].append(consistency[0])
                out["consistency_cpu"].append(consistency[1])
                out["select"].append(select)
    return out


def _hash_lookups(engine: Engine, size: int, samples: int, rng: random.Random) -> tuple[float, list[float]]:
    """(seconds to catch the leaf-hash index up over the whole bulk-built log, ms per lookup by hash after).

    Appends leave the leaf-hash index behind; the bulk-built log has none at all, so the first
    catch-up is the worst case (a migrated log arrives indexed, and signing a checkpoint catches up).
    """
    catch_up = _timed(lambda: store.index_leaf_hashes(engine))
    wanted = [merkle.leaf_hash(TEMPLATE.encode() % i) for i in (rng.randrange(size) for _ in range(samples))]
    out: list[float] = []
    with engine.connect() as conn:
        for leaf in wanted:
            start = time.perf_counter()
            found = store.index_of_leaf(conn, leaf)
            out.append((time.perf_counter() - start) * 1000)
            assert found is not None
    return catch_up, out


def _verification(engine: Engine, directory: Path) -> tuple[float, float, int]:
    """(seconds to verify the whole log's bundle, seconds of raw SHA-256 over its entries, bytes)."""
    bundle = directory / "bundle.zip"
    with bundle.open("wb") as out:
        write_bundle(engine, ORIGIN, generate_private_key(), 0, MAX_TIME_MS, out)
    with engine.connect() as conn:
        size = store.tree_size(conn)
        entries = [e.entry for e in store.read_entries(conn, 0, size)]
    start = time.perf_counter()
    report = verify_bundle(bundle)
    verified = time.perf_counter() - start
    assert report.ok, report.render()
    assert report.end - report.start == size
    raw = _timed(lambda: [hashlib.sha256(b"\x00" + e).digest() for e in entries])
    return verified, raw, bundle.stat().st_size


def run(quick: bool) -> BenchResult:
    count, size, samples = (1000, 100_000, 300) if quick else (5000, 1_000_000, 1000)
    rng = random.Random(2026)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    notes: list[str] = []
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        directory = Path(tmp)
        sqlite = _appends(f"sqlite:///{directory / 'appends.db'}", count)
        figures += _append_figures("SQLite", sqlite)
        admin = postgres_admin_url()
        why_not = postgres_unreachable(admin)
        if why_not is None:
            with throwaway_postgres(admin) as (url,):
                figures += _append_figures("PostgreSQL", _appends(url, count))
        else:
            notes.append(f"PostgreSQL not measured: {why_not}")

        url = f"sqlite:///{directory / 'big.db'}"
        build = _timed(lambda: _bulk_log(url, size))
        engine = make_engine(url)
        try:
            times = _latencies(engine, size, samples, rng)
            catch_up, times["by_hash"] = _hash_lookups(engine, size, samples, rng)
            verified, raw_hash, bundle_bytes = _verification(engine, directory)
        finally:
            engine.dispose()
    select = summarise(times["select"])
    stats = {name: summarise(values) for name, values in times.items()}
    for proof in ("inclusion", "consistency"):
        for point in ("p99", "p50"):
            figures.append(
                Figure(
                    f"{proof} proof {point} at {size:,} entries",
                    stats[proof][point],
                    MS,
                    Measure(f"raw PK SELECT {point}", select[point], MS),
                )
            )
            figures.append(
                Figure(
                    f"{proof} proof CPU time {point} at {size:,} entries", stats[f"{proof}_cpu"][point], MS
                )
            )
    by_hash = summarise(times["by_hash"])
    figures += [
        Figure(
            f"inclusion proof by leaf hash: lookup p99 at {size:,} entries",
            by_hash["p99"],
            MS,
            Measure("raw PK SELECT p99", select["p99"], MS),
        ),
        Figure(f"catch the leaf-hash index up over all {size:,} entries", catch_up, S),
        Figure(
            f"verify a {size:,}-entry bundle offline",
            verified,
            S,
            Measure("raw SHA-256 of every entry", raw_hash, S),
        ),
    ]
    notes += [
        f"appends: {count} of each kind, run in {ROUNDS} alternating rounds (each kind's time summed over the "
        "rounds, so load swings hit figure and baseline alike). 'One per transaction' = engine.begin(), one "
        "append_entry, COMMIT, per entry; its baseline = engine.begin(), one INSERT of the same row into a plain "
        "table (no index but the key) through the same driver cursor, COMMIT. 'Transactions of 100' = one "
        "append_entries call of 100 per commit, beside executemany of 100 inserts per commit. 'In the caller's "
        f"transaction' = {count // ROUNDS} append_entry calls per commit (what a negotiation pays: its own "
        "commit carries the entry), beside as many single inserts per commit. 'Per CPU-second' divides by the "
        "benchmark thread's CPU time (user + system) instead of wall time: what one free core would sustain",
        f"WAL pages: {WAL_SAMPLE} more appends and raw inserts, each committed, on one connection with automatic "
        "checkpoints off after a checkpoint that empties the WAL; the WAL's growth over the frame size (page + 24 "
        "bytes) per commit is what each commit writes (the leaf row's page and now and then a split; the raw "
        "table's BIGINT key is an index of its own, so it writes two)",
        "durable = committed before the call returns. SQLite runs as the connector runs it: WAL mode, "
        "synchronous=NORMAL, default autocheckpoint: a commit survives a crash of the process at once; "
        "after a power loss or OS crash the database is intact but the last commits before the crash may be "
        "gone (the WAL is fsynced at checkpoints, not at every commit). PostgreSQL runs with fsync=on and "
        "synchronous_commit=on: every commit waits for its WAL flush, so it survives a power loss too. "
        "Every append's tree is checked against the entries afterwards",
        f"the {size:,}-entry log was bulk-inserted in {build:.1f} s (leaf rows with every complete subtree's hash); proofs "
        f"timed on {samples} random indexes/sizes after {WARM_UP} untimed ones, each inclusion proof verified; "
        "a proof is one query (the log's size and every row holding a hash it needs) on an open connection",
        "lookups by leaf hash (what GET /log/inclusion?leafHash= does first): appends do not index leaf hashes; "
        "the bulk-built log is caught up in one go (timed: the worst case, a log never looked up nor "
        f"checkpointed), then {samples} random hashes are looked up, each lookup running its own (empty) "
        "catch-up transaction first, as the route does",
        f"the bundle: {bundle_bytes / 1e6:.1f} MB zip, entries + the log's leaf hashes (leaves.bin) + range proof "
        "+ keys; verification re-hashes every entry, checks its canonical form and fields, checks that the listed "
        "leaf hashes rebuild the checkpoint's root, compares every entry with its listed hash (so a failure names "
        "the entry) and checks the checkpoint's signature",
        "CPU time = time.thread_time of the proving thread (excludes time spent waiting for a CPU); the "
        "wall-clock p99 suffers from other load on this shared machine",
        f"load average (1 min) when the benchmark started: {load:.2f} on {os.cpu_count()} CPUs (shared machine)",
    ]
    by_label = {f.label: f for f in figures}
    inclusion_p99 = by_label[f"inclusion proof p99 at {size:,} entries"]
    consistency_p99 = by_label[f"consistency proof p99 at {size:,} entries"]
    verify = by_label[f"verify a {size:,}-entry bundle offline"]
    sqlite_batched = next(f for f in figures if f.label == "SQLite appends/s (transactions of 100)")
    sqlite_single = next(f for f in figures if f.label == "SQLite appends/s (one per transaction)")
    targets = [
        Target(
            "at least 5,000 durable appends/s on SQLite (batched)",
            sqlite_batched.label,
            5000,
            PER_S,
            "at_least",
            sqlite_batched.value,
        ),
        Target(
            "at least 5,000 durable appends/s on SQLite (single)",
            sqlite_single.label,
            5000,
            PER_S,
            "at_least",
            sqlite_single.value,
        ),
        Target(
            "inclusion proof at most 5 ms (p99)", inclusion_p99.label, 5.0, MS, "at_most", inclusion_p99.value
        ),
        Target(
            "consistency proof at most 5 ms (p99)",
            consistency_p99.label,
            5.0,
            MS,
            "at_most",
            consistency_p99.value,
        ),
        Target(
            "offline verification of the bundle at most 60 s",
            verify.label,
            60.0,
            S,
            "at_most",
            verify.value,
        ),
    ]
    return BenchResult(
        name=NAME,
        title=TITLE,
        figures=figures,
        targets=targets,
        notes=notes,
        parameters={
            "mode": "quick" if quick else "full",
            "appends": count,
            "log_size": size,
            "samples": samples,
        },
        distributions=[
            Distribution("inclusion proof", MS, times["inclusion"]),
            Distribution("consistency proof", MS, times["consistency"]),
            Distribution("raw PK SELECT", MS, times["select"]),
        ],
    )


def _append_figures(database: str, measured: dict[str, float]) -> list[Figure]:
    wal = (
        [
            Figure(
                f"{database} WAL pages written per append (one per transaction)",
                measured["ours_wal_pages"],
                "pages",
                Measure("raw insert + commit per row", measured["raw_wal_pages"], "pages"),
            )
        ]
        if "ours_wal_pages" in measured
        else []
    )
    return [
        Figure(
            f"{database} appends/s (one per transaction)",
            measured["ours_single"],
            PER_S,
            Measure("raw insert + commit per row", measured["raw_single"], PER_S),
        ),
        Figure(
            f"{database} appends per CPU-second (one per transaction)",
            measured["ours_single_cpu"],
            PER_S,
            Measure("raw insert + commit per row, per CPU-second", measured["raw_single_cpu"], PER_S),
        ),
        Figure(
            f"{database} appends/s (transactions of 100)",
            measured["ours_batched"],
            PER_S,
            Measure("raw inserts, 100 per commit", measured["raw_batched"], PER_S),
        ),
        Figure(
            f"{database} appends/s (one call each, in the caller's transaction)",
            measured["ours_in_transaction"],
            PER_S,
            Measure("raw single-row inserts in one transaction", measured["raw_in_transaction"], PER_S),
        ),
        Figure(f"{database} raw SHA-256 of an entry", measured["sha256"], PER_S),
        *wal,
    ]


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run("--quick" in sys.argv).to_json(), indent=2))
