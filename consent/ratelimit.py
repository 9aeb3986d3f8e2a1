"""A token bucket per caller: a flood of requests gets 429 instead of the service's attention."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    def __init__(self, rate: float, burst: int, *, max_callers: int = 10_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_callers = max_callers
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill)
        self._lock = threading.Lock()

    def acquire(self, caller: str) -> float:
        """0 when the request may go ahead; otherwise the seconds until it may (Retry-After)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens >= 1:
                if len(self._buckets) >= self._max_callers and caller not in self._buckets:
                    self._buckets.clear()  # callers are authenticated members: a handful in practice
                self._buckets[caller] = (tokens - 1, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1 - tokens) / self._rate
