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

Limits: a message (all its fragments) larger than ``max_message_size`` closes the
connection with 1009; a protocol violation closes it with the code wsproto chose
(1002, 1007); a peer that vanishes gives 1006.
"""

from __future__ import annotations

import base64
import binascii

import trio
import wsproto
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
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


def _check_key(key: bytes | None) -> None:
    """RFC 6455 section 4.1: ``Sec-WebSocket-Key`` is the base64 of 16 bytes."""
    try:
        nonce = base64.b64decode(key or b"", validate=True)
    except binascii.Error:
        nonce = b""
    if len(nonce) != 16:
        raise HandshakeError("Sec-WebSocket-Key must be the base64 encoding of 16 bytes")


class ServerWebSocket:
    """One accepted WebSocket (see the module docstring)."""

    __slots__ = ("_closed", "_parts", "_size", "_ws", "max_message_size", "outbox", "stream")

    def __init__(self, stream: trio.abc.Stream, outbox: Outbox, *, max_message_size: int) -> None:
        self.stream = stream
        self.outbox = outbox
        self.max_message_size = max_message_size
        self._ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self._parts: list[str | bytes] = []
        self._size = 0
        self._closed: WebSocketClosed | None = None

    @property
    def closed(self) -> WebSocketClosed | None:
        """Why the socket closed, once it has."""
        return self._closed

    def start_handshake(self, head: bytes) -> Request:
        """Feed the request head (and anything read after it); return the request.

        Raises :class:`HandshakeError` if it is not a valid handshake: wsproto's checks
        (with the status and headers it suggests: 426 and ``Sec-WebSocket-Version: 13``
        for another version), then the key's form, which wsproto does not check.
        """
        try:
            self._ws.receive_data(head)
            for event in self._ws.events():
                if isinstance(event, Request):
                    _check_key(dict(event.extra_headers).get(b"sec-websocket-key"))
                    return event
        except wsproto.utilities.RemoteProtocolError as exc:
            hint = exc.event_hint
            if isinstance(hint, RejectConnection):
                headers = tuple((k.decode("latin-1"), v.decode("latin-1"))
                                for k, v in hint.headers)
                # wsproto calls any other version a missing header: say what it is
                message = ("unsupported Sec-WebSocket-Version (this server speaks 13)"
                           if hint.status_code == 426 else str(exc))
                raise HandshakeError(message, hint.status_code, headers) from exc
            raise HandshakeError(str(exc)) from exc
        except UnicodeError as exc:  # wsproto decodes Host as IDNA
            raise HandshakeError(f"bad Host header: {exc}") from None
        raise HandshakeError("incomplete WebSocket handshake")

    async def accept(self) -> None:
        """Send the 101 response (no extensions: permessage-deflate is not offered)."""
        await self.stream.send_all(self._ws.send(AcceptConnection()))

    async def reject(self, status: int, body: bytes,
                     extra_headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Refuse the upgrade with an HTTP error (a JSON ``body``)."""
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()),
                   *((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra_headers)]
        data = self._ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += self._ws.send(RejectData(data=body))
        await self.stream.send_all(data)

    def ping(self) -> None:
        """Queue a ping (keeps proxies and idle-timeout clients from closing an idle
        socket); nothing once the socket is closing."""
        if self._ws.state is ConnectionState.OPEN:
            self.outbox.push(self._ws.send(Ping()))

    def close(self, code: int, reason: str | None = None) -> None:
        """Queue a close frame after what is already queued, and accept no more frames."""
        ws = self._ws
        if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
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
