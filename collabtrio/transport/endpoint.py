"""The ``/socket.io/`` endpoint: Engine.IO handshakes, long-polling requests, upgrades.

Requests, as the Engine.IO v4 reference server answers them:

- ``GET ?EIO=4&transport=polling``: a new long-polling session; the answer is its
  ``open`` packet (``upgrades: ["websocket"]``).
- ``GET ...&sid=<sid>``: a poll, held until the session has something to send (a
  ping is due every ``pingInterval``). A second poll while one is waiting closes the
  session (the waiting one gets the ``close`` packet, the second a 400); a poll whose
  client goes away closes the session.
- ``POST ...&sid=<sid>``: a payload of packets, answered ``ok`` once handled (bodies
  past ``maxPayload`` get 413 from the front door); a malformed payload closes the
  session (400). One ``POST`` at a time.
- ``OPTIONS``: a CORS preflight.
- a WebSocket upgrade without ``sid``: a new WebSocket session; with the ``sid`` of a
  polling session: the WebSocket that session probes and upgrades to.

Errors are HTTP 400/403/503 with Engine.IO's body ``{"code": N, "message": ...}``: 0
unknown transport, 1 unknown session, 2 bad handshake method, 3 bad request, 4
forbidden (an origin not allowed), 5 unsupported protocol version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Final

import trio

from ..protocol import engineio
from ..protocol.outgoing import Outgoing
from .cors import OriginPolicy
from .engine import EngineIOSession
from .frontdoor import (
    HttpRequest,
    HttpResponse,
    abort_stream,
    first,
    send_error,
    send_response,
)
from .limits import Admission, client_address
from .outbox import Outbox
from .polling import PollQueue
from .session import Application, SocketIOSession
from .websocket import HandshakeError, ServerWebSocket

log = logging.getLogger(__name__)

__all__ = ["SOCKETIO_PATH", "EngineEndpoint"]

SOCKETIO_PATH = "/socket.io/"
"""Where Socket.IO clients connect (their default ``path``)."""

UNKNOWN_TRANSPORT, UNKNOWN_SID, BAD_HANDSHAKE_METHOD, BAD_REQUEST, FORBIDDEN, BAD_VERSION = (
    range(6))

_MESSAGES: Final = {
    UNKNOWN_TRANSPORT: "Transport unknown",
    UNKNOWN_SID: "Session ID unknown",
    BAD_HANDSHAKE_METHOD: "Bad handshake method",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    BAD_VERSION: "Unsupported protocol version",
}
_TEXT: Final = "text/plain; charset=UTF-8"
_NOOP: Final = Outgoing.engineio(engineio.NOOP_FRAME)


class EngineError(Exception):
    """A request the endpoint refuses: HTTP ``status`` with Engine.IO ``code`` (and any
    extra response ``headers``)."""

    def __init__(self, status: int, code: int, detail: str | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(detail or _MESSAGES[code])
        self.status = status
        self.code = code
        self.headers = headers

    def body(self) -> bytes:
        """Engine.IO's error body."""
        return json.dumps({"code": self.code, "message": str(self)}).encode()


