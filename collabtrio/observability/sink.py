"""The counters the server keeps for its metrics: cheap to add to, read at scrape time.

Theory of operation: one :class:`Metrics` per server, handed down to the layers that
count (the transport sessions, the rooms, the group-commit writer, the application)
as a constructor argument or through the objects they already hold, so none of them
imports the Prometheus side (:mod:`.prometheus`), which reads these counters when
``/metrics`` is scraped. Counting is a method call that adds to a plain ``int``, a
``dict`` entry or a fixed-bucket :class:`Histogram`: no lock (everything runs in the
trio thread, the storage threads never count) and no Prometheus object on the hot
path. Where work is done in batches it is counted per batch: a room broadcast adds its
number of recipients once, the writer observes once per transaction.

Labels are bounded: transports, disconnect reasons, event names and error codes come
from fixed sets (:data:`TRANSPORTS`, :data:`DISCONNECT_REASONS`, the protocol's
events, :class:`~collabtrio.errors.ErrorCode`), anything else counts as ``other``;
never a room id or a user id.

:class:`NullMetrics` (``--no-metrics``) has the same methods and counts nothing.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from ..errors import ErrorCode
from ..protocol.messages import EVENT_MODELS

__all__ = ["ACK_LATENCY_BUCKETS", "COMMIT_OPS_BUCKETS", "COMMIT_SECONDS_BUCKETS",
           "DISCONNECT_REASONS", "TRANSPORTS", "Histogram", "Metrics", "NullMetrics",
           "disconnect_reason"]

TRANSPORTS = ("websocket", "polling", "y-websocket")
"""The transports connections are counted by."""

DISCONNECT_REASONS = ("client", "ping-timeout", "slow-consumer", "protocol-error",
                      "token-expired", "shutdown", "kicked", "rate-limited", "other")
"""Why connections end, as counted (see :func:`disconnect_reason`)."""

ACK_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5, 5.0, 10.0)
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                          0.5, 1.0, 2.5, 5.0)
COMMIT_OPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)

_EXACT_REASONS = {
    "client close": "client",
    "client disconnect": "client",
    "ping timeout": "ping-timeout",
    "slow-consumer": "slow-consumer",
    "token expired": "token-expired",
    "server shutdown": "shutdown",
    "rate limited": "rate-limited",
    "bye": "client",
}
_PREFIX_REASONS = (("transport close", "client"), ("protocol error", "protocol-error"),
                   ("malformed", "protocol-error"), ("y-websocket messages", "protocol-error"),
                   ("kicked", "kicked"))


def disconnect_reason(text: str | None) -> str:
    """The counted reason (one of :data:`DISCONNECT_REASONS`) of a session's close
    reason, such as ``ping timeout`` or ``transport close (1001)``."""
    if text is None:
        return "other"
    found = _EXACT_REASONS.get(text)
    if found is not None:
        return found
    for prefix, reason in _PREFIX_REASONS:
        if text.startswith(prefix):
            return reason
    return "other"


class Histogram:
    """Observations counted in fixed buckets (upper bounds, ``le``), with their sum.

    ``counts[i]`` holds the observations in ``(bounds[i-1], bounds[i]]``, the last
    entry those above every bound (not cumulative: :meth:`cumulative` is).
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, observations <= le), ..., ("+Inf", count)]``, as Prometheus wants."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            out.append((_le(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) and bound >= 1 else repr(bound)


def distribution(values: Iterable[float], bounds: Sequence[float]) -> Histogram:
    """A :class:`Histogram` of ``values`` (for distributions read at scrape time)."""
    hist = Histogram(bounds)
    for value in values:
        hist.observe(value)
    return hist


