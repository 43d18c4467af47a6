"""The router's table: which path is served by what.

- ``/socket.io/``: Socket.IO over long-polling and WebSocket
  (:class:`~collabtrio.transport.endpoint.EngineEndpoint`).
- ``/yjs/<room>``: y-websocket (:class:`~collabtrio.app.yws.YWebsocketEndpoint`).
- ``/healthz``: 200 when storage answers, 503 with the reason when it does not.
- ``/readyz``: 200 while the server is serving and storage answers; 503 while it
  starts or drains (after ``Server.shutdown()``), or when storage does not answer.
- ``/metrics``: Prometheus metrics (:mod:`collabtrio.observability.prometheus`), when
  metrics are on.
- ``/api/...``: the HTTP API for back-end services (:mod:`.api`), behind API keys.
- anything else: 404 (the front door's default).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..app.connect import SocketIOApp
from ..app.context import AppContext
from ..app.service import STORAGE_PING_TIMEOUT_S, BackendService
from ..app.yws import YJS_PATH, YWebsocketEndpoint
from ..observability.prometheus import METRICS_PATH, MetricsEndpoint
from ..transport.endpoint import SOCKETIO_PATH, EngineEndpoint
from ..transport.frontdoor import HttpRequest, HttpResponse, Router
from .api import API_PREFIX, ApiHandler
from .auth import ApiKeys

__all__ = ["build_router"]


def build_router(ctx: AppContext, *, service: BackendService | None = None,
                 keys: ApiKeys | None = None, phase: Callable[[], str] | None = None,
                 metrics: MetricsEndpoint | None = None) -> Router:
    """The routes of one server; ``service`` serves the HTTP API (a fresh one by
    default) and ``keys`` guards it (none by default: the API answers 401); ``phase``
    gives the server's phase for ``/readyz`` (always ``serving`` by default);
    ``metrics`` serves ``/metrics`` (no such route without it)."""
    router = Router()
    engine = EngineEndpoint(SocketIOApp(ctx))

    async def healthz(request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(404, b"not found\n")
        try:
            await ctx.store.ping()
        except Exception as exc:
            return HttpResponse.json(503, {"status": "unavailable", "storage": str(exc)})
        return HttpResponse.json(200, {"status": "ok"})

    async def readyz(request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(404, b"not found\n")
        now = phase() if phase is not None else "serving"
        if now != "serving":
            # a load balancer stops sending traffic here before the node goes away
            return HttpResponse.json(503, {"status": now})
        try:
            with trio.fail_after(STORAGE_PING_TIMEOUT_S):
                await ctx.store.ping()
        except trio.TooSlowError:
            return HttpResponse.json(503, {"status": "unavailable",
                                           "storage": "storage did not answer in time"})
        except Exception as exc:
            return HttpResponse.json(503, {"status": "unavailable", "storage": str(exc)})
        return HttpResponse.json(200, {"status": "ready"})

    router.websocket(SOCKETIO_PATH, engine.websocket)
    router.websocket(YJS_PATH, YWebsocketEndpoint(ctx, engine.admission).websocket, prefix=True)
    router.http(SOCKETIO_PATH, engine.http)
    router.http("/healthz", healthz)
    router.http("/readyz", readyz)
    if metrics is not None:
        router.http(METRICS_PATH, metrics.handle)
    api = ApiHandler(service or BackendService(ctx), keys or ApiKeys())
    router.http(API_PREFIX, api.handle, prefix=True)
    return router