class EngineEndpoint:
    """Every Engine.IO session of one server, by ``sid`` (see the module docstring)."""

    def __init__(self, app: Application) -> None:
        self.app = app
        cfg = app.config
        self.origins = OriginPolicy(cfg.cors_origins or "")
        self.by_sid: dict[str, SocketIOSession] = {}
        self.admission = Admission(cfg.max_connections, cfg.max_unauthenticated,
                                   cfg.max_unauthenticated_per_address)

    # -- checks --------------------------------------------------------------------------

    def _check(self, request: HttpRequest, transport: str | None) -> None:
        if not self.origins.allows(request):
            raise EngineError(403, FORBIDDEN, "origin not allowed (see --cors-origins)")
        if first(request.query, "EIO") != "4":
            raise EngineError(400, BAD_VERSION,
                              "unsupported Engine.IO version (EIO=4 required)")
        if transport not in ("polling", "websocket"):
            raise EngineError(400, UNKNOWN_TRANSPORT)

    def _check_capacity(self, request: HttpRequest) -> None:
        refusal = self.admission.refusal(client_address(request.remote))
        if refusal is not None:
            # a new session is unauthenticated: it waits for a CONNECT slot among the
            # unauthenticated ones, never among the connected
            retry = max(1, round(self.app.config.connect_timeout_s))
            raise EngineError(503, BAD_REQUEST, refusal, (("retry-after", str(retry)),))

    def _session(self, request: HttpRequest, sid: str) -> SocketIOSession:
        session = self.by_sid.get(sid)
        if session is None:
            raise EngineError(400, UNKNOWN_SID)
        if session.transport != "polling" or session.poll is None:
            raise EngineError(400, BAD_REQUEST, "the session has upgraded to websocket")
        if session.close_reason is not None and (request.method != "GET"
                                                 or not len(session.poll)):
            # closed: only its last packets (the close among them) are left to fetch
            self._forget(session)
            raise EngineError(400, UNKNOWN_SID)
        return session

    def _forget(self, session: EngineIOSession) -> None:
        if self.by_sid.get(session.engine.sid) is session:
            del self.by_sid[session.engine.sid]

    def _new_session(self, request: HttpRequest,
                     carrier: ServerWebSocket | PollQueue) -> SocketIOSession:
        session = SocketIOSession(self.app, carrier, headers=request.headers,
                                  query=request.query, remote=request.remote,
                                  on_finish=self._forget, admission=self.admission)
        self.by_sid[session.engine.sid] = session
        session.start()
        return session

    # -- long-polling --------------------------------------------------------------------

    async def http(self, request: HttpRequest) -> HttpResponse | PollHold:
        """Answer one plain HTTP request to ``/socket.io/`` (the router's handler); a
        poll with nothing to send yet is a :class:`PollHold`."""
        cors = self.origins.headers(request)
        try:
            if request.method == "OPTIONS":
                if not self.origins.allows(request):
                    raise EngineError(403, FORBIDDEN, "origin not allowed (see --cors-origins)")
                return HttpResponse(204, headers=self.origins.preflight_headers(request))
            self._check(request, first(request.query, "transport"))
            if first(request.query, "transport") != "polling":
                raise EngineError(400, BAD_REQUEST, "a WebSocket request without an upgrade")
            sid = first(request.query, "sid")
            if sid is None:
                body = self._handshake(request)
            elif request.method == "GET":
                return self._poll(self._session(request, sid), cors)
            elif request.method == "POST":
                await self._post(self._session(request, sid), request.body)
                return HttpResponse(200, b"ok", "text/html", cors)
            else:
                raise EngineError(400, BAD_REQUEST, f"method {request.method} not allowed")
        except EngineError as err:
            return HttpResponse(err.status, err.body(), "application/json",
                                (*cors, *err.headers))
        return HttpResponse(200, body, _TEXT, cors)

    def _handshake(self, request: HttpRequest) -> bytes:
        if request.method != "GET":
            raise EngineError(400, BAD_HANDSHAKE_METHOD)
        self._check_capacity(request)
        cfg = self.app.config
        session = self._new_session(request, PollQueue(cfg.outbox_max_bytes))
        assert session.poll is not None
        return session.poll.payload()  # the open packet

    def _poll(self, session: SocketIOSession,
              cors: tuple[tuple[str, str], ...]) -> HttpResponse | PollHold:
        queue = session.poll
        assert queue is not None
        if queue.waiting:
            # the reference server's rule: overlapping polls are a client bug
            session.close("overlapping polls", notify=False)
            raise EngineError(400, BAD_REQUEST, "a poll is already waiting")
        if session.poll_now() and not len(queue):
            queue.push(_NOOP)  # upgrading: end this poll so the client can finish
        hold = PollHold(self, session, queue, cors)
        return hold.respond() if hold.ready() else hold

    async def _post(self, session: SocketIOSession, body: bytes) -> None:
        if session.posting:
            session.close("overlapping POST requests", notify=False)
            raise EngineError(400, BAD_REQUEST, "a POST is already being handled")
        try:
            packets = engineio.decode_payload(body.decode("utf-8"))
        except (UnicodeDecodeError, engineio.EngineIOProtocolError) as exc:
            session.close(f"protocol error: {exc}", notify=False)
            raise EngineError(400, BAD_REQUEST, f"bad payload: {exc}") from None
        session.posting = True
        try:
            await session.receive_polling(packets)
        finally:
            session.posting = False
        reason = session.close_reason
        if reason is not None and reason.startswith("protocol error"):
            raise EngineError(400, BAD_REQUEST, reason)

    # -- WebSocket -----------------------------------------------------------------------

    async def websocket(self, stream: trio.abc.Stream, request: HttpRequest, rest: bytes) -> None:
        """Serve one WebSocket to ``/socket.io/`` until it ends (the router's handler).

        Resource handling: the WebSocket's writer task runs beside it; when it ends, the
        writer gets a moment to flush the close frame. Error handling: a bad handshake
        gets an HTTP error; an exception in the session is logged and ends this session
        only.
        """
        cfg = self.app.config
        ws = ServerWebSocket(stream, Outbox(cfg.outbox_max_bytes),
                             max_message_size=cfg.max_payload)
        try:
            ws.start_handshake(request.method, request.headers, rest)
            del rest  # held by this frame for the whole session otherwise
        except HandshakeError as exc:
            await send_error(stream, exc.status, f"bad WebSocket handshake: {exc}", exc.headers)
            return
        sid = first(request.query, "sid")
        try:
            self._check(request, first(request.query, "transport"))
            if first(request.query, "transport") != "websocket":
                raise EngineError(400, BAD_REQUEST, "a polling request with an upgrade")
            upgrading = self._upgradable(sid) if sid is not None else None
            if upgrading is None and sid is None:
                self._check_capacity(request)
        except EngineError as err:
            await send_response(stream, HttpResponse(err.status, err.body(), "application/json",
                                                     err.headers))
            return
        await ws.accept()
        if sid is not None and upgrading is None:
            # the session upgraded already (or another WebSocket probes it): as the
            # reference server does, the handshake completes and the socket is closed
            ws.close(1008, "the session is not upgradable")
            try:
                with trio.move_on_after(1.0):
                    await ws.outbox.run_writer(stream)
            finally:
                if ws.outbox.torn:
                    abort_stream(stream)
            return
        try:
            async with trio.open_nursery() as nursery:
                # a writer task runs in this nursery only while frames wait
                ws.outbox.attach(stream, nursery)
                try:
                    if upgrading is not None:
                        await upgrading.run_upgrade(ws)
                    else:
                        await self._new_session(request, ws).run()
                finally:
                    # let the writer flush the last frames (close frame included);
                    # one still blocked then is cut off, and the connection aborted
                    ws.outbox.close()
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await ws.outbox.drain()
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("WebSocket session failed")
        finally:
            if ws.outbox.torn:
                # part of a frame may be on the wire: a RST, so the client cannot take
                # what it got for a complete stream
                abort_stream(stream)

    def _upgradable(self, sid: str) -> SocketIOSession | None:
        """The polling session ``sid`` names, None if it cannot upgrade (any more)."""
        session = self.by_sid.get(sid)
        if session is None:
            raise EngineError(400, UNKNOWN_SID)
        if session.poll is None or session.probing or session.close_reason is not None:
            return None
        return session


