"""The ``/socket.io/`` endpoint: which requests become sessions, and serving one.

Today a session is a WebSocket (``EIO=4&transport=websocket``, no ``sid``); the
checks here are the ones Engine.IO's reference server makes before a handshake
(protocol version, transport, capacity). Long-polling will add its requests here.
"""

from __future__ import annotations

import json
import logging

import trio

from .frontdoor import HttpRequest, first, send_error
from .outbox import Outbox
from .session import Application, SocketIOSession
from .websocket import HandshakeError, ServerWebSocket

log = logging.getLogger(__name__)

__all__ = ["SOCKETIO_PATH", "check_upgrade", "serve_websocket"]

SOCKETIO_PATH = "/socket.io/"
"""Where Socket.IO clients connect (their default ``path``)."""


def check_upgrade(app: Application, request: HttpRequest) -> tuple[int, str] | None:
    """Why a WebSocket upgrade to ``/socket.io/`` must be refused (status, message), if so."""
    if first(request.query, "EIO") != "4":
        return 400, "unsupported Engine.IO version (EIO=4 required)"
    if first(request.query, "transport") != "websocket" or first(request.query, "sid"):
        return 400, "only the websocket transport is supported"
    if len(app.sessions) >= app.config.max_connections:
        return 503, "server full"
    return None


async def serve_websocket(
    app: Application, stream: trio.abc.Stream, request: HttpRequest, raw: bytes
) -> None:
    """Serve one Socket.IO WebSocket until it ends (the router's ``/socket.io/`` handler).

    Resource handling: the session's writer task runs beside it; when the session
    ends, the writer gets a moment to flush the close frame. Error handling: a bad
    handshake gets an HTTP error; an exception in the session is logged and ends this
    session only.
    """
    cfg = app.config
    ws = ServerWebSocket(stream, Outbox(cfg.outbox_max_bytes), max_message_size=cfg.max_payload)
    try:
        ws.start_handshake(raw)
        del raw  # held by this frame for the whole session otherwise
    except HandshakeError as exc:
        await send_error(stream, 400, f"bad WebSocket handshake: {exc}")
        return
    problem = check_upgrade(app, request)
    if problem is not None:
        status, message = problem
        await ws.reject(status, json.dumps({"code": 3, "message": message}).encode())
        return
    await ws.accept()
    session = SocketIOSession(app, ws, headers=request.headers, query=request.query,
                              remote=request.remote)
    app.sessions.add(session)
    writer_done = trio.Event()

    async def writer() -> None:
        try:
            await ws.outbox.run_writer(stream)
        finally:
            writer_done.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            try:
                await session.run()
            finally:
                app.sessions.discard(session)
                # let the writer flush the last frames (close frame included)
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await writer_done.wait()
                nursery.cancel_scope.cancel()
    except Exception:
        log.exception("WebSocket session failed")
