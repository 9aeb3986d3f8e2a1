"""Helpers for the transfer-log tests: migrated databases, sample entries, appenders in other processes."""

from __future__ import annotations

import json
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


def peer_headers(caller_did: str, caller_key: Any, audience: str) -> dict[str, str]:
    """An Authorization header as ``caller`` would send it to ``audience``."""
    from identity.peer_client import PeerClient

    return {"Authorization": PeerClient(caller_did, caller_key).authorization_for(audience)}


def introduce(a: Any, b: Any) -> None:
    """Put each of two ``make_connector`` participants on the other's trust list."""
    from sqlmodel import Session

    from identity.keys import public_jwk
    from identity.trustlist import add_member

    for receiver, member in ((a, b), (b, a)):
        with Session(receiver.core.engine) as session:
            add_member(session, member.did, member.settings.dsp_url, public_jwk(member.core.key.public_key()))


def rewrite_history(engine: Engine, index: int, reason: str) -> None:
    """What an operator with database access could do: change entry ``index`` and recompute every hash."""
    import rfc8785
    from sqlalchemy import delete, select, update

    from connector.translog import merkle
    from connector.translog.models import LogHeadRow, LogLeafRow, LogNodeRow

    leaf_t = LogLeafRow.__table__  # type: ignore[attr-defined]
    node_t = LogNodeRow.__table__  # type: ignore[attr-defined]
    head_t = LogHeadRow.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        row = conn.execute(select(leaf_t.c.entry).where(leaf_t.c.idx == index)).one()
        entry = json.loads(row.entry)
        entry["reason"] = reason
        data = rfc8785.dumps(entry)
        conn.execute(
            update(leaf_t)
            .where(leaf_t.c.idx == index)
            .values(entry=data.decode(), leaf_hash=merkle.leaf_hash(data))
        )
        leaves = [bytes(r.leaf_hash) for r in conn.execute(select(leaf_t.c.leaf_hash).order_by(leaf_t.c.idx))]
        tree = merkle.MemoryTree(leaves)
        conn.execute(delete(node_t))
        rows = [
            {"level": level, "idx": i, "hash": h}
            for level, hashes in enumerate(tree.levels)
            if level > 0
            for i, h in enumerate(hashes)
        ]
        if rows:
            conn.execute(node_t.insert(), rows)
        frontier = [tree.levels[lv][ix] for lv, ix in merkle.subtrees_of(0, tree.size)]
        conn.execute(update(head_t).values(frontier=b"".join(frontier)))
