"""Keeps the leaf-hash index (``transfer_log_leaf_hash``) a few seconds behind the log.

Appends do not write it (see ``store.index_leaf_hashes``); a lookup by leaf hash catches it up
first, so it is always complete, but a long backlog would make that lookup slow (a few seconds
per million entries). This loop catches up every few seconds, off the request path.
"""

from __future__ import annotations

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from connector.translog import store
from runtime.logging import get_logger
from runtime.polling import PollFailures, poll_forever

log = get_logger("tessera.translog.indexer")
INTERVAL_SECONDS = 5.0


class LeafHashIndexer:
    def __init__(self, engine: Engine, interval_seconds: float = INTERVAL_SECONDS) -> None:
        self.engine = engine
        self.interval_seconds = interval_seconds

    async def run(self) -> None:
        """Catch the leaf-hash index up every ``interval_seconds`` until cancelled."""

        async def step() -> None:
            await run_in_threadpool(store.index_leaf_hashes, self.engine)

        failures = PollFailures(log, "leaf-hash index catch-up failed", self.interval_seconds, max_wait=60.0)
        await poll_forever(step, failures)
