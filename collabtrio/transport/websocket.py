"""The server side of a WebSocket, on wsproto, read in batches by its connection task.

Theory of operation: the connection's own task calls :meth:`ServerWebSocket.receive_batch`,
which reads one chunk from the stream (up to 64 KiB), feeds it to wsproto and returns
*every* complete message in it at once. The connection then handles the whole batch
without yielding to the scheduler in between, so a burst of N events from a publisher
reaches the room as one batch, and each member's writer sends the N resulting frames
with one ``send``. (trio-websocket hands messages over one at a time through a memory
channel, with a scheduler pass per message; that made every broadcast cost one wake-up
and one ``send`` per member, which is the cost this module exists to avoid.)

Everything written to the socket goes through the connection's
:class:`~collabtrio.transport.outbox.Outbox`: pongs and close frames produced by
wsproto, and the pre-encoded frames of the layers above. One writer task owns the
stream for writing, so no lock is needed. The handshake response is the only write
made directly, before the writer starts.

The handshake: the front door has parsed the request head already (httptools), so the
upgrade is checked here from its method and headers, as wsproto's own handshake checks
it (with the same answers: 426 and ``Sec-WebSocket-Version: 13`` for another
version), and the 101 response is written by hand; wsproto frames the connection from
then on. (Feeding the head to wsproto's handshake again parsed it a second time, with
h11: a sixth of the server's CPU in a connect storm.) A refused upgrade is
answered by the front door's ``send_response``, like any other HTTP error.

Limits: a message (all its fragments) larger than ``max_message_size`` closes the
connection with 1009; a protocol violation closes it with the code wsproto chose
(1002, 1007); a peer that vanishes gives 1006.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import trio
import wsproto.utilities
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)

from .outbox import Outbox

RECEIVE_BYTES = 65536
CLOSE_TOO_BIG = 1009
CLOSE_ABNORMAL = 1006


class WebSocketClosed(Exception):
    """The WebSocket is closed (``code`` as in RFC 6455; 1006 when the peer vanished)."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(f"closed {code} {reason or ''}".strip())
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """The upgrade request is not a valid WebSocket handshake: answer ``status`` (400,
    or 426 for an unsupported version) with ``headers``."""

    def __init__(self, message: str, status: int = 400,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def _check_key(key: str) -> None:
    """RFC 6455 section 4.1: ``Sec-WebSocket-Key`` is the base64 of 16 bytes."""
    try:
        nonce = base64.b64decode(key.encode("latin-1"), validate=True)
    except (binascii.Error, UnicodeError):
        nonce = b""
    if len(nonce) != 16:
        raise HandshakeError("Sec-WebSocket-Key must be the base64 encoding of 16 bytes")


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",")]


def check_upgrade(method: str, headers: Mapping[str, str]) -> str:
    """The ``Sec-WebSocket-Key`` of a valid opening handshake (RFC 6455 section 4.2.1),
    given its method and headers (lower-cased names, repeated ones joined with ``, ``);
    else :class:`HandshakeError`, with the checks and answers of wsproto's handshake."""
    if method != "GET":
        raise HandshakeError("Request method must be GET")
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError("Missing header, 'Connection: Upgrade'")
    version = headers.get("sec-websocket-version")
    if version != "13":
        if version:
            # another version: say which this server speaks
            raise HandshakeError("unsupported Sec-WebSocket-Version (this server speaks 13)",
                                 426, (("Sec-WebSocket-Version", "13"),))
        raise HandshakeError("Missing header, 'Sec-WebSocket-Version'", 400,
                             (("Sec-WebSocket-Version", "13"),))
    key = headers.get("sec-websocket-key")
    if key is None:
        raise HandshakeError("Missing header, 'Sec-WebSocket-Key'")
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError("Missing header, 'Upgrade: websocket'")
    host = headers.get("host")
    if host is None:
        raise HandshakeError("Missing header, 'Host'")
    if not host.isascii():
        raise HandshakeError("bad Host header: not ASCII (an IDNA name is sent encoded)")
    _check_key(key)
    return key


