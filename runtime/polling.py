"""How background polling loops live through failures.

A loop that polls the database every half second must not, while the database
is down, log a traceback twice a second (rendering one can take longer than
the poll interval, and it starves the event loop that answers ``/health``).
``PollFailures`` logs the first failure of a streak (a database that cannot be
reached in one line, anything else with its traceback), counts the rest, says
when the loop recovers, and doubles the wait between polls while failures last.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import OperationalError

MAX_WAIT_SECONDS = 10.0


class PollFailures:
    def __init__(self, log: Any, event: str, base_wait: float, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self._log = log
        self._event = event
        self._base_wait = base_wait
        self._max_wait = max(max_wait, base_wait)
        self.streak = 0

    @property
    def wait(self) -> float:
        """Seconds until the next poll: the base interval, doubled for each failure in a row."""
        if self.streak == 0:
            return self._base_wait
        return float(min(self._max_wait, self._base_wait * 2 ** min(self.streak, 16)))

    def failed(self, exc: BaseException) -> None:
        """Call from the loop's ``except``: the first failure of a streak is logged, the rest counted."""
        self.streak += 1
        if self.streak > 1:
            return
        if isinstance(exc, OperationalError):  # the database is down or unreachable: no traceback helps
            self._log.warning(self._event, error=type(exc.orig or exc).__name__, database="unreachable")
        else:
            self._log.exception(self._event)

    def succeeded(self) -> None:
        if self.streak:
            self._log.info(f"{self._event}: recovered", failed_polls=self.streak)
        self.streak = 0


async def poll_forever(
    step: Callable[[], Awaitable[None]], failures: PollFailures, wake: asyncio.Event | None = None
) -> None:
    """Run ``step`` until cancelled: again after ``failures.wait`` seconds, or sooner when ``wake`` is set.

    A failing step is counted by ``failures`` (which also lengthens the wait) and never ends the loop.
    """
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.failed(exc)
        else:
            failures.succeeded()
        if wake is None:
            await asyncio.sleep(failures.wait)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=failures.wait)
        wake.clear()
