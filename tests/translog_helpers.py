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


def _restore_hashes(conn: Any) -> None:
    """Recompute every stored hash from the entries, as an operator covering their tracks would."""
    from sqlalchemy import select, update

    from connector.translog import merkle, store
    from connector.translog.models import LogLeafRow

    leaf_t = LogLeafRow.__table__  # type: ignore[attr-defined]
    entries = [r.entry.encode() for r in conn.execute(select(leaf_t.c.entry).order_by(leaf_t.c.idx))]
    frontier: list[bytes] = []
    chain = b""
    for index, data in enumerate(entries):
        leaf = merkle.leaf_hash(data)
        frontier, completed = merkle.frontier_after(frontier, index, leaf)
        chain = store.chain_after(chain, leaf)
        conn.execute(
            update(leaf_t)
            .where(leaf_t.c.idx == index)
            .values(leaf_hash=leaf, nodes=b"".join(h for _, h in completed), chain=chain)
        )


def rewrite_history(engine: Engine, index: int, reason: str) -> None:
    """What an operator with database access could do: change entry ``index`` and recompute every hash."""
    import rfc8785
    from sqlalchemy import select, update

    from connector.translog.models import LogLeafRow

    leaf_t = LogLeafRow.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        row = conn.execute(select(leaf_t.c.entry).where(leaf_t.c.idx == index)).one()
        entry = json.loads(row.entry)
        entry["reason"] = reason
        data = rfc8785.dumps(entry)
        conn.execute(update(leaf_t).where(leaf_t.c.idx == index).values(entry=data.decode()))
        _restore_hashes(conn)


def forget_checkpoints(engine: Engine) -> None:
    """An operator bypassing the signer's memory: every checkpoint signed so far is deleted."""
    from sqlalchemy import delete

    from connector.translog.models import LogCheckpointRow, LogCosignatureRow

    with engine.begin() as conn:
        conn.execute(delete(LogCheckpointRow.__table__))  # type: ignore[attr-defined]
        conn.execute(delete(LogCosignatureRow.__table__))  # type: ignore[attr-defined]


def truncate_log(engine: Engine, size: int) -> None:
    """Delete every entry from ``size`` on, as someone hiding them would (the rows before keep their hashes)."""
    from sqlalchemy import delete

    from connector.translog.models import LogLeafRow

    leaf_t = LogLeafRow.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(delete(leaf_t).where(leaf_t.c.idx >= size))


def log_signed_agreement(
    provider: Any, consumer_did: str, consumer_key: Any, n: int, *, forge: bool = False
) -> str:
    """An agreement signed by both parties, stored at ``provider`` and logged as finalized; its id.

    ``forge``: the consumer's signature is made with a stranger's key (what a log must not hide).
    """
    import uuid

    from sqlmodel import Session

    from connector.translog.events import agreement_finalized
    from contracts.agreements import AgreementRecord, store_agreement
    from contracts.signing import agreement_key_id, sign_agreement
    from identity.keys import generate_private_key

    agreement = {
        "@id": f"urn:uuid:{uuid.uuid4()}",
        "@type": "Agreement",
        "target": f"dataset-{n}",
        "assigner": provider.did,
        "assignee": consumer_did,
        "timestamp": "2026-11-21T10:00:00Z",
        "permission": [{"action": "use"}],
    }
    consumer_signer = generate_private_key() if forge else consumer_key
    record = AgreementRecord(
        id=agreement["@id"],
        negotiation_id=str(uuid.uuid4()),
        provider_did=provider.did,
        consumer_did=consumer_did,
        asset_id=agreement["target"],
        agreement=agreement,
        signed_at=0,
        provider_signature=sign_agreement(agreement, provider.core.key, agreement_key_id(provider.did)),
        consumer_signature=sign_agreement(agreement, consumer_signer, agreement_key_id(consumer_did)),
    )
    with Session(provider.core.engine) as session:
        store_agreement(session, record)
        agreement_finalized(session, record, "provider")
        session.commit()
    return str(agreement["@id"])


def rezip(source: Any, target: Any, change: Any) -> None:
    """Copy a bundle, letting ``change(name, data) -> bytes | None`` rewrite (or drop) each member."""
    import zipfile

    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


def signed_in_client(participant: Any, api_key: str) -> Any:
    """A TestClient signed in to the operator pages with the Management API key (the sign-in form)."""
    import re

    client = participant.client()
    form = client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    answer = client.post(
        "/ui/login",
        data={"csrf_token": token.group(1), "next": "/ui", "api_key": api_key},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return client
