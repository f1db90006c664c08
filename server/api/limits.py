"""Rate limits: a token bucket per admin API key (contract §6: 429 with ``Retry-After``)."""

from __future__ import annotations

import math
import time


class KeyedRateLimit:
    """``rate`` requests a second per key, with bursts up to ``burst``.

    One small entry per key that has been used: the keys are the configured admin keys, a
    short, fixed list (a request with any other key is refused before it gets here).
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def wait(self, key: str) -> float:
        """Take one request for ``key``: 0 if it may go now, else the seconds until it may."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
