"""One client's transport session: Engine.IO v4 on a WebSocket, carrying Socket.IO ``/``.

One cohesive thing: the session task and the state it reads, writes and times.

Theory of operation: the session's own task reads WebSocket messages in batches,
interprets each through the sans-IO
:class:`~collabtrio.protocol.engineio_session.EngineSession` (pings, pongs, close,
upgrade rules) and the Socket.IO :class:`~collabtrio.protocol.socketio.Decoder`,
applies the per-connection limits (event size, rate, attachments) and hands each
event to the application's :class:`Namespace` for this socket. Everything sent to the
client is an :class:`~collabtrio.protocol.outgoing.Outgoing` whose WebSocket encoding
goes into the :class:`~collabtrio.transport.outbox.Outbox`, written by the session's
writer task. Pings come from the server's single :class:`~collabtrio.timers.Timers`
task, not from a task per session.

What this module knows of Socket.IO is the namespace handshake (``CONNECT`` answered
``40``/``44``, ``DISCONNECT``); what events mean, and how refusals are answered, is the
application's business (:class:`Application`, :class:`Namespace`).

Invariants:
- a malformed packet, bad JSON or an unknown namespace costs this client an error (or,
  for framing the protocol cannot recover from, this session), never anyone else;
- when :meth:`SocketIOSession.run` returns, the namespace's ``on_close`` has run once
  (if it connected), so the client is in no room (no ghost users);
- a client's ``DISCONNECT`` (``41``) ends its namespace, not the Engine.IO session
  (the client closes that), as the reference server does.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

import trio

from ..config import Config
from ..errors import CollabError, ErrorCode
from ..protocol import engineio, socketio
from ..protocol.engineio_session import (
    Closed,
    EngineSession,
    Message,
    Ping,
    RemoteProtocolError,
    Side,
    State,
    Transport,
    Upgraded,
    UpgradeProbe,
)
from ..protocol.outgoing import Outgoing
from ..timers import TimerHandle, Timers
from .limits import TokenBucket
from .outbox import Outbox
from .polling import PollQueue
from .websocket import ServerWebSocket, WebSocketClosed

log = logging.getLogger(__name__)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# Close codes of RFC 6455 used here.
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008

_PING = Outgoing.engineio(engineio.PING_FRAME)
_NOOP = Outgoing.engineio(engineio.NOOP_FRAME)
_CLOSE = Outgoing.engineio(engineio.CLOSE_FRAME)
_PROBE_PONG = Outgoing.engineio(engineio.PROBE_PONG)
_DISCONNECT = Outgoing.socketio("1")


def _engine_packet(packet: engineio.Packet) -> Outgoing:
    text = engineio.encode_ws(packet)
    assert isinstance(text, str)  # only MESSAGE packets carry bytes
    return Outgoing.engineio(text)


def new_sid() -> str:
    """A random 20-character id, as Engine.IO and Socket.IO use."""
    return secrets.token_urlsafe(15)


class Namespace(Protocol):
    """The application's side of one connected Socket.IO socket."""

    async def on_connected(self) -> None:
        """``40`` has been sent (connect-time work: rooms from the handshake)."""

    async def on_event(self, name: str, payload: Any, ack_id: int | None) -> None:
        """Handle one event; answer it (the session answers nothing itself)."""

    def on_refused(self, ack_id: int | None, err: CollabError, event: str | None) -> None:
        """The session refused an event before the application saw it (limits, framing)."""

    def on_close(self) -> None:
        """The socket is gone: remove it from everything (synchronous, called once)."""


class Application(Protocol):
    """What a session needs from the server above it."""

    config: Config
    timers: Timers
    sessions: set[SocketIOSession]

    async def connect(self, session: SocketIOSession, auth: Any) -> Namespace:
        """Authenticate a Socket.IO ``CONNECT``; raise :class:`CollabError` to refuse."""


