"""Delivering transfer messages: the transfer outbox worker.

The same discipline as ``connector.negotiation_worker`` (a separate copy so
that each keeps its own tuning and tests): a worker leases a row (one UPDATE
that succeeds only when no replica holds an unexpired lease), sends the one
pending message with a peer token, and on success lets the state machine
move. Failures are retried with exponential backoff; after ``MAX_ATTEMPTS``,
or at once on a 4xx refusal, the transfer is TERMINATED with the reason.

When the consumer has acknowledged the start of a push transfer, the worker
hands the transfer to ``pusher`` (the data plane). A push holds the row's lease
too, renewed while it runs, so one replica pushes a transfer at a time; a
STARTED push transfer with nothing queued and no live lease is a push that
was interrupted (a restart, a crash), and the poll pushes it again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import or_, select, update
from sqlmodel import Session

from catalog.assets import now_millis
from catalog.queryspec import table_of
from connector.transfer_models import TransferRow
from connector.transfer_receipts import send_statements
from connector.transfer_states import Message
from connector.transfers import Pending, delivered, end_by_provider, needs_push, undeliverable
from runtime import outbox
from runtime.logging import get_logger
from runtime.polling import PollFailures, poll_forever
from runtime.service import ServiceCore

_TABLE = table_of(TransferRow)
_T = _TABLE.c
MAX_ATTEMPTS = 8
BASE_DELAY_MS = 500
MAX_DELAY_MS = 30_000
LEASE_MS = 30_000
POLL_SECONDS = 0.5
BATCH = 20

log = get_logger("tessera.transfer")
Pusher = Callable[[str], Awaitable[None]]


def backoff_ms(attempts: int) -> int:
    return int(min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** max(0, attempts - 1)))


class TransferWorker:
    def __init__(self, core: ServiceCore, *, owner: str | None = None, pusher: Pusher | None = None) -> None:
        self._core = core
        self.owner = owner or uuid.uuid4().hex[:16]
        self.pusher = pusher
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- leases

    def _lease(self, transfer_id: str) -> bool:
        now = now_millis()
        statement = (
            update(_TABLE)
            .where(_T.id == transfer_id, or_(_T.lease_until.is_(None), _T.lease_until < now))
            .values(lease_owner=self.owner, lease_until=now + LEASE_MS)
        )
        with self._core.engine.begin() as connection:
            return bool(connection.execute(statement).rowcount)

    def _release(self, transfer_id: str) -> None:
        statement = (
            update(_TABLE)
            .where(_T.id == transfer_id, _T.lease_owner == self.owner)
            .values(lease_owner=None, lease_until=None)
        )
        with self._core.engine.begin() as connection:
            connection.execute(statement)

    def _renew(self, transfer_id: str) -> None:
        statement = (
            update(_TABLE)
            .where(_T.id == transfer_id, _T.lease_owner == self.owner)
            .values(lease_until=now_millis() + LEASE_MS)
        )
        with self._core.engine.begin() as connection:
            connection.execute(statement)

    def _end_failed_push(self, transfer_id: str, reason: str) -> None:
        """A push that broke must not be retried by every poll: the transfer ends, saying why."""
        with Session(self._core.engine) as session:
            row = session.get(TransferRow, transfer_id, with_for_update=True)
            if row is not None:
                end_by_provider(session, row, Message.TERMINATION, "push", reason)

    def _interrupted_pushes(self) -> list[str]:
        now = now_millis()
        statement = (
            select(_T.id)
            .where(
                _T.role == "provider",
                _T.state == "STARTED",
                _T.transfer_type.like("%-PUSH"),
                _T.pending_message.is_(None),
                or_(_T.lease_until.is_(None), _T.lease_until < now),
            )
            .limit(BATCH)
        )
        with Session(self._core.engine) as session:
            return list(session.scalars(statement))

    def _due(self) -> list[str]:
        now = now_millis()
        statement = (
            select(_T.id)
            .where(
                or_(
                    _T.pending_message.is_not(None) & (_T.next_attempt_at <= now),
                    _T.statements_outbox.is_not(None) & _T.pending_message.is_(None),
                ),
                or_(_T.lease_until.is_(None), _T.lease_until < now),
            )
            .order_by(_T.next_attempt_at.is_(None), _T.next_attempt_at)  # messages before statements
            .limit(BATCH)
        )
        with Session(self._core.engine) as session:
            return list(session.scalars(statement))

    # ---- delivery

    def _spawn(self, job: Awaitable[None]) -> None:
        async def run() -> None:
            await job

        task = asyncio.create_task(run())
        self._tasks.add(task)  # keep a reference until it is done (the loop holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    async def kick(self, transfer_id: str) -> None:
        """Deliver this transfer's message now (run after the HTTP answer has been sent)."""
        self._spawn(self.deliver(transfer_id))

    async def push_soon(self, transfer_id: str) -> None:
        """Push a transfer's data now (the consumer resumed a push transfer)."""
        self._spawn(self._push(transfer_id))

    async def deliver(self, transfer_id: str) -> None:
        if not await run_in_threadpool(self._lease, transfer_id):
            return
        push = False
        try:
            push = await self._deliver_leased(transfer_id)
            # The statements the new state queued (provider: STARTED, COMPLETED), for countersigning.
            await send_statements(self._core, transfer_id)
        except Exception:
            log.exception("transfer delivery failed", transfer=transfer_id)
        finally:
            await run_in_threadpool(self._release, transfer_id)
            outbox.records.announce(transfer_id)  # a handler waiting for this outcome (``settle``) looks now
        if push and self.pusher is not None:
            self._spawn(self._push(transfer_id))

    async def _push(self, transfer_id: str) -> None:
        """Run the pusher under the row's lease (renewed while it runs), then send what it queued."""
        if self.pusher is None or not await run_in_threadpool(self._lease, transfer_id):
            return  # no data plane here, or another replica (or task) is pushing it

        async def keep_lease() -> None:
            while True:
                await asyncio.sleep(LEASE_MS / 3000)
                await run_in_threadpool(self._renew, transfer_id)

        renewing = asyncio.create_task(keep_lease())
        try:
            await self.pusher(transfer_id)
        except Exception as exc:
            log.exception("push failed unexpectedly", transfer=transfer_id)
            await run_in_threadpool(self._end_failed_push, transfer_id, f"push failed: {type(exc).__name__}")
        finally:
            renewing.cancel()
            await run_in_threadpool(self._release, transfer_id)
            outbox.records.announce(transfer_id)
        await self.kick(transfer_id)  # the completion or termination the push queued

    def _load(self, transfer_id: str) -> tuple[str, str] | None:
        with Session(self._core.engine) as session:
            row = session.get(TransferRow, transfer_id)
            if row is None or row.pending_message is None:
                return None
            return row.pending_message, row.counter_party_did

    async def _deliver_leased(self, transfer_id: str) -> bool:
        loaded = await run_in_threadpool(self._load, transfer_id)
        if loaded is None:
            return False
        sent, audience = loaded
        pending = Pending.from_json(sent)
        error, final, answer = await self._send(audience, pending)
        return await run_in_threadpool(self._record, transfer_id, sent, pending, error, final, answer)

    def _record(
        self,
        transfer_id: str,
        sent: str,
        pending: Pending,
        error: str | None,
        final: bool,
        answer: dict[str, Any] | None,
    ) -> bool:
        """Let the state machine move, or schedule the retry, or give up; True when a push is due."""
        with Session(self._core.engine) as session:
            row = session.get(TransferRow, transfer_id, with_for_update=True)
            if row is None or row.pending_message != sent:
                return False
            if error is None:
                delivered(session, row, pending, answer)
                log.info(
                    "transfer message delivered",
                    transfer=row.id,
                    message=pending.message.value,
                    state=row.state,
                )
                return needs_push(row, pending)
            row.attempts += 1
            if final or row.attempts >= MAX_ATTEMPTS:
                why = error if final else f"{error} (gave up after {row.attempts} attempts)"
                reason = f"could not deliver {pending.message.value} to {row.counter_party_did}: {why}"
                undeliverable(session, row, reason)
                log.warning("transfer terminated", transfer=row.id, reason=reason)
                return False
            row.next_attempt_at = now_millis() + backoff_ms(row.attempts)
            row.error_detail = f"retrying {pending.message.value}: {error}"
            session.add(row)
            session.commit()
            log.info("transfer message will be retried", transfer=row.id, attempts=row.attempts, error=error)
            return False

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
        final = 400 <= response.status_code < 500 and response.status_code not in (408, 429)
        return f"HTTP {response.status_code} {response.text[:500]}", final, None

    # ---- the loop

    async def run(self) -> None:
        """Poll for due messages until cancelled."""

        async def step() -> None:
            for transfer_id in await run_in_threadpool(self._due):
                await self.deliver(transfer_id)
            if self.pusher is not None:
                for transfer_id in await run_in_threadpool(self._interrupted_pushes):
                    self._spawn(self._push(transfer_id))

        failures = PollFailures(log, "transfer worker poll failed", POLL_SECONDS)
        await poll_forever(step, failures, self._wake)
