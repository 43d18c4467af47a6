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
  (the client closes that), as the reference server does;
- nothing is buffered for a socket that has not connected: before its first CONNECT
  any other Socket.IO packet closes the session (the reference server closes too, but
  only once the packet is whole, attachments included); after a DISCONNECT, events are
  ignored and their attachments dropped as they arrive;
- a packet is measured as it arrives (text plus attachments so far): past
  ``max_event_bytes`` it is refused with ``TOO_LARGE`` and the rest of its attachments
  are dropped unread, so one packet never holds more than that;
- the session counts as unauthenticated in the endpoint's
  :class:`~collabtrio.transport.limits.Admission` until its CONNECT succeeds, and takes
  one of ``max_connections`` only then.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..config import Config
from ..errors import CollabError, ErrorCode
from ..observability.sink import Metrics
from ..protocol import socketio
from ..protocol.outgoing import Outgoing
from ..timers import TimerHandle, Timers
from .engine import CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER, EngineIOSession, new_sid
from .limits import Admission, TokenBucket, client_address
from .polling import PollQueue
from .websocket import ServerWebSocket

log = logging.getLogger(__name__)

__all__ = ["Application", "Namespace", "SocketIOSession"]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_DISCONNECT = Outgoing.socketio("1")
_EVENT_TYPES = (socketio.PacketType.EVENT, socketio.PacketType.BINARY_EVENT)
_ACK_TYPES = (socketio.PacketType.ACK, socketio.PacketType.BINARY_ACK)

# how a session counts in the endpoint's Admission
_UNCOUNTED, _UNAUTHENTICATED, _CONNECTED = range(3)

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
    metrics: Metrics

    async def connect(self, session: SocketIOSession, auth: Any) -> Namespace:
        """Authenticate a Socket.IO ``CONNECT``; raise :class:`CollabError` to refuse."""