class PollHold:
    """A poll held until its session has something to send (the front door's ``Hold``).

    While it is held the queue is ``waiting``: a second poll is an overlap, a probe
    releases it with a noop, and the bound allows a burst.
    """

    __slots__ = ("cors", "endpoint", "queue", "session")

    def __init__(self, endpoint: EngineEndpoint, session: SocketIOSession, queue: PollQueue,
                 cors: tuple[tuple[str, str], ...]) -> None:
        self.endpoint = endpoint
        self.session = session
        self.queue = queue
        self.cors = cors
        queue.waiting = True

    def ready(self) -> bool:
        """Something is queued, or the session has closed."""
        return bool(len(self.queue)) or self.queue.closed

    def set_waker(self, wake: Callable[[], None] | None) -> None:
        """Wake the front door when something is queued."""
        self.queue.waker = wake

    def respond(self) -> HttpResponse:
        """What is queued, as one long-polling body."""
        self.queue.waiting = False
        body = self.queue.payload()
        if self.session.close_reason is not None:
            self.endpoint._forget(self.session)  # the closed session's last packets
        return HttpResponse(200, body, _TEXT, self.cors)

    def abandon(self) -> None:
        """The poll's client went away (or the server is stopping): end the session."""
        if self.queue.waiting:
            self.queue.waiting = False
            self.session.close("polling request cancelled", notify=False)
