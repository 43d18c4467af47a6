"""``GET /metrics``: the server's counters and live state in Prometheus' text format.

Theory of operation: each :class:`~collabtrio.server.Server` has its own
``CollectorRegistry`` (:func:`build_registry`), so several servers in one process
(tests, an embedding program) never share a counter. On it sit prometheus_client's
``ProcessCollector`` and ``PlatformCollector`` and a :class:`ServerCollector`, which
builds every family when scraped: counters and histograms from the server's
:class:`~collabtrio.observability.sink.Metrics`, and gauges read from the live state
(connections by transport, open rooms, their members, Yjs document sizes, the
storage's state). Nothing Prometheus-shaped is updated while the server serves, so a
scrape costs one pass over the connections and rooms and the hot path costs only the
sink's additions.

:class:`MetricsEndpoint` answers the route: no key by default, or, with
``--metrics-api-key``, ``Authorization: Bearer <key>`` checked as API keys are
(:class:`~collabtrio.http.auth.ApiKeys`: digests compared in constant time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from ..app.context import AppContext
from ..app.service import BackendService
from ..app.yws import YWebsocketPeer
from ..errors import CollabError
from ..http.auth import ApiKeys, parse_key
from ..transport.frontdoor import HttpRequest, HttpResponse
from .sink import Histogram, distribution

__all__ = ["METRICS_PATH", "ROOM_MEMBER_BUCKETS", "YJS_BYTES_BUCKETS", "MetricsEndpoint",
           "ServerCollector", "build_registry", "metrics_keys"]

METRICS_PATH = "/metrics"
PREFIX = "collabtrio_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text exposition format every Prometheus server reads (what generate_latest
writes)."""
ROOM_MEMBER_BUCKETS = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
YJS_BYTES_BUCKETS = (1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
                     16777216.0)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _labelled(name: str, doc: str, label: str, values: dict[str, int],
              kind: type[CounterMetricFamily] | type[GaugeMetricFamily] = CounterMetricFamily
              ) -> Metric:
    family = kind(PREFIX + name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(PREFIX + name, doc, buckets=hist.cumulative(),
                                 sum_value=hist.sum)


def _gauge_histogram(name: str, doc: str, hist: Histogram) -> GaugeHistogramMetricFamily:
    return GaugeHistogramMetricFamily(PREFIX + name, doc, buckets=hist.cumulative(),
                                      gsum_value=hist.sum)


class ServerCollector(Collector):
    """Every ``collabtrio_*`` family of one server, built at scrape time (see the
    module docstring). ``phase`` gives the server's phase; :attr:`storage_up` is set by
    the endpoint from a ping just before each scrape (None: not checked yet)."""

    def __init__(self, ctx: AppContext, service: BackendService,
                 phase: Callable[[], str]) -> None:
        self.ctx = ctx
        self.service = service
        self.phase = phase
        self.storage_up: bool | None = None

    def describe(self) -> list[Metric]:
        """Nothing up front: the families are built when scraped."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The families, from the counters and one pass over connections and rooms."""
        ctx = self.ctx
        m = ctx.metrics
        registry = ctx.registry
        connections = {"websocket": 0, "polling": 0, "y-websocket": 0}
        handshaking = 0
        dropped = m.volatile_dropped
        for session in ctx.sessions:
            dropped += session.outbox.dropped_volatile
            if not session.connected:
                handshaking += 1
            else:
                connections[session.transport] += 1
        sizes: list[int] = []
        yjs_sizes: list[int] = []
        for room in registry.rooms.values():
            members = room.members
            sizes.append(len(members))
            for conn in members:
                if isinstance(conn, YWebsocketPeer):
                    connections["y-websocket"] += 1
                    dropped += conn.ws.outbox.dropped_volatile
            yjs: Any = room.component("yjs")
            if yjs is not None and yjs.doc is not None:
                yjs_sizes.append(yjs.size)

        yield GaugeMetricFamily(PREFIX + "up", "1 while the server serves (0 while it starts "
                                "or drains: /readyz answers 503)",
                                value=1 if self.phase() == "serving" else 0)
        info = GaugeMetricFamily(PREFIX + "build_info", "The running version", labels=["version"])
        info.add_metric([self.service.version], 1)
        yield info
        yield _labelled("connections", "Connected clients by transport (Socket.IO sessions "
                        "on websocket or polling; y-websocket peers)", "transport",
                        connections, GaugeMetricFamily)
        yield GaugeMetricFamily(PREFIX + "connections_handshaking",
                                "Sessions that have not completed a Socket.IO CONNECT",
                                value=handshaking)
        yield GaugeMetricFamily(PREFIX + "users", "Distinct users connected over Socket.IO",
                                value=len(registry.users))
        yield _labelled("connects", "Connections accepted, by transport at connect time",
                        "transport", m.connects)
        yield _labelled("disconnects", "Connections ended, by reason", "reason", m.disconnects)
        yield GaugeMetricFamily(PREFIX + "rooms_open", "Open rooms", value=len(registry.rooms))
        yield _counter("rooms_opened", "Rooms opened since start", registry.opened_total)
        yield _gauge_histogram("room_members", "Open rooms by number of members (now)",
                               distribution(sizes, ROOM_MEMBER_BUCKETS))
        yield _labelled("events_received", "Events received from connected clients, by "
                        "event name (other: not a protocol event)", "event", m.events)
        yield _labelled("events_refused", "Events and commands answered with an error, by "
                        "error code", "code", m.refused)
        yield _counter("deliveries", "Messages of room broadcasts and publishes handed to "
                       "connections", m.deliveries)
        yield _counter("volatile_dropped", "Volatile messages (cursor, selection, typing, "
                       "move, awareness) dropped for slow clients", dropped)
        yield _counter("slow_consumer_disconnects", "Connections closed because their "
                       "outbound queue overflowed", m.slow_consumers)
        yield _counter("rate_limited", "Events refused by the per-connection rate limit",
                       m.rate_limited)
        yield _counter("ops_acknowledged", "Document operations, field writes and chat "
                       "messages confirmed after their commit", m.ops_acked)
        yield _histogram("ack_latency_seconds", "From the room taking an op or chat to its "
                         "acknowledgement (batch, commit, answers)", m.ack_latency)
        yield _counter("field_flushes", "Field-write flushes (each one transaction for a "
                       "room's pending fields)", m.field_flushes)
        yield _counter("yjs_updates_applied", "Yjs updates applied to rooms' documents",
                       m.yjs_updates)
        yield _gauge_histogram("yjs_document_bytes", "Loaded Yjs documents by stored size "
                               "(snapshot plus update log)",
                               distribution(yjs_sizes, YJS_BYTES_BUCKETS))
        yield _counter("storage_transactions", "Transactions of the group-commit writer",
                       ctx.commits.transactions)
        yield _counter("storage_room_commits", "Room batches written by those transactions",
                       ctx.commits.requests)
        yield _histogram("commit_duration_seconds", "Duration of one storage transaction",
                         m.commit_seconds)
        yield _histogram("commit_operations", "Events and Yjs updates per storage "
                         "transaction", m.commit_ops)
        yield _labelled("storage_errors", "Failed storage transactions and room loads, by "
                        "kind", "kind", m.storage_errors)
        if self.storage_up is not None:
            yield GaugeMetricFamily(PREFIX + "storage_up", "1 if the store answered a ping "
                                    "at this scrape, else 0", value=int(self.storage_up))
        yield _counter("http_api_requests", "HTTP API requests answered", m.http_requests)


def build_registry(collector: ServerCollector) -> CollectorRegistry:
    """A registry of its own for one server: the process, the platform and
    ``collector``."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(collector)
    return registry


def metrics_keys(secret: str | None) -> ApiKeys | None:
    """The key ``/metrics`` requires (``--metrics-api-key``), or None; a bad secret
    raises :class:`ValueError` without showing it."""
    if not secret:
        return None
    try:
        return ApiKeys([parse_key(f"metrics:{secret}")])
    except ValueError:
        raise ValueError("bad metrics_api_key: the key must be 16 or more printable "
                         "characters without ':', ',' or spaces") from None


class MetricsEndpoint:
    """The ``/metrics`` route of one server (see the module docstring)."""

    def __init__(self, collector: ServerCollector, registry: CollectorRegistry,
                 keys: ApiKeys | None = None) -> None:
        self.collector = collector
        self.registry = registry
        self.keys = keys

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one scrape (``GET`` or ``HEAD``)."""
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
        if self.keys is not None:
            try:
                self.keys.authenticate(request.headers.get("authorization"))
            except CollabError as err:
                return HttpResponse(401, f"{err.message}\n".encode(),
                                    headers=(("www-authenticate", 'Bearer realm="metrics"'),))
        state = await self.collector.service.storage_state()
        self.collector.storage_up = bool(state.get("reachable"))
        return HttpResponse(200, generate_latest(self.registry), CONTENT_TYPE)
