"""Limits that need state: the event rate per connection, and sessions by state.

Sizes and counts are checked where they are read (the WebSocket reader, the Socket.IO
decoder, the session); the rate needs a clock, so it lives here, on trio's clock so
tests under ``MockClock`` are exact.
"""

from __future__ import annotations

import trio

__all__ = ["Admission", "TokenBucket", "client_address"]


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


def client_address(remote: str) -> str:
    """The address part of a ``host:port`` remote (what per-address limits count by)."""
    host, sep, port = remote.rpartition(":")
    return host if sep and port.isdigit() else remote


class Admission:
    """Sessions by state, for the limits on new ones (one per endpoint).

    A session is *unauthenticated* from its Engine.IO handshake until a Socket.IO
    CONNECT succeeds (and again after a DISCONNECT of its namespace), *connected* in
    between. Unauthenticated sessions are bounded in all (``max_unauthenticated``) and
    per client address (``max_per_address``) and never take one of the
    ``max_connections`` slots, so sockets that never authenticate cannot lock out
    clients that do. A CONNECT takes a slot before the application authenticates it
    (so concurrent CONNECTs cannot pass the limit) and gives it back if refused.
    """

    __slots__ = ("by_address", "connected", "max_connections", "max_per_address",
                 "max_unauthenticated", "unauthenticated")

    def __init__(self, max_connections: int, max_unauthenticated: int,
                 max_per_address: int) -> None:
        self.max_connections = max_connections
        self.max_unauthenticated = max_unauthenticated
        self.max_per_address = max_per_address
        self.connected = 0
        self.unauthenticated = 0
        self.by_address: dict[str, int] = {}

    def refusal(self, address: str) -> str | None:
        """Why a new session from ``address`` must be refused now, or None."""
        if self.connected >= self.max_connections:
            return "server full (max_connections); try again later"
        if self.unauthenticated >= self.max_unauthenticated:
            return ("too many connections waiting to authenticate (max_unauthenticated); "
                    "try again later")
        if self.by_address.get(address, 0) >= self.max_per_address:
            return ("too many connections from this address waiting to authenticate "
                    "(max_unauthenticated_per_address); try again later")
        return None

    def enter_unauthenticated(self, address: str) -> None:
        """Count one more unauthenticated session from ``address``."""
        self.unauthenticated += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1

    def leave_unauthenticated(self, address: str) -> None:
        """Count one unauthenticated session from ``address`` less."""
        self.unauthenticated -= 1
        left = self.by_address.get(address, 0) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)

    def take_connection(self) -> bool:
        """Take a connection slot; False when all ``max_connections`` are taken."""
        if self.connected >= self.max_connections:
            return False
        self.connected += 1
        return True

    def release_connection(self) -> None:
        """Give a connection slot back."""
        self.connected -= 1
