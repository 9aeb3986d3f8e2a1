"""A sliding-window rate limit per key (the client's IP address for sign-in attempts)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

MAX_TRACKED_KEYS = 10_000


class SlidingWindowLimiter:
    """At most ``limit`` events per ``window`` seconds for each key.

    Memory stays bounded: keys whose events have all left the window are
    dropped, and past ``MAX_TRACKED_KEYS`` the stalest keys go first.
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def attempt(self, key: str) -> float | None:
        """Record an attempt; None when it is allowed, else the seconds until one will be."""
        now = self._clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return max(0.0, events[0] + self.window - now)
            events.append(now)
            if len(self._events) > MAX_TRACKED_KEYS:
                self._prune(now)
            return None

    def _prune(self, now: float) -> None:
        for key in [k for k, e in self._events.items() if not e or e[-1] <= now - self.window]:
            del self._events[key]
        while len(self._events) > MAX_TRACKED_KEYS:
            stalest = min(self._events, key=lambda k: self._events[k][-1])
            del self._events[stalest]
