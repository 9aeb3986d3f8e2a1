"""Delivering negotiation messages: the outbox worker.

Each negotiation has at most one pending message. A worker takes a lease on
the row (one UPDATE that succeeds only when no other replica holds an
unexpired lease), sends the message with a peer token, and on success lets
the state machine move. A request handler that queues a message and kicks its
delivery takes the lease in its own commit (``claim_on_commit``), so the
delivery starts without a statement and a thread hand-off of its own; in one
process a negotiation is delivered by one task at a time (``_delivering``).
A failure is retried with exponential backoff; after ``MAX_ATTEMPTS`` the
negotiation is TERMINATED with the real reason. A refusal (4xx) from the
counter-party is final at once, except a 409 whose counter-party state shows
an earlier try arrived (its answer lost). Nothing lives only in memory: a
restarted connector picks up where it stopped.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import event, or_, select, update
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.queryspec import table_of
from connector.negotiations import (
    KICK_GRACE_MS,
    Pending,
    applied_by_counter_party,
    delivered,
    state_url,
    undeliverable,
)
from contracts.models import NegotiationRow
from runtime import outbox
from runtime.logging import get_logger
from runtime.polling import PollFailures, poll_forever
from runtime.service import ServiceCore

_TABLE = table_of(NegotiationRow)
_N = _TABLE.c
MAX_ATTEMPTS = 8
BASE_DELAY_MS = 500
MAX_DELAY_MS = 30_000
LEASE_MS = 30_000
POLL_SECONDS = 0.5
BATCH = 20

log = get_logger("tessera.negotiation")


def backoff_ms(attempts: int) -> int:
    return int(min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** max(0, attempts - 1)))


class NegotiationWorker:
    def __init__(self, core: ServiceCore, *, owner: str | None = None) -> None:
        self._core = core
        self.owner = owner or uuid.uuid4().hex[:16]
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Leases request handlers took for us, by negotiation: (time.monotonic() then, the message,
        # the counter-party's DID) until a delivery starts; and the negotiations a task of ours is
        # delivering now. Read and changed on the event loop, but for the claims' registration
        # (one dict assignment, from a handler's thread, as its commit ends).
        self._claimed: dict[str, tuple[float, str, str]] = {}
        self._delivering: set[str] = set()

    # ---- leases

    def claim_on_commit(self, session: Session) -> None:
        """Take the lease, in ``session``'s next commit, of every negotiation it queues a message for.

        For a handler that kicks the delivery once it has answered: the kick then sends at once,
        with no statement and no thread hand-off of its own. A claim whose kick never comes (the
        client went away before its answer) is taken over by the poll once the message is due
        (``KICK_GRACE_MS``); another replica waits for the lease to expire, as for any delivery
        in flight. A claim counts only once its commit has succeeded.
        """
        taken: list[tuple[str, str, str]] = []

        def claim(current: Session) -> None:
            now = now_millis()
            # Every negotiation the session holds, flushed already or not (the kick looks at the same).
            for row in (*current.new, *current.identity_map.values()):
                if (
                    isinstance(row, NegotiationRow)
                    and row.pending_message is not None
                    and row.lease_until is None
                ):
                    row.lease_owner = self.owner
                    row.lease_until = now + LEASE_MS
                    taken.append((row.id, row.pending_message, row.counter_party_did))

        def committed(_: Session) -> None:
            for negotiation_id, message, audience in taken:
                self._claimed[negotiation_id] = (time.monotonic(), message, audience)
            taken.clear()

        event.listen(session, "before_commit", claim)
        event.listen(session, "after_commit", committed)
        event.listen(session, "after_rollback", lambda _: taken.clear())

    def _lease(self, negotiation_id: str) -> tuple[str, str] | None:
        """Take the lease and read what to send, in one statement: (the pending message's JSON, the
        counter-party's DID), or None when nothing is pending or another worker holds the lease."""
        now = now_millis()
        statement = (
            update(_TABLE)
            .where(
                _N.id == negotiation_id,
                _N.pending_message.is_not(None),
                # A lease of ours is free to us: this process delivers a negotiation with one task
                # at a time (``_delivering``), and a lease ours in the database but in no task's
                # hands is a claim whose kick never came.
                or_(_N.lease_until.is_(None), _N.lease_until < now, _N.lease_owner == self.owner),
            )
            .values(lease_owner=self.owner, lease_until=now + LEASE_MS)
            .returning(_N.pending_message, _N.counter_party_did)
        )
        with self._core.engine.begin() as connection:
            found = connection.execute(statement).first()
        return (found[0], found[1]) if found is not None else None

    def _release(self, negotiation_id: str) -> None:
        statement = (
            update(_TABLE)
            .where(_N.id == negotiation_id, _N.lease_owner == self.owner)
            .values(lease_owner=None, lease_until=None)
        )
        with self._core.engine.begin() as connection:
            connection.execute(statement)

    def _release_in(self, row: NegotiationRow) -> None:
        """Release our lease as part of the caller's next commit."""
        if row.lease_owner == self.owner:
            row.lease_owner = None
            row.lease_until = None

    def _due(self) -> list[str]:
        now = now_millis()
        statement = (
            select(_N.id)
            .where(
                _N.pending_message.is_not(None),
                _N.next_attempt_at <= now,
                or_(_N.lease_until.is_(None), _N.lease_until < now, _N.lease_owner == self.owner),
            )
            .order_by(_N.next_attempt_at)
            .limit(BATCH)
        )
        with Session(self._core.engine) as session:
            return list(session.scalars(statement))

    # ---- delivery

    async def kick(self, negotiation_id: str) -> None:
        """Deliver this negotiation's message now (run after the HTTP answer has been sent)."""
        task = asyncio.create_task(self.deliver(negotiation_id, kicked=True))
        self._tasks.add(task)  # keep a reference until it is done (the loop holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    def _taken(self, negotiation_id: str, *, kicked: bool) -> tuple[bool, tuple[str, str] | None]:
        """(may this task deliver the negotiation now, the message and audience a handler's claim
        holds the lease for). On the event loop: nothing else runs between the check and the mark."""
        if negotiation_id in self._delivering:
            return False, None  # a task of ours is on it
        claim = self._claimed.get(negotiation_id)
        if claim is not None and not kicked and time.monotonic() - claim[0] < KICK_GRACE_MS / 1000:
            return False, None  # its kick is on its way
        self._claimed.pop(negotiation_id, None)
        self._delivering.add(negotiation_id)
        # Only a kick sends what its handler claimed; the poll reads the row (and takes the lease) anew.
        return True, (claim[1], claim[2]) if claim is not None and kicked else None

    async def deliver(self, negotiation_id: str, *, kicked: bool = False) -> None:
        """Deliver the negotiation's pending message (``kicked``: right after the handler that queued
        it answered)."""
        now, claimed = self._taken(negotiation_id, kicked=kicked)
        if not now:
            return
        try:
            await self._deliver(negotiation_id, claimed)
        finally:
            self._delivering.discard(negotiation_id)

    async def _deliver(self, negotiation_id: str, claimed: tuple[str, str] | None) -> None:
        # Each database step runs whole in one thread: no connection (nor row lock) is held while
        # the message travels or while waiting for a thread, so a burst of slow deliveries cannot
        # exhaust the pool and stall the connector.
        loaded = claimed or await run_in_threadpool(self._lease, negotiation_id)
        if loaded is None:
            return  # nothing to send, or another replica (or task) is on it
        recorded = False
        try:
            sent, audience = loaded
            pending = Pending.from_json(sent)
            error, final, answer = await self._send(audience, pending)
            refused_now = final and error is not None and error.startswith("HTTP 409 ")
            if refused_now and await self._applied_before(negotiation_id, audience, pending):
                error, final, answer = None, False, None
            await run_in_threadpool(self._record, negotiation_id, sent, pending, error, final, answer)
            recorded = True  # the outcome's commit released the lease
        except Exception:  # never let one negotiation stop the worker; it is retried by the poll
            log.exception("negotiation delivery failed", negotiation=negotiation_id)
        finally:
            if not recorded:
                await run_in_threadpool(self._release, negotiation_id)
            # A handler waiting for this outcome (``settle``) looks now.
            outbox.records.announce(negotiation_id)

    def _record(
        self,
        negotiation_id: str,
        sent: str,
        pending: Pending,
        error: str | None,
        final: bool,
        answer: dict[str, Any] | None,
    ) -> None:
        """Let the state machine move on a delivery, or schedule the retry, or give up; the lease is
        released in the same commit."""
        # Nothing is read back after the commit but what this session wrote: no reload needed.
        with Session(self._core.engine, expire_on_commit=False) as session:
            row = session.get(NegotiationRow, negotiation_id, with_for_update=True)
            if row is None:
                return
            # While the message travelled, a message from the counter-party may have changed the row
            # (a termination, say): judge the outcome against the row as it is now.
            if row.pending_message != sent:
                self._release_in(row)
                session.add(row)
                session.commit()
                return
            if error is None:
                # The lease goes with the commit that records the delivery: a lease freed earlier
                # would let the counter-party's next message (waiting in ``settle``) apply to the
                # row before this delivery is recorded, and be overwritten by it.
                delivered(session, row, pending, answer, commit=False)
                self._release_in(row)
                session.add(row)
                session.commit()
                log.info(
                    "negotiation message delivered",
                    negotiation=row.id,
                    message=pending.message.value,
                    state=row.state,
                )
                return
            row.attempts += 1
            if final or row.attempts >= MAX_ATTEMPTS:
                why = error if final else f"{error} (gave up after {row.attempts} attempts)"
                reason = f"could not deliver {pending.message.value} to {row.counter_party_did}: {why}"
                self._release_in(row)  # undeliverable() commits once, with the termination
                undeliverable(session, row, reason)
                log.warning("negotiation terminated", negotiation=row.id, reason=reason)
                return
            row.next_attempt_at = now_millis() + backoff_ms(row.attempts)
            row.error_detail = f"retrying {pending.message.value}: {error}"
            self._release_in(row)
            session.add(row)
            session.commit()
            log.info(
                "negotiation message will be retried", negotiation=row.id, attempts=row.attempts, error=error
            )

    def _row(self, negotiation_id: str) -> NegotiationRow | None:
        with Session(self._core.engine) as session:
            return session.get(NegotiationRow, negotiation_id)

    async def _applied_before(self, negotiation_id: str, audience: str, pending: Pending) -> bool:
        """Refused as not allowed now: does the counter-party's state show an earlier try arrived?

        (Its answer was lost.) Then the refusal is no reason to give up: the message was delivered.
        """
        row = await run_in_threadpool(self._row, negotiation_id)
        url = state_url(row) if row is not None and row.pending_message is not None else None
        if row is None or url is None:
            return False
        try:
            response = await self._core.peer_client.request(audience, "GET", url)
            theirs = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return False
        if not isinstance(theirs, dict) or (theirs.get("providerPid"), theirs.get("consumerPid")) != (
            row.provider_pid,
            row.consumer_pid,
        ):
            return False
        applied = applied_by_counter_party(row, pending, theirs.get("state"))
        log.info("negotiation message refused", negotiation=negotiation_id, delivered_before=applied)
        return applied

    async def _send(self, audience: str, pending: Pending) -> tuple[str | None, bool, dict[str, Any] | None]:
        """(error or None, whether the error is final, the JSON answer)."""
        try:
            response = await self._core.peer_client.request(audience, "POST", pending.url, json=pending.body)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}", False, None
        if response.status_code in (200, 201, 202, 204):
            try:
                answer = response.json() if response.content else None
            except ValueError:
                answer = None
            return None, False, answer if isinstance(answer, dict) else None
        detail = response.text[:500]
        final = 400 <= response.status_code < 500 and response.status_code not in (408, 429)
        return f"HTTP {response.status_code} {detail}", final, None

    # ---- the loop

    def _forget_stale_claims(self) -> None:
        """Claims whose message went without them (a termination cleared it before the kick, say)."""
        stale = time.monotonic() - LEASE_MS / 1000
        for negotiation_id in [k for k, (at, _, _) in self._claimed.items() if at < stale]:
            self._claimed.pop(negotiation_id, None)

    async def run(self) -> None:
        """Poll for due messages until cancelled."""

        async def step() -> None:
            self._forget_stale_claims()
            for negotiation_id in await run_in_threadpool(self._due):
                await self.deliver(negotiation_id)

        failures = PollFailures(log, "negotiation worker poll failed", POLL_SECONDS)
        await poll_forever(step, failures, self._wake)