class Metrics:
    """The server's counters (see the module docstring). Attributes are read by the
    collector; the methods are what the layers call."""

    enabled = True

    def __init__(self) -> None:
        self.connects = dict.fromkeys(TRANSPORTS, 0)
        self.disconnects = dict.fromkeys(DISCONNECT_REASONS, 0)
        self.events = dict.fromkeys((*EVENT_MODELS, "other"), 0)
        self.refused = dict.fromkeys((*(str(code) for code in ErrorCode), "other"), 0)
        self.deliveries = 0
        self.volatile_dropped = 0  # of ended sessions; live ones are read at scrape time
        self.slow_consumers = 0
        self.rate_limited = 0
        self.ops_acked = 0
        self.field_flushes = 0
        self.yjs_updates = 0
        self.storage_errors = dict.fromkeys(("unavailable", "conflict", "other"), 0)
        self.http_requests = 0
        self.ack_latency = Histogram(ACK_LATENCY_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_SECONDS_BUCKETS)
        self.commit_ops = Histogram(COMMIT_OPS_BUCKETS)

    # -- connections ---------------------------------------------------------------------

    def connected(self, transport: str) -> None:
        """A connection was accepted (a Socket.IO CONNECT, a y-websocket join)."""
        if transport in self.connects:
            self.connects[transport] += 1

    def disconnected(self, reason: str | None) -> None:
        """A connection counted by :meth:`connected` ended (``reason``: its close
        reason, mapped by :func:`disconnect_reason`)."""
        self.disconnects[disconnect_reason(reason)] += 1

    def slow_consumer(self) -> None:
        """A connection was disconnected because its outbound queue overflowed."""
        self.slow_consumers += 1

    def dropped_volatile(self, n: int) -> None:
        """``n`` volatile messages were dropped for a connection that has ended."""
        self.volatile_dropped += n

    def rate_limit(self) -> None:
        """An event was refused by its connection's rate limit."""
        self.rate_limited += 1

    # -- events --------------------------------------------------------------------------

    def event(self, name: object) -> None:
        """An event arrived from a connected client."""
        events = self.events
        if name in events:
            events[name] += 1
        else:
            events["other"] += 1

    def refusal(self, code: str) -> None:
        """An event or command was answered with an error ``code``."""
        refused = self.refused
        if code in refused:
            refused[code] += 1
        else:
            refused["other"] += 1

    def delivered(self, n: int) -> None:
        """``n`` messages of one broadcast were handed to connections."""
        self.deliveries += n

    # -- documents -----------------------------------------------------------------------

    def acknowledged(self, n: int, now: float, received: Sequence[float]) -> None:
        """``n`` operations of a committed batch were acknowledged at ``now``; those
        timed were taken at the times ``received``."""
        self.ops_acked += n
        hist = self.ack_latency
        for at in received:
            hist.observe(now - at)

    def field_flush(self) -> None:
        """A room flushed its pending field writes (one transaction, many keys)."""
        self.field_flushes += 1

    def yjs_applied(self, n: int) -> None:
        """``n`` Yjs updates were applied to a room's document."""
        self.yjs_updates += n

    # -- storage -------------------------------------------------------------------------

    def committed(self, seconds: float, operations: int) -> None:
        """One transaction of the group-commit writer took ``seconds`` (failed ones
        included) and carried ``operations`` events and Yjs updates."""
        self.commit_seconds.observe(seconds)
        self.commit_ops.observe(operations)

    def storage_error(self, kind: str) -> None:
        """A storage call failed: ``unavailable``, ``conflict`` or ``other``."""
        errors = self.storage_errors
        errors[kind if kind in errors else "other"] += 1

    def http_request(self) -> None:
        """An HTTP API request was answered."""
        self.http_requests += 1


class NullMetrics(Metrics):
    """Counts nothing (``--no-metrics``): every method returns at once."""

    enabled = False

    def connected(self, transport: str) -> None:
        """Counts nothing."""

    def disconnected(self, reason: str | None) -> None:
        """Counts nothing."""

    def slow_consumer(self) -> None:
        """Counts nothing."""

    def dropped_volatile(self, n: int) -> None:
        """Counts nothing."""

    def rate_limit(self) -> None:
        """Counts nothing."""

    def event(self, name: object) -> None:
        """Counts nothing."""

    def refusal(self, code: str) -> None:
        """Counts nothing."""

    def delivered(self, n: int) -> None:
        """Counts nothing."""

    def acknowledged(self, n: int, now: float, received: Sequence[float]) -> None:
        """Counts nothing."""

    def field_flush(self) -> None:
        """Counts nothing."""

    def yjs_applied(self, n: int) -> None:
        """Counts nothing."""

    def committed(self, seconds: float, operations: int) -> None:
        """Counts nothing."""

    def storage_error(self, kind: str) -> None:
        """Counts nothing."""

    def http_request(self) -> None:
        """Counts nothing."""


NULL_METRICS = NullMetrics()
"""A shared :class:`NullMetrics` (the default of every constructor that takes one)."""
