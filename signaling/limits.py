"""Per-connection rate and abuse accounting (pure, clock passed in)."""

from __future__ import annotations

from collections import deque


class TokenBucket:
    """Allows ``rate`` events a second with bursts of up to ``rate``."""

    def __init__(self, rate: float, now: float) -> None:
        self._rate = rate
        self._tokens = rate
        self._updated = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._rate, self._tokens + elapsed * self._rate)
        self._updated = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class StrikeWindow:
    """Counts protocol breaches inside a sliding time window."""

    def __init__(self, limit: int, window_seconds: float) -> None:
        self._limit = limit
        self._window = window_seconds
        self._times: deque[float] = deque()

    def strike(self, now: float) -> bool:
        """Record one breach; True once the limit is exceeded."""
        self._times.append(now)
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()
        return len(self._times) > self._limit
