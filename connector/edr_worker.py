"""Starting the pull transfer of each EDR negotiation once it is FINALIZED.

The DSP route that records a FINALIZED event kicks this worker (through
``app.state.on_negotiation_finalized``) when ``wants`` says the negotiation is
an EDR negotiation (asked in the route's own session, no hand-off of its own),
so the transfer request leaves at once; a poll every half second catches the
rest (a kick lost in a restart, a negotiation that ended TERMINATED, another
replica's negotiations). The state lives in ``edr_negotiation`` rows, so a
restart loses nothing.
"""

from __future__ import annotations

import asyncio

from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from connector.edr_negotiations import advance, awaits_transfer, negotiations_to_advance
from connector.transfer_worker import TransferWorker
from runtime.logging import get_logger
from runtime.polling import PollFailures, poll_forever
from runtime.service import ServiceCore

POLL_SECONDS = 0.5

log = get_logger("tessera.edr")


class EdrWorker:
    def __init__(self, core: ServiceCore, transfers: TransferWorker) -> None:
        self._core = core
        self._transfers = transfers
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def wants(session: Session, negotiation_id: str) -> bool:
        """Should a negotiation that has just become FINALIZED be kicked here? Asked in the caller's
        session, so that negotiations that are not EDR ones cost no hand-off at all."""
        return awaits_transfer(session, negotiation_id)

    async def kick(self, negotiation_id: str) -> None:
        """A negotiation just finished: start its EDR transfer now, if it is an EDR negotiation."""
        task = asyncio.create_task(self.advance(negotiation_id))
        self._tasks.add(task)  # keep a reference until it is done (the loop holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    def _advance(self, negotiation_id: str) -> str | None:
        with Session(self._core.engine) as session:
            return advance(session, self._core, negotiation_id)

    async def advance(self, negotiation_id: str) -> None:
        try:
            transfer_id = await run_in_threadpool(self._advance, negotiation_id)
        except Exception:  # never let one negotiation stop the worker; the poll tries again
            log.exception("EDR transfer start failed", negotiation=negotiation_id)
            return
        if transfer_id is not None:
            log.info("EDR transfer requested", negotiation=negotiation_id, transfer=transfer_id)
            await self._transfers.kick(transfer_id)

    def _due(self) -> list[str]:
        with Session(self._core.engine) as session:
            return negotiations_to_advance(session)

    async def run(self) -> None:
        """Poll for finished EDR negotiations until cancelled."""

        async def step() -> None:
            for negotiation_id in await run_in_threadpool(self._due):
                await self.advance(negotiation_id)

        failures = PollFailures(log, "EDR worker poll failed", POLL_SECONDS)
        await poll_forever(step, failures, self._wake)