class SocketIOSession(EngineIOSession):
    """A connected client's transport: Engine.IO plus the Socket.IO namespace handshake.

    Attributes besides the Engine.IO session's: ``namespace`` (the application's side,
    once connected), ``bucket`` (the rate limit), ``decoder``, ``address`` (the
    client's address, as per-address limits count it).
    """

    __slots__ = ("_admission", "_connect_timer", "_counted", "_was_connected", "address",
                 "bucket", "decoder", "namespace")

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
        admission: Admission | None = None,
    ) -> None:
        super().__init__(app, carrier, headers=headers, query=query, remote=remote,
                         on_finish=on_finish)
        cfg = app.config
        self.namespace: Namespace | None = None
        self.bucket = TokenBucket(cfg.rate_limit_per_s, cfg.rate_limit_burst)
        self.decoder = socketio.Decoder(max_attachments=cfg.max_attachments,
                                        max_bytes=cfg.max_event_bytes)
        self.address = client_address(remote)
        self._admission = admission
        self._counted = _UNCOUNTED
        self._was_connected = False
        self._connect_timer: TimerHandle | None = None

    @property
    def connected(self) -> bool:
        """The Socket.IO namespace ``/`` is connected."""
        return self.namespace is not None

    def start(self) -> None:
        """Start the Engine.IO session and the deadline for a Socket.IO CONNECT."""
        super().start()
        self._count_as(_UNAUTHENTICATED)
        self._start_connect_timer()

    def _count_as(self, state: int) -> bool:
        """Move this session to ``state`` in the admission counts; False (and no move)
        when it asks for a connection slot and none is free."""
        admission = self._admission
        old = self._counted
        if admission is None or old == state:
            return True
        if state == _CONNECTED and not admission.take_connection():
            return False
        if old == _UNAUTHENTICATED:
            admission.leave_unauthenticated(self.address)
        elif old == _CONNECTED:
            admission.release_connection()
        if state == _UNAUTHENTICATED:
            admission.enter_unauthenticated(self.address)
        self._counted = state
        return True

    def _start_connect_timer(self) -> None:
        # an unauthenticated socket must not hold a connection slot for ever
        self._connect_timer = self.app.timers.call_later(self.app.config.connect_timeout_s,
                                                         self._connect_timed_out)

    def _connect_timed_out(self) -> None:
        if not self.connected and self.close_reason is None:
            log.info("closing %s: no Socket.IO CONNECT in time", self.sid,
                     extra={"sid": self.sid})
            self.close("connect timeout", CLOSE_POLICY, notify=False)

    def _high_water_notice(self, queued: int) -> Outgoing | None:
        # a Socket.IO event only makes sense to a socket connected to the namespace
        return super()._high_water_notice(queued) if self.connected else None

    def _goodbye(self) -> Outgoing | None:
        return _DISCONNECT if self.connected else None

    def _ended(self) -> None:
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        self._count_as(_UNCOUNTED)
        namespace, self.namespace = self.namespace, None
        if namespace is not None:
            self.app.metrics.disconnected(self.close_reason)
            namespace.on_close()

    async def _on_data(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self._on_attachment(data)
        else:
            await self._on_socketio_text(data)

    async def _on_socketio_text(self, text: str) -> None:
        decoder = self.decoder
        if decoder.pending:
            # a new packet before the attachments the last one announced: answer the
            # abandoned event, then read the new packet as usual
            self._on_bad_packet("a binary packet's attachments did not arrive",
                                decoder.abandon())
        if self.namespace is None and not self._was_connected and text[:1] != "0":
            # before the first CONNECT nothing else is read (nor buffered)
            self._protocol_error(f"Socket.IO packet type {text[:1]!r} before CONNECT")
            return
        try:
            packet = decoder.feed(text)
        except socketio.TooManyAttachments as exc:
            self._protocol_error(str(exc))
            return
        except socketio.PacketTooLarge as exc:
            self._on_too_large(exc)
            return
        except socketio.SocketIOProtocolError as exc:
            self._on_bad_packet(str(exc), exc.ack_id)
            return
        if packet is not None:
            await self._on_packet(packet)
        elif self.namespace is None or text[:1] == "6":
            # attachments nobody will read (an event while disconnected, an ack the
            # server never asked for): dropped as they arrive
            decoder.discard()

    async def _on_attachment(self, data: bytes) -> None:
        try:
            packet = self.decoder.feed(data)
        except socketio.PacketTooLarge as exc:
            self._on_too_large(exc)
            return
        except socketio.SocketIOProtocolError as exc:
            self._on_bad_packet(str(exc), exc.ack_id)
            return
        if packet is not None:
            await self._on_packet(packet)

    def _on_too_large(self, exc: socketio.PacketTooLarge) -> None:
        # answered like an oversized event always was: the connection stays
        namespace = self.namespace
        if exc.type not in _EVENT_TYPES:
            if namespace is None:
                self._protocol_error(str(exc))  # a CONNECT this large is no handshake
            return  # an ack the server never asked for
        if namespace is None:
            return  # events are ignored while disconnected
        if exc.namespace != "/":
            err = CollabError(ErrorCode.VALIDATION, "unknown namespace")
        elif not self.bucket.take():
            self.app.metrics.rate_limit()
            err = CollabError(ErrorCode.RATE_LIMITED, "too many events; slow down")
        else:
            size = f"{exc.size}" if exc.complete else f"at least {exc.size}"
            err = CollabError(ErrorCode.TOO_LARGE,
                              f"event is {size} bytes; the limit is {exc.limit}",
                              retryable=False)
        namespace.on_refused(exc.ack_id, err, exc.event)

    def _on_bad_packet(self, why: str, ack_id: int | None = None) -> None:
        # answered as the event's ack when its id could be read, else as an error event
        namespace = self.namespace
        if namespace is None:
            self._protocol_error(why)
            return
        err = CollabError(ErrorCode.VALIDATION, f"malformed packet: {why}", retryable=False)
        namespace.on_refused(ack_id, err, None)

    async def _on_packet(self, packet: socketio.Packet) -> None:
        ptype = packet.type
        if ptype is socketio.PacketType.EVENT or ptype is socketio.PacketType.BINARY_EVENT:
            await self._on_event_packet(packet)
        elif ptype is socketio.PacketType.CONNECT:
            await self._on_connect_packet(packet)
        elif ptype is socketio.PacketType.DISCONNECT:
            self._on_disconnect_packet(packet)
        elif ptype in _ACK_TYPES:
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
        if not self._count_as(_CONNECTED):
            # taken before authenticating, so concurrent CONNECTs cannot pass the limit;
            # a transport close (not a CONNECT_ERROR) so that stock clients retry later
            log.info("closing %s: max_connections reached", self.sid, extra={"sid": self.sid})
            self.close("server full", CLOSE_TRY_AGAIN_LATER, notify=False)
            return
        try:
            namespace = await self.app.connect(self, packet.data)
        except CollabError as err:
            self._count_as(_UNAUTHENTICATED)
            data = {"code": str(err.code), "message": err.message}
            self.send(Outgoing.socketio("4" + _dumps({"message": err.message, "data": data})))
            return
        if self.close_reason is not None:
            namespace.on_close()  # closed while the application was connecting it
            return
        self.namespace = namespace
        self._was_connected = True
        self.app.metrics.connected(self.transport)
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
        self.app.metrics.disconnected("client disconnect")
        namespace.on_close()
        self.sid = new_sid()  # a later CONNECT is a new socket, as in the reference server
        self._count_as(_UNAUTHENTICATED)
        self._start_connect_timer()

    async def _on_event_packet(self, packet: socketio.Packet) -> None:
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
            self.app.metrics.rate_limit()
            namespace.on_refused(
                ack_id, CollabError(ErrorCode.RATE_LIMITED, "too many events; slow down"), name
            )
            return
        await namespace.on_event(name, payload, ack_id)