class SocketIOSession:
    """A connected client's transport (see the module docstring).

    Attributes: ``sid`` (the Socket.IO socket id), ``engine`` (the Engine.IO state,
    whose ``transport`` says which carrier is current), ``ws`` (the WebSocket, once
    there is one) or ``poll`` (the long-polling queue, until an upgrade), ``outbox``
    (whichever of the two is current), the request's ``headers``, ``query`` and
    ``remote`` address, and ``close_reason`` once the session is ending.

    Resource handling: a WebSocket session's reader is :meth:`run` (or
    :meth:`run_upgrade`, for the WebSocket a polling session upgrades to); a polling
    session has no task of its own: the endpoint's ``GET`` and ``POST`` requests drive
    it. However the session ends, :meth:`_finish` runs once: timers cancelled, the
    namespace closed, the session forgotten by the application and the endpoint.
    """

    # slots: an idle connection should cost as little memory as possible
    __slots__ = ("_binary_size", "_cancel", "_connect_timer", "_finished", "_max_event_bytes",
                 "_on_finish", "_ping_timer", "_probe", "_push", "_upgrade_timer", "app",
                 "bucket",
                 "close_reason", "decoder", "engine", "headers", "namespace", "poll",
                 "posting", "query", "remote", "sid", "ws")

    def __init__(
        self,
        app: Application,
        carrier: ServerWebSocket | PollQueue,
        *,
        headers: dict[str, str],
        query: dict[str, list[str]],
        remote: str,
        on_finish: Callable[[SocketIOSession], None] | None = None,
    ) -> None:
        cfg = app.config
        self.app = app
        self.headers = headers
        self.query = query
        self.remote = remote
        polling = isinstance(carrier, PollQueue)
        self.engine = EngineSession(
            Side.SERVER, "polling" if polling else "websocket", sid=new_sid(),
            upgrades=("websocket",) if polling else (),
            ping_interval_ms=cfg.ping_interval_ms, ping_timeout_ms=cfg.ping_timeout_ms,
            max_payload=cfg.max_payload,
        )
        self.ws: ServerWebSocket | None = None
        self.poll: PollQueue | None = None
        self._push: Callable[[Outgoing, bool], bool]
        if isinstance(carrier, PollQueue):
            self.poll = carrier
            self._push = carrier.push
        else:
            self.ws = carrier
            self._push = carrier.outbox.send
        self._probe: ServerWebSocket | None = None
        self.sid = new_sid()
        self.namespace: Namespace | None = None
        self.bucket = TokenBucket(cfg.rate_limit_per_s, cfg.rate_limit_burst)
        self.decoder = socketio.Decoder(max_attachments=cfg.max_attachments)
        self.close_reason: str | None = None
        self._on_finish = on_finish
        self._finished = False
        self._max_event_bytes = cfg.max_event_bytes
        self._cancel: trio.CancelScope | None = None
        self._ping_timer: TimerHandle | None = None
        self._connect_timer: TimerHandle | None = None
        self._upgrade_timer: TimerHandle | None = None
        self._binary_size = 0
        self.posting = False  # a long-polling POST is being handled (one at a time)

    @property
    def connected(self) -> bool:
        """The Socket.IO namespace ``/`` is connected."""
        return self.namespace is not None

    @property
    def outbox(self) -> Outbox | PollQueue:
        """The current outbound queue (the WebSocket's, or the long-polling one)."""
        if self.ws is not None:
            return self.ws.outbox
        assert self.poll is not None
        return self.poll

    def poll_now(self) -> bool:
        """A poll must be answered at once even with nothing to send: an upgrade is in
        progress, and the client waits for its poll to end before it sends UPGRADE."""
        return self._probe is not None and self.engine.probing is not None

    @property
    def probing(self) -> bool:
        """A WebSocket is probing this polling session for an upgrade."""
        return self._probe is not None

    @property
    def transport(self) -> str:
        """``"websocket"`` or ``"polling"``: what the session uses now."""
        return self.engine.transport

    # -- sending -------------------------------------------------------------------------

    def send(self, out: Outgoing, volatile: bool = False) -> None:
        """Queue ``out`` for this client; a full queue disconnects it (slow-consumer)."""
        if not self._push(out, volatile):
            self.disconnect_slow_consumer()

    def emit(self, event: str, payload: Any, volatile: bool = False) -> None:
        """Send one event to this client."""
        self.send(Outgoing.event(event, payload), volatile)

    # -- closing -------------------------------------------------------------------------

    def close(self, reason: str, code: int = 1000, *, notify: bool = True,
              by_client: bool = False) -> None:
        """Disconnect this client (synchronous; the session's task, if any, does the rest).

        With ``notify`` the client first gets a Socket.IO DISCONNECT, so stock clients
        report ``io server disconnect`` and do not reconnect on their own. On
        long-polling a waiting ``GET`` is answered with the Engine.IO ``close`` packet
        (``noop`` when the client closed it: ``by_client``).
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if notify and self.connected:
            self._push(_DISCONNECT, False)
        if self.engine.state in (State.OPEN, State.UPGRADING):
            self.engine.close()  # on a WebSocket the close frame says it; no CLOSE packet
        if self._probe is not None:
            self._probe.close(CLOSE_GOING_AWAY, "session closed")
        if self.ws is not None:
            self.ws.close(code, reason)
            if self._cancel is not None:
                self._cancel.cancel()
        else:
            poll = self.poll
            assert poll is not None
            poll.push(_NOOP if by_client else _CLOSE)
            poll.close()
            # a graceful kick (a DISCONNECT was queued) waits for the client's next poll
            self._finish(linger=notify)

    def disconnect_slow_consumer(self) -> None:
        """Drop what is queued and disconnect: the client recovers with ``join {since}``."""
        if self.close_reason is not None:
            return
        log.info("disconnecting %s: slow consumer", self.sid)
        self.outbox.clear()
        self.emit(
            "error",
            {
                "code": "SLOW_CONSUMER",
                "message": "outbound queue overflowed; rejoin with since to recover",
                "reason": "slow-consumer",
                "retryable": True,
            },
        )
        # no Socket.IO DISCONNECT: stock clients reconnect on their own and rejoin
        self.close("slow-consumer", CLOSE_POLICY, notify=False)

    # -- pings ---------------------------------------------------------------------------

    def _send_ping(self) -> None:
        if self.close_reason is not None:
            return
        now = trio.current_time()
        self.engine.ping(now)
        self._push(_PING, False)
        self._ping_timer = self.app.timers.call_at(
            now + self.engine.ping_timeout_ms / 1000, self._check_pong
        )

    def _check_pong(self) -> None:
        if self.close_reason is not None:
            return
        if self.engine.pong_overdue(trio.current_time()):
            log.info("disconnecting %s: ping timeout", self.sid)
            self.close("ping timeout", notify=False)
            return
        next_at = self.engine.next_ping_at()
        assert next_at is not None
        self._ping_timer = self.app.timers.call_at(next_at, self._send_ping)

    # -- the session's life --------------------------------------------------------------

    def start(self) -> None:
        """Queue the Engine.IO ``open`` packet and start the heartbeat and the CONNECT
        deadline (the endpoint calls it once, right after creating the session)."""
        cfg = self.app.config
        self.app.sessions.add(self)
        self._push(_engine_packet(self.engine.open()), False)
        self._ping_timer = self.app.timers.call_later(cfg.ping_interval_ms / 1000, self._send_ping)
        self._start_connect_timer()

    async def run(self) -> None:
        """Serve a WebSocket session until it leaves, breaks the protocol or is closed.

        Resource handling: the writer task lives in the caller's nursery (see
        :func:`~collabtrio.transport.endpoint.serve_websocket`); on return a close
        frame is queued and the outbox closed, and the caller gives the writer a moment
        to drain before closing the stream.
        """
        ws = self.ws
        assert ws is not None
        try:
            await self._read(ws)
        finally:
            self._finish()

    async def run_upgrade(self, ws: ServerWebSocket) -> None:
        """Serve the WebSocket a polling session probes: the probe, the ``UPGRADE``,
        then everything, until the session ends.

        If the WebSocket goes away (or breaks the protocol, or has not upgraded within
        ``upgrade_timeout_s``) before ``UPGRADE``, the upgrade is abandoned and the
        session carries on over long-polling.
        """
        self._probe = ws

        def too_slow() -> None:
            if self._probe is ws:
                log.info("%s: upgrade abandoned: no UPGRADE in time", self.sid)
                ws.close(CLOSE_POLICY, "upgrade timeout")

        self._upgrade_timer = self.app.timers.call_later(self.app.config.upgrade_timeout_s,
                                                         too_slow)
        try:
            await self._read(ws)
        finally:
            self._upgrade_timer.cancel()
            if self.ws is ws:
                self._finish()
            else:  # never upgraded
                if self._probe is ws:
                    self._probe = None
                if self.engine.state is State.UPGRADING:
                    self.engine.abandon_upgrade()
                ws.close(CLOSE_GOING_AWAY if ws.closed is None else ws.closed.code)

    async def _read(self, ws: ServerWebSocket) -> None:
        with trio.CancelScope() as scope:
            if self.ws is ws:
                self._cancel = scope
            if self.close_reason is not None:
                scope.cancel()
            while True:
                try:
                    batch = await ws.receive_batch()
                except WebSocketClosed as exc:
                    if self.ws is ws:
                        self.close_reason = self.close_reason or f"transport close ({exc.code})"
                    return
                # the whole batch is handled before the next read, so a burst
                # reaches the rooms (and each member's writer) as one batch
                for message in batch:
                    if ws is self._probe and self.ws is not ws:
                        if not self._on_probe_message(ws, message):
                            return
                        if self.ws is ws:
                            self._cancel = scope  # upgraded: this is the reader now
                        continue
                    await self._on_message(message, "websocket")
                    if self.close_reason is not None:
                        return

    async def receive_polling(self, packets: list[engineio.Packet]) -> None:
        """Handle the packets of one long-polling ``POST``, in order."""
        for packet in packets:
            await self._on_engine_packet(packet, "polling")
            if self.close_reason is not None:
                return

    def _on_probe_message(self, ws: ServerWebSocket, message: str | bytes) -> bool:
        """One message on the WebSocket being probed; False ends the probe."""
        try:
            event = self.engine.receive(engineio.decode_ws(message), "websocket")
        except RemoteProtocolError as exc:
            log.info("%s: upgrade abandoned: %s", self.sid, exc)
            ws.close(CLOSE_PROTOCOL_ERROR, "bad upgrade")
            return False
        if type(event) is UpgradeProbe:
            ws.outbox.send(_PROBE_PONG)
            if self.poll is not None and self.poll.waiting:
                self.poll.push(_NOOP)  # release the waiting GET: the client pauses polling
        elif type(event) is Upgraded:
            self._switch_to(ws)
        elif type(event) is Closed:
            self.close("client close", notify=False)
            return False
        return True

    def _switch_to(self, ws: ServerWebSocket) -> None:
        """``UPGRADE`` arrived: what waits for a poll goes first on the WebSocket, then
        everything else; a waiting ``GET`` is released with a ``noop``."""
        poll = self.poll
        assert poll is not None
        if self._upgrade_timer is not None:
            self._upgrade_timer.cancel()
        waiting = [item for item in poll.take() if item[0] is not _NOOP]
        poll.push(_NOOP)
        poll.close()
        self.ws, self.poll, self._probe = ws, None, None
        self._push = ws.outbox.send
        for out, volatile in waiting:
            self.send(out, volatile)  # a queue that overflows here is a slow consumer

    def _start_connect_timer(self) -> None:
        # an unauthenticated socket must not hold a connection slot for ever
        self._connect_timer = self.app.timers.call_later(self.app.config.connect_timeout_s,
                                                         self._connect_timed_out)

    def _connect_timed_out(self) -> None:
        if not self.connected and self.close_reason is None:
            log.info("closing %s: no Socket.IO CONNECT in time", self.sid)
            self.close("connect timeout", CLOSE_POLICY, notify=False)

    def _finish(self, *, linger: bool = False) -> None:
        if self._finished:
            return
        self._finished = True
        for timer in (self._connect_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self.close_reason = self.close_reason or "server shutdown"
        if self.ws is not None:
            self.ws.close(1000 if self.ws.closed is None else self.ws.closed.code)
        if self.engine.state is not State.CLOSED:
            self.engine.transport_closed(self.close_reason)
        self.app.sessions.discard(self)
        namespace, self.namespace = self.namespace, None
        try:
            if namespace is not None:
                namespace.on_close()
        finally:
            self.outbox.close()
            poll = self.poll
            if linger and poll is not None and not poll.waiting and len(poll) and (
                    self._on_finish):
                # a long-polling client kicked between two polls: its next poll gets the
                # DISCONNECT and the close, as the reference server lets the buffer
                # drain first; unclaimed, they go after a ping interval
                on_finish = self._on_finish
                self.app.timers.call_later(self.engine.ping_interval_ms / 1000,
                                           lambda: on_finish(self))
            elif self._on_finish is not None:
                self._on_finish(self)

    async def _on_message(self, message: str | bytes, via: Transport) -> None:
        try:
            packet = engineio.decode_ws(message)
        except RemoteProtocolError as exc:
            self._protocol_error(f"Engine.IO: {exc}")
            return
        await self._on_engine_packet(packet, via)

    async def _on_engine_packet(self, packet: engineio.Packet, via: Transport) -> None:
        try:
            event = self.engine.receive(packet, via)
        except RemoteProtocolError as exc:
            self._protocol_error(f"Engine.IO: {exc}")
            return
        if type(event) is Message:
            data = event.data
            if isinstance(data, bytes):
                await self._on_attachment(data)
            else:
                await self._on_socketio_text(data)
        elif type(event) is Ping:
            # a client-initiated ping (probe or keep-alive): answer it
            self._push(_engine_packet(self.engine.pong(event.data)), False)
        elif type(event) is Closed:
            self.close("client close", notify=False, by_client=True)
        # Pong: recorded by the engine session; Noop: nothing to do

    def _protocol_error(self, why: str) -> None:
        log.info("closing %s: %s", self.sid, why)
        self.close(f"protocol error: {why}", CLOSE_PROTOCOL_ERROR, notify=False)

    async def _on_socketio_text(self, text: str) -> None:
        # ``text`` is the Engine.IO message without its "4"; the limit counts the packet
        size = len(text) + 1
        if size * 4 > self._max_event_bytes:
            size = len(text.encode("utf-8", "surrogatepass")) + 1
        self._binary_size = size
        if self.decoder.pending:
            # a new packet before the attachments the last one announced: answer the
            # abandoned event, then read the new packet as usual
            self._on_bad_packet("a binary packet's attachments did not arrive",
                                self.decoder.abandon())
        try:
            packet = self.decoder.feed(text)
        except socketio.TooManyAttachments as exc:
            self._protocol_error(str(exc))
            return
        except socketio.SocketIOProtocolError as exc:
            self._on_bad_packet(str(exc), exc.ack_id)
            return
        if packet is not None:
            await self._on_packet(packet, size)

    async def _on_attachment(self, data: bytes) -> None:
        self._binary_size += len(data)
        try:
            packet = self.decoder.feed(data)
        except socketio.SocketIOProtocolError as exc:
            self._on_bad_packet(str(exc), exc.ack_id)
            return
        if packet is not None:
            await self._on_packet(packet, self._binary_size)

    def _on_bad_packet(self, why: str, ack_id: int | None = None) -> None:
        # answered as the event's ack when its id could be read, else as an error event
        namespace = self.namespace
        if namespace is None:
            self._protocol_error(why)
            return
        err = CollabError(ErrorCode.VALIDATION, f"malformed packet: {why}", retryable=False)
        namespace.on_refused(ack_id, err, None)

    async def _on_packet(self, packet: socketio.Packet, size: int) -> None:
        ptype = packet.type
        if ptype is socketio.PacketType.EVENT or ptype is socketio.PacketType.BINARY_EVENT:
            await self._on_event_packet(packet, size)
        elif ptype is socketio.PacketType.CONNECT:
            await self._on_connect_packet(packet)
        elif ptype is socketio.PacketType.DISCONNECT:
            self._on_disconnect_packet(packet)
        elif ptype in (socketio.PacketType.ACK, socketio.PacketType.BINARY_ACK):
            pass  # the server asks clients for no acks
        else:
            self._on_bad_packet(f"clients may not send packet type {int(ptype)}", packet.id)

    async def _on_connect_packet(self, packet: socketio.Packet) -> None:
        if packet.namespace != "/":
            error = socketio.Packet(socketio.PacketType.CONNECT_ERROR, namespace=packet.namespace,
                                    data={"message": "Invalid namespace"})
            text = socketio.encode(error)[0]
            assert isinstance(text, str)
            self.send(Outgoing.socketio(text))
            return
        if self.connected:
            return
        if not self.bucket.take():
            self._protocol_error("too many CONNECT attempts")
            return
        try:
            namespace = await self.app.connect(self, packet.data)
        except CollabError as err:
            data = {"code": str(err.code), "message": err.message}
            self.send(Outgoing.socketio("4" + _dumps({"message": err.message, "data": data})))
            return
        if self.close_reason is not None:
            namespace.on_close()  # closed while the application was connecting it
            return
        self.namespace = namespace
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        self.send(Outgoing.socketio("0" + _dumps({"sid": self.sid})))
        await namespace.on_connected()

    def _on_disconnect_packet(self, packet: socketio.Packet) -> None:
        # the namespace ends; the Engine.IO session stays until the client closes it
        namespace = self.namespace
        if packet.namespace != "/" or namespace is None:
            return  # a namespace this socket is not connected to: nothing to end
        self.namespace = None
        namespace.on_close()
        self.sid = new_sid()  # a later CONNECT is a new socket, as in the reference server
        self._start_connect_timer()

    async def _on_event_packet(self, packet: socketio.Packet, size: int) -> None:
        namespace = self.namespace
        if namespace is None:
            return  # nothing is processed before a successful CONNECT
        data = packet.data
        name = data[0]
        payload = data[1] if len(data) > 1 else None
        ack_id = packet.id
        if packet.namespace != "/":
            namespace.on_refused(ack_id, CollabError(ErrorCode.VALIDATION, "unknown namespace"),
                                 name)
            return
        if not self.bucket.take():
            namespace.on_refused(
                ack_id, CollabError(ErrorCode.RATE_LIMITED, "too many events; slow down"), name
            )
            return
        if size > self._max_event_bytes:
            namespace.on_refused(ack_id, CollabError(
                ErrorCode.TOO_LARGE,
                f"event is {size} bytes; the limit is {self._max_event_bytes}",
                retryable=False,
            ), name)
            return
        await namespace.on_event(name, payload, ack_id)
