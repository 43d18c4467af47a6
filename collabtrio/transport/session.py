"""The Socket.IO namespace ``/`` on top of a client's Engine.IO session.

Theory of operation: :class:`SocketIOSession` is an
:class:`~collabtrio.transport.engine.EngineIOSession` whose messages are Socket.IO
packets. It decodes them (binary attachments reassembled by the
:class:`~collabtrio.protocol.socketio.Decoder`), applies the per-connection limits
(event size, rate, attachments), answers the namespace handshake (``CONNECT`` with
``40``/``44``, ``DISCONNECT``) and hands each event to the application's
:class:`Namespace` for this socket. What events mean, and how refusals are answered, is
the application's business (:class:`Application`, :class:`Namespace`).

Invariants:
- a malformed packet, bad JSON or an unknown namespace costs this client an error (or,
  for framing the protocol cannot recover from, this session), never anyone else;
- when the session ends, the namespace's ``on_close`` has run once (if it connected),
  so the client is in no room (no ghost users);
- a client's ``DISCONNECT`` (``41``) ends its namespace, not the Engine.IO session
  (the client closes that), as the reference server does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..config import Config
from ..errors import CollabError, ErrorCode
from ..protocol import socketio
from ..protocol.outgoing import Outgoing
from ..timers import TimerHandle, Timers
from .engine import CLOSE_POLICY, EngineIOSession, new_sid
from .limits import TokenBucket
from .polling import PollQueue
from .websocket import ServerWebSocket

log = logging.getLogger(__name__)

__all__ = ["Application", "Namespace", "SocketIOSession"]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_DISCONNECT = Outgoing.socketio("1")

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


class SocketIOSession(EngineIOSession):
    """A connected client's transport: Engine.IO plus the Socket.IO namespace handshake.

    Attributes besides the Engine.IO session's: ``namespace`` (the application's side,
    once connected), ``bucket`` (the rate limit), ``decoder``.
    """

    __slots__ = ("_binary_size", "_connect_timer", "_max_event_bytes", "bucket", "decoder",
                 "namespace")

    app: Application

    def __init__(
        self,
        app: Application,
        carrier: ServerWebSocket | PollQueue,
        *,
        headers: dict[str, str],
        query: dict[str, list[str]],
        remote: str,
        on_finish: Callable[[EngineIOSession], None] | None = None,
    ) -> None:
        super().__init__(app, carrier, headers=headers, query=query, remote=remote,
                         on_finish=on_finish)
        cfg = app.config
        self.namespace: Namespace | None = None
        self.bucket = TokenBucket(cfg.rate_limit_per_s, cfg.rate_limit_burst)
        self.decoder = socketio.Decoder(max_attachments=cfg.max_attachments)
        self._max_event_bytes = cfg.max_event_bytes
        self._connect_timer: TimerHandle | None = None
        self._binary_size = 0

    @property
    def connected(self) -> bool:
        """The Socket.IO namespace ``/`` is connected."""
        return self.namespace is not None

    def start(self) -> None:
        """Start the Engine.IO session and the deadline for a Socket.IO CONNECT."""
        super().start()
        self._start_connect_timer()

    def _start_connect_timer(self) -> None:
        # an unauthenticated socket must not hold a connection slot for ever
        self._connect_timer = self.app.timers.call_later(self.app.config.connect_timeout_s,
                                                         self._connect_timed_out)

    def _connect_timed_out(self) -> None:
        if not self.connected and self.close_reason is None:
            log.info("closing %s: no Socket.IO CONNECT in time", self.sid)
            self.close("connect timeout", CLOSE_POLICY, notify=False)

    def _goodbye(self) -> Outgoing | None:
        return _DISCONNECT if self.connected else None

    def _ended(self) -> None:
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        namespace, self.namespace = self.namespace, None
        if namespace is not None:
            namespace.on_close()

    async def _on_data(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self._on_attachment(data)
        else:
            await self._on_socketio_text(data)

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
