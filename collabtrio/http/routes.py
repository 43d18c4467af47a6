"""The router's table: which path is served by what.

- ``/socket.io/``: Socket.IO over long-polling and WebSocket
  (:class:`~collabtrio.transport.endpoint.EngineEndpoint`).
- ``/yjs/<room>``: y-websocket (:class:`~collabtrio.app.yws.YWebsocketEndpoint`).
- ``/healthz``: 200 when storage answers, 503 with the reason when it does not.
- ``/api/...``: the HTTP API for back-end services (:mod:`.api`), behind API keys.
- anything else: 404 (the front door's default).
"""

from __future__ import annotations

from ..app.connect import SocketIOApp
from ..app.context import AppContext
from ..app.service import BackendService
from ..app.yws import YJS_PATH, YWebsocketEndpoint
from ..transport.endpoint import SOCKETIO_PATH, EngineEndpoint
from ..transport.frontdoor import HttpRequest, HttpResponse, Router
from .api import API_PREFIX, ApiHandler
from .auth import ApiKeys

__all__ = ["build_router"]


def build_router(ctx: AppContext, *, service: BackendService | None = None,
                 keys: ApiKeys | None = None) -> Router:
    """The routes of one server; ``service`` serves the HTTP API (a fresh one by
    default) and ``keys`` guards it (none by default: the API answers 401)."""
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

    router.websocket(SOCKETIO_PATH, engine.websocket)
    router.websocket(YJS_PATH, YWebsocketEndpoint(ctx, engine.admission).websocket, prefix=True)
    router.http(SOCKETIO_PATH, engine.http)
    router.http("/healthz", healthz)
    api = ApiHandler(service or BackendService(ctx), keys or ApiKeys())
    router.http(API_PREFIX, api.handle, prefix=True)
    return router
