"""One client: an Engine.IO v4 session on a WebSocket carrying the Socket.IO namespace ``/``.

Theory of operation: the connection's own task reads WebSocket messages, decodes
Engine.IO and Socket.IO packets, applies the per-connection limits (event size, rate,
attachments) and hands each event to the application (:class:`App`). Everything sent
to the client goes through the :class:`~collabtrio.transport.outbox.Outbox` as
pre-encoded frames and is written by the connection's writer task. Pings come from the
server's single :class:`~collabtrio.timers.Timers` task, not from a task per connection.

Invariants:
- every event that carries an ack id gets exactly one ack;
- a malformed packet, bad JSON or an unknown event costs this client an error (or, for
  framing the protocol cannot recover from, this connection), never anyone else;
- when :meth:`Connection.run` returns, the application's ``on_close`` has run once, so
  the client is in no room (no ghost users).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..config import Config, Role
from ..errors import CollabError, ErrorCode
from ..protocol import engineio, socketio, wsframe
from ..timers import TimerHandle, Timers
from .websocket import ServerWebSocket, WebSocketClosed

if TYPE_CHECKING:
    from ..auth import Identity
    from ..rooms.room import Room

log = logging.getLogger(__name__)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# Close codes of RFC 6455 used here.
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008


class App(Protocol):
    """What a connection needs from the server above it."""

    config: Config
    timers: Timers

    async def on_connect(self, conn: Connection, auth: Any) -> None:
        """Authenticate a Socket.IO CONNECT; raise :class:`CollabError` to refuse."""

    async def on_event(self, conn: Connection, name: str, payload: Any, ack_id: int | None) -> None:
        """Handle one client event; raise :class:`CollabError` to refuse it."""

    def on_close(self, conn: Connection) -> None:
        """The connection is gone: remove it from everything (synchronous)."""


def new_sid() -> str:
    """A random 20-character id, as Engine.IO and Socket.IO use."""
    return secrets.token_urlsafe(15)


def event_frames(event: str, payload: Any) -> list[bytes]:
    """Encode one server-to-client event as ready-to-write WebSocket frames.

    Payloads without bytes take the fast path (one text frame); payloads with bytes
    become a ``BINARY_EVENT`` followed by one binary frame per attachment.
    """
    try:
        text = socketio.encode_event_text(event, _dumps(payload))
    except TypeError:
        parts = socketio.encode(socketio.Packet(socketio.PacketType.EVENT, data=[event, payload]))
        return [
            wsframe.text_frame("4" + p) if isinstance(p, str) else wsframe.binary_frame(p)
            for p in parts
        ]
    return [wsframe.text_frame("4" + text)]


def ack_frames(ack_id: int, payload: Any) -> list[bytes]:
    """Encode the ack for ``ack_id`` as WebSocket frames (binary-aware)."""
    try:
        text = socketio.encode_ack_text(ack_id, _dumps(payload))
    except TypeError:
        parts = socketio.encode(socketio.Packet(socketio.PacketType.ACK, data=[payload], id=ack_id))
        return [
            wsframe.text_frame("4" + p) if isinstance(p, str) else wsframe.binary_frame(p)
            for p in parts
        ]
    return [wsframe.text_frame("4" + text)]


class TokenBucket:
    """Per-connection rate limit: ``rate`` tokens per second, at most ``burst``."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = trio.current_time()

    def take(self) -> bool:
        """Spend one token; ``False`` when none is left."""
        now = trio.current_time()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class Connection:
    """A connected client (see the module docstring).

    Attributes the application uses: ``sid`` (the Socket.IO socket id), ``identity``,
    ``rooms`` (room id -> Room, maintained by the rooms themselves), ``request`` data
    (``headers``, ``query``, ``remote``).
    """

    def __init__(
        self,
        app: App,
        ws: ServerWebSocket,
        *,
        headers: dict[str, str],
        query: dict[str, list[str]],
        remote: str,
    ) -> None:
        cfg = app.config
        self.app = app
        self.ws = ws
        self.headers = headers
        self.query = query
        self.remote = remote
        self.engine_sid = new_sid()
        self.sid = new_sid()
        self.identity: Identity | None = None
        self.connected = False
        self.rooms: dict[str, Room] = {}
        self.pending_joins = 0
        self.outbox = ws.outbox
        self.bucket = TokenBucket(cfg.rate_limit_per_s, cfg.rate_limit_burst)
        self.decoder = socketio.Decoder(max_attachments=cfg.max_attachments)
        self.close_reason: str | None = None
        self._cancel: trio.CancelScope | None = None
        self._ping_sent_at = 0.0
        self._pong_at = 0.0
        self._ping_timer: TimerHandle | None = None
        self._connect_timer: TimerHandle | None = None
        self.on_cleanup: list[Callable[[], None]] = []
        self.auth_rooms: list[Any] = []
        self.grants: dict[str, Role] = {}
        self.expiry_timer: TimerHandle | None = None
        self._binary_size = 0

    # -- sending -------------------------------------------------------------------------

    def send_frames(self, frames: list[bytes], volatile: bool = False) -> None:
        """Queue frames for this client; a full queue disconnects it (slow-consumer)."""
        ok = (
            self.outbox.push(frames[0], volatile)
            if len(frames) == 1
            else self.outbox.push_many(frames, volatile)
        )
        if not ok:
            self.disconnect_slow_consumer()

    def emit(self, event: str, payload: Any, volatile: bool = False) -> None:
        """Send one event to this client."""
        self.send_frames(event_frames(event, payload), volatile)

    def ack(self, ack_id: int, payload: Any) -> None:
        """Answer an acked event."""
        self.send_frames(ack_frames(ack_id, payload))

    def reply_error(
        self,
        ack_id: int | None,
        err: CollabError,
        event: str | None,
        operation_id: str | None = None,
    ) -> None:
        """Report ``err`` as the ack, or, when no ack was asked for, as an event.

        Without an ack, a document operation (``operation_id`` given) is answered the
        way the origin server's clients expect: ``operation-forbidden`` for
        ``FORBIDDEN``, ``operation-failed`` for a retryable storage or internal error,
        ``operation-error`` otherwise; any other event gets ``operation-error``.
        """
        if ack_id is not None:
            self.ack(ack_id, {"ok": False, "error": err.to_wire()})
            return
        body: dict[str, Any] = {
            "type": str(err.code),
            "message": err.message,
            "event": event,
            "retryable": err.retryable,
        }
        if err.details is not None:
            body["details"] = err.details
        if operation_id is not None:
            body["operationId"] = operation_id
            if err.code is ErrorCode.FORBIDDEN:
                self.emit("operation-forbidden", body)
                return
            if err.code in (ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.INTERNAL):
                self.emit("operation-failed", {"operationId": operation_id,
                                               "error": err.message, "code": str(err.code),
                                               "retryable": err.retryable})
                return
        self.emit("operation-error", body)

    def confirm(self, ack_id: int | None, result: dict[str, Any]) -> None:
        """Answer a persisted operation: its ack, or ``operation-confirmed`` without one."""
        if ack_id is not None:
            self.ack(ack_id, result)
        else:
            self.emit("operation-confirmed", {
                "operationId": result.get("operationId"),
                "serverTimestamp": result.get("serverTimestamp"),
                "seq": result.get("seq"),
            })

    # -- closing -------------------------------------------------------------------------

    def close(self, reason: str, code: int = 1000, *, notify: bool = True) -> None:
        """Disconnect this client (synchronous; the connection's task does the rest).

        With ``notify`` the client first gets a Socket.IO DISCONNECT, so stock clients
        report ``io server disconnect`` and do not reconnect on their own.
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if notify and self.connected:
            self.outbox.push(wsframe.text_frame("41"))
        self.ws.close(code, reason)
        if self._cancel is not None:
            self._cancel.cancel()

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
        self._ping_sent_at = now
        self.outbox.push(wsframe.text_frame(engineio.PING_FRAME))
        cfg = self.app.config
        self._ping_timer = self.app.timers.call_at(
            now + cfg.ping_timeout_ms / 1000, self._check_pong
        )

    def _check_pong(self) -> None:
        if self.close_reason is not None:
            return
        if self._pong_at < self._ping_sent_at:
            log.info("disconnecting %s: ping timeout", self.sid)
            self.close("ping timeout", notify=False)
            return
        cfg = self.app.config
        next_at = self._ping_sent_at + cfg.ping_interval_ms / 1000
        self._ping_timer = self.app.timers.call_at(next_at, self._send_ping)

    # -- the connection task -------------------------------------------------------------

    async def run(self) -> None:
        """Serve this client until it leaves, breaks the protocol or is closed.

        Resource handling: the writer task lives in the caller's nursery (see
        ``server``); on return a close frame is queued and the outbox closed, and the
        caller gives the writer a moment to drain before closing the stream.
        """
        cfg = self.app.config
        self.outbox.push(
            wsframe.text_frame(
                engineio.open_packet(
                    self.engine_sid,
                    upgrades=[],
                    ping_interval_ms=cfg.ping_interval_ms,
                    ping_timeout_ms=cfg.ping_timeout_ms,
                    max_payload=cfg.max_payload,
                )
            )
        )
        self._ping_timer = self.app.timers.call_later(cfg.ping_interval_ms / 1000, self._send_ping)
        # an unauthenticated socket must not hold a connection slot for ever
        self._connect_timer = self.app.timers.call_later(cfg.connect_timeout_s,
                                                         self._connect_timed_out)
        try:
            with trio.CancelScope() as self._cancel:
                if self.close_reason is not None:
                    self._cancel.cancel()
                while True:
                    try:
                        batch = await self.ws.receive_batch()
                    except WebSocketClosed as exc:
                        self.close_reason = self.close_reason or f"transport close ({exc.code})"
                        return
                    # the whole batch is handled before the next read, so a burst
                    # reaches the rooms (and each member's writer) as one batch
                    for message in batch:
                        await self._on_message(message)
                        if self.close_reason is not None:
                            return
        finally:
            self._finish()

    def _connect_timed_out(self) -> None:
        if not self.connected and self.close_reason is None:
            log.info("closing %s: no Socket.IO CONNECT in time", self.sid)
            self.close("connect timeout", CLOSE_POLICY, notify=False)

    def _finish(self) -> None:
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
        self.close_reason = self.close_reason or "server shutdown"
        self.connected = False
        self.ws.close(1000 if self.ws.closed is None else self.ws.closed.code)
        try:
            self.app.on_close(self)
        finally:
            for fn in self.on_cleanup:
                fn()
            self.outbox.close()

    async def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self._on_attachment(message)
            return
        if not message:
            self._protocol_error("empty Engine.IO packet")
            return
        kind = message[0]
        if kind == "4":
            await self._on_socketio_text(message)
        elif kind == "3":
            self._pong_at = trio.current_time()
        elif kind == "2":
            # a client-initiated ping (probe or keep-alive): answer it
            self.outbox.push(wsframe.text_frame("3" + message[1:]))
        elif kind == "1":
            self.close("client close", notify=False)
        elif kind == "6":
            pass
        else:
            self._protocol_error(f"unexpected Engine.IO packet type {kind!r}")

    def _protocol_error(self, why: str) -> None:
        log.info("closing %s: %s", self.sid, why)
        self.close(f"protocol error: {why}", CLOSE_PROTOCOL_ERROR, notify=False)

    async def _on_socketio_text(self, message: str) -> None:
        size = len(message)
        if size * 4 > self.app.config.max_event_bytes:
            size = len(message.encode("utf-8", "surrogatepass"))
        self._binary_size = size
        if self.decoder.pending:
            # a new packet before the attachments the last one announced: answer the
            # abandoned event, then read the new packet as usual
            self._on_bad_packet("a binary packet's attachments did not arrive",
                                self.decoder.abandon())
        try:
            packet = self.decoder.feed(message[1:])
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
        if not self.connected:
            self._protocol_error(why)
            return
        err = CollabError(ErrorCode.VALIDATION, f"malformed packet: {why}", retryable=False)
        self.reply_error(ack_id, err, None)

    async def _on_packet(self, packet: socketio.Packet, size: int) -> None:
        ptype = packet.type
        if ptype is socketio.PacketType.EVENT or ptype is socketio.PacketType.BINARY_EVENT:
            await self._on_event_packet(packet, size)
        elif ptype is socketio.PacketType.CONNECT:
            await self._on_connect_packet(packet)
        elif ptype is socketio.PacketType.DISCONNECT:
            self.close("client namespace disconnect", notify=False)
        elif ptype in (socketio.PacketType.ACK, socketio.PacketType.BINARY_ACK):
            pass  # the server asks clients for no acks
        else:
            self._on_bad_packet(f"clients may not send packet type {int(ptype)}", packet.id)

    async def _on_connect_packet(self, packet: socketio.Packet) -> None:
        if packet.namespace != "/":
            text = socketio.encode(
                socketio.Packet(
                    socketio.PacketType.CONNECT_ERROR,
                    namespace=packet.namespace,
                    data={"message": "Invalid namespace"},
                )
            )[0]
            assert isinstance(text, str)
            self.outbox.push(wsframe.text_frame("4" + text))
            return
        if self.connected:
            return
        if not self.bucket.take():
            self._protocol_error("too many CONNECT attempts")
            return
        try:
            await self.app.on_connect(self, packet.data)
        except CollabError as err:
            data = {"code": str(err.code), "message": err.message}
            payload = {"message": err.message, "data": data}
            self.outbox.push(wsframe.text_frame("44" + _dumps(payload)))
            return
        self.connected = True
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        self.outbox.push(wsframe.text_frame("40" + _dumps({"sid": self.sid})))
        await self.app.on_event(self, "$connected", None, None)

    async def _on_event_packet(self, packet: socketio.Packet, size: int) -> None:
        if not self.connected:
            return  # nothing is processed before a successful CONNECT
        data = packet.data
        name = data[0]
        payload = data[1] if len(data) > 1 else None
        ack_id = packet.id
        if packet.namespace != "/":
            self.reply_error(
                ack_id, CollabError(ErrorCode.VALIDATION, "unknown namespace"), name
            )
            return
        if not self.bucket.take():
            self.reply_error(
                ack_id,
                CollabError(ErrorCode.RATE_LIMITED, "too many events; slow down"),
                name,
            )
            return
        if size > self.app.config.max_event_bytes:
            self.reply_error(
                ack_id,
                CollabError(
                    ErrorCode.TOO_LARGE,
                    f"event is {size} bytes; the limit is {self.app.config.max_event_bytes}",
                    retryable=False,
                ),
                name,
            )
            return
        try:
            await self.app.on_event(self, name, payload, ack_id)
        except CollabError as err:
            self.reply_error(ack_id, err, name)
        except Exception:
            log.exception("event %r from %s failed", name, self.sid)
            self.reply_error(
                ack_id, CollabError(ErrorCode.INTERNAL, "internal error; try again"), name
            )
