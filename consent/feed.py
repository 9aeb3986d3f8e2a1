"""The change feed: server-sent events telling a controller's connectors what changed.

``GET /api/v1/changes`` streams, in sequence order, every change that concerns
the calling controller: consent given, refused, withdrawn or expired
(``consent``), identifiers registered or removed (``identifier``), agreements
revised (``agreement``). Each event's ``id`` is its sequence number, so a
client that reconnects with ``Last-Event-ID`` misses nothing. A ``head`` event
(id = the newest sequence number) arrives at least once a second, so clients
know the feed is alive and how far it has got; a ``reset`` event means the
client's position is unknown here (drop every cached answer). A stream ends
after MAX_STREAM_SECONDS; clients reconnect with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Engine, select
from starlette.requests import Request

from consent.ledger import HEAD_ID
from consent.models import ConsentChange, DataAgreement, FeedHead
from consent.states import GIVEN_STATES

_C = ConsentChange.__table__.c  # type: ignore[attr-defined]
_A = DataAgreement.__table__.c  # type: ignore[attr-defined]
_H = FeedHead.__table__.c  # type: ignore[attr-defined]
HEARTBEAT_SECONDS = 1.0
# A stream ends after this long; the client reconnects (Last-Event-ID) with a fresh token, so a member
# taken off the member list stops hearing changes within this time.
MAX_STREAM_SECONDS = 300.0
BATCH = 500


def head_seq(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(_H.seq).where(_H.id == HEAD_ID)).scalar() or 0)


def changes_after(engine: Engine, controller: str, after: int, upto: int) -> list[dict[str, Any]]:
    """The controller's changes with ``after < seq <= upto`` (at most BATCH), as feed payloads."""
    query = (
        select(ConsentChange.__table__, _A.purpose)  # type: ignore[attr-defined]
        .select_from(ConsentChange.__table__.outerjoin(DataAgreement.__table__, _A.id == _C.agreement_id))  # type: ignore[attr-defined]
        .where(_C.controller_did == controller, _C.seq > after, _C.seq <= upto)
        .order_by(_C.seq)
        .limit(BATCH)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    events = []
    for row in rows:
        payload: dict[str, Any] = {
            "seq": row.seq,
            "kind": row.kind,
            "at": row.at,
            "subjects": json.loads(row.subject_hashes),
        }
        if row.kind == "consent":
            payload.update(
                state=row.state, valid=row.state in GIVEN_STATES, agreement=row.agreement_id,
                purpose=row.purpose, recipient=row.recipient_did,
            )  # fmt: skip
        elif row.kind == "identifier":
            payload.update(state=row.state)
        else:
            payload.update(agreement=row.agreement_id, purpose=row.purpose, change=row.state)
        events.append(payload)
    return events


def sse(event: str, seq: int, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def change_stream(
    request: Request, engine: Engine, controller: str, after: int | None, poll_seconds: float
) -> AsyncIterator[bytes]:
    head = await asyncio.to_thread(head_seq, engine)
    position = head if after is None else after
    if position > head:
        yield sse("reset", head, {"seq": head})
        position = head
    else:
        yield sse("head", position, {"seq": position})
    last_sent = started = time.monotonic()
    while not await request.is_disconnected() and time.monotonic() - started < MAX_STREAM_SECONDS:
        head = await asyncio.to_thread(head_seq, engine)
        while position < head:
            events = await asyncio.to_thread(changes_after, engine, controller, position, head)
            for payload in events:
                yield sse(payload["kind"], payload["seq"], payload)
            position = head if len(events) < BATCH else events[-1]["seq"]
            last_sent = time.monotonic()
            yield sse("head", position, {"seq": position})
        if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
            yield sse("head", position, {"seq": position})
            last_sent = time.monotonic()
        await asyncio.sleep(poll_seconds)
