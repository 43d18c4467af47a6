"""Per-connection limits that need state: the event rate.

Sizes and counts are checked where they are read (the WebSocket reader, the Socket.IO
decoder, the session); the rate needs a clock, so it lives here, on trio's clock so
tests under ``MockClock`` are exact.
"""

from __future__ import annotations

import trio

__all__ = ["TokenBucket"]


class TokenBucket:
    """Per-connection rate limit: ``rate`` tokens per second, at most ``burst``."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = trio.current_time()

    def take(self) -> bool:
        """Spend one token; ``False`` when none is left."""
        now = trio.current_time()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
