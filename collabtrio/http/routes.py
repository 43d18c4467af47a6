"""The router's table: which path is served by what.

- ``/socket.io/``: Socket.IO over WebSocket
  (:func:`~collabtrio.transport.endpoint.serve_websocket`); plain HTTP there is
  long-polling, which this version answers with 400 and a hint.
- ``/healthz``: 200 when storage answers, 503 with the reason when it does not.
- anything else: 404 (the front door's default).
"""

from __future__ import annotations

import trio

from ..app.connect import SocketIOEndpoint
from ..app.context import AppContext
from ..transport.endpoint import SOCKETIO_PATH, serve_websocket
from ..transport.frontdoor import HttpRequest, HttpResponse, Router

__all__ = ["build_router"]


def build_router(ctx: AppContext) -> Router:
    """The routes of one server."""
    router = Router()
    endpoint = SocketIOEndpoint(ctx)

    async def socketio_websocket(stream: trio.abc.Stream, request: HttpRequest,
                                 raw: bytes) -> None:
        await serve_websocket(endpoint, stream, request, raw)

    async def socketio_polling(request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(400, {
            "code": 3, "message": "HTTP long-polling is not supported by this version; "
            "connect with transports: ['websocket']"})

    async def healthz(request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(404, b"not found\n")
        try:
            await ctx.store.ping()
        except Exception as exc:
            return HttpResponse.json(503, {"status": "unavailable", "storage": str(exc)})
        return HttpResponse.json(200, {"status": "ok"})

    router.websocket(SOCKETIO_PATH, socketio_websocket)
    router.http(SOCKETIO_PATH, socketio_polling)
    router.http("/healthz", healthz)
    return router