class ServerWebSocket:
    """One accepted WebSocket (see the module docstring)."""

    __slots__ = ("_closed", "_key", "_parts", "_rest", "_size", "_ws", "max_message_size",
                 "outbox", "stream")

    def __init__(self, stream: trio.abc.Stream, outbox: Outbox, *, max_message_size: int) -> None:
        self.stream = stream
        self.outbox = outbox
        self.max_message_size = max_message_size
        # wsproto's framing, from the 101 response on (None until then)
        self._ws: Connection | None = None
        self._key = ""
        self._rest = b""
        self._parts: list[str | bytes] = []
        self._size = 0
        self._closed: WebSocketClosed | None = None

    @property
    def closed(self) -> WebSocketClosed | None:
        """Why the socket closed, once it has."""
        return self._closed

    def start_handshake(self, method: str, headers: Mapping[str, str], rest: bytes = b"") -> None:
        """Check the upgrade request (its method and parsed headers); ``rest`` is what
        the client sent after the request head (frames, read after the 101).

        Raises :class:`HandshakeError` if it is not a valid handshake (see
        :func:`check_upgrade`).
        """
        self._key = check_upgrade(method, headers)
        self._rest = rest

    async def accept(self) -> None:
        """Send the 101 response (no extensions: permessage-deflate is not offered)."""
        accept = wsproto.utilities.generate_accept_token(self._key.encode("latin-1"))
        self._key = ""
        ws = self._ws = Connection(ConnectionType.SERVER)
        await self.stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        if self._rest:
            ws.receive_data(self._rest)
            self._rest = b""

    def ping(self) -> None:
        """Queue a ping (keeps proxies and idle-timeout clients from closing an idle
        socket); nothing once the socket is closing."""
        ws = self._ws
        if ws is not None and ws.state is ConnectionState.OPEN:
            self.outbox.push(ws.send(Ping()))

    def close(self, code: int, reason: str | None = None) -> None:
        """Queue a close frame after what is already queued, and accept no more frames."""
        ws = self._ws
        if ws is not None and ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self.outbox.push(ws.send(CloseConnection(code=code, reason=reason)))
        if self._closed is None:
            self._closed = WebSocketClosed(code, reason)
        self.outbox.close()

    async def receive_batch(self) -> list[str | bytes]:
        """Every complete message of the next chunk that has one (never empty).

        Raises :class:`WebSocketClosed` once the connection is closed, after the
        messages that arrived before the close were returned.
        """
        ws = self._ws
        assert ws is not None, "receive_batch before accept"
        while True:
            batch: list[str | bytes] = []
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    data = event.data
                    self._size += len(data)
                    if self._size > self.max_message_size:
                        self.close(CLOSE_TOO_BIG, "message too big")
                        break
                    if not isinstance(data, str):
                        data = bytes(data)
                    if event.message_finished and not self._parts:
                        batch.append(data)
                        self._size = 0
                    else:
                        self._parts.append(data)
                        if event.message_finished:
                            batch.append(self._join_parts())
                elif isinstance(event, Ping):
                    if ws.state is ConnectionState.OPEN:
                        self.outbox.push(ws.send(event.response()))
                    # else our close frame is out: nothing may follow it (RFC 6455
                    # 5.5.1), and wsproto refuses to frame a pong
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        self.outbox.push(ws.send(event.response()))
                        self._closed = WebSocketClosed(event.code, event.reason)
                        self.outbox.close()
                    else:
                        # a parse failure, reported by wsproto as a close it wants sent
                        self.close(event.code, event.reason)
                    break
            if batch:
                return batch
            if self._closed is not None:
                raise self._closed
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._closed = WebSocketClosed(CLOSE_ABNORMAL, "connection lost")
                self.outbox.close()
                raise self._closed
            try:
                ws.receive_data(bytes(data))
            except wsproto.utilities.LocalProtocolError:
                # data after our close frame: nothing more to read
                self._closed = self._closed or WebSocketClosed(CLOSE_ABNORMAL)
                raise self._closed from None

    def _join_parts(self) -> str | bytes:
        parts = self._parts
        self._parts = []
        self._size = 0
        if isinstance(parts[0], str):
            return "".join(p for p in parts if isinstance(p, str))
        return b"".join(p for p in parts if not isinstance(p, str))
