"""Helpers for the transfer-log tests: migrated databases, sample entries, appenders in other processes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from sqlalchemy import Engine

from connector.translog.entries import REFUSAL
from connector.translog.store import append_entries
from runtime.database import make_engine
from runtime.migrate import upgrade
from tests.helpers import REPO


def migrated_engine(database_url: str) -> Engine:
    upgrade("connector", database_url)
    return make_engine(database_url)


def refusal(n: int, counter_party: str = "did:web:peer.example") -> dict[str, Any]:
    return {
        "subject": "negotiation",
        "counterParty": counter_party,
        "by": "us",
        "reason": f"refusal number {n}",
    }


def append_refusals(engine: Engine, count: int, *, batch: int = 1, start: int = 0) -> None:
    for first in range(start, start + count, batch):
        with engine.begin() as conn:
            append_entries(
                conn, [(REFUSAL, refusal(n)) for n in range(first, min(first + batch, start + count))]
            )


APPENDER = """
import sys
from runtime.database import make_engine
from tests.translog_helpers import append_refusals
engine = make_engine(sys.argv[1])
append_refusals(engine, int(sys.argv[2]), start=int(sys.argv[3]))
engine.dispose()
"""


def append_from_processes(database_url: str, processes: int, each: int) -> None:
    """Several OS processes append ``each`` entries at once, one transaction per entry."""
    running = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, database_url, str(each), str(p * each)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    for proc in running:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
