"""A trio client for collabtrio (and other Socket.IO v5 servers, websocket transport).

Usage::

    async with collabtrio.client.connect("http://127.0.0.1:8765", token=token) as client:
        ack = await client.call("join", {"room": "doc:1"})
        await client.emit("cursor", {"room": "doc:1", "cursor": {"x": 1}})
        async for event, data in client.events():
            ...

Resource handling: :func:`connect` owns a nursery with the WebSocket reader and the
client's own reader task; leaving the ``async with`` closes the socket and cancels
both. Events are buffered without bound until read (this client is meant for tools,
services and tests; use :meth:`Client.events` promptly).

Error handling: a refused connection raises :class:`ConnectError` with the server's
``code``; :meth:`Client.call` raises :class:`trio.TooSlowError` on its timeout and
:class:`Disconnected` if the connection goes away first.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
)

from .protocol import socketio

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ConnectError(Exception):
    """The server refused the Socket.IO CONNECT (``code`` as in the protocol)."""

    def __init__(self, message: str, data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.code: str | None = data.get("code") if isinstance(data, dict) else None


class Disconnected(Exception):
    """The connection closed (``reason`` says how)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Client:
    """A connected client; created by :func:`connect`."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.sid: str | None = None
        self.engine: dict[str, Any] = {}
        self.disconnect_reason: str | None = None
        self.close_code: int | None = None
        self._acks: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._ack_ids = itertools.count()
        self._events_in, self._events_out = trio.open_memory_channel[tuple[str, Any]](math.inf)
        self._connected = trio.Event()
        self._connect_error: ConnectError | None = None
        self._decoder = socketio.Decoder(max_attachments=1000)
        self._closed = trio.Event()
        self._reading = trio.Event()
        self._reading.set()
        self.answer_pings = True
        # acks for ids this client did not ask through call() (raw packets in tests)
        self.unmatched_acks: list[tuple[int, Any]] = []

    # -- sending -------------------------------------------------------------------------

    async def _send_packet(self, packet: socketio.Packet) -> None:
        for part in socketio.encode(packet):
            try:
                await self.ws.send_message("4" + part if isinstance(part, str) else part)
            except ConnectionClosed as exc:
                raise Disconnected(self.disconnect_reason or "transport close") from exc

    async def emit(self, event: str, data: Any = None) -> None:
        """Send an event without asking for an ack."""
        await self._send_packet(socketio.Packet(socketio.PacketType.EVENT, data=[event, data]))

    async def call(self, event: str, data: Any = None, *, timeout: float = 10.0) -> Any:
        """Send an event and return the server's ack payload."""
        ack_id = next(self._ack_ids)
        done = trio.Event()
        slot: list[Any] = []
        self._acks[ack_id] = (done, slot)
        try:
            await self._send_packet(
                socketio.Packet(socketio.PacketType.EVENT, data=[event, data], id=ack_id)
            )
            with trio.fail_after(timeout):
                await done.wait()
        finally:
            self._acks.pop(ack_id, None)
        if not slot:
            raise Disconnected(self.disconnect_reason or "transport close")
        return slot[0]

    async def join(self, room: str, since: int | None = None) -> Any:
        """``join`` and return the ack."""
        payload: dict[str, Any] = {"room": room}
        if since is not None:
            payload["since"] = since
        return await self.call("join", payload)

    async def send_raw(self, message: str | bytes) -> None:
        """Send one raw WebSocket message (for tests of malformed input)."""
        await self.ws.send_message(message)

    # -- receiving -----------------------------------------------------------------------

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """``(event, data)`` pairs as they arrive, until the connection closes."""
        async for item in self._events_out:
            yield item

    async def next_event(self, name: str | None = None, *, timeout: float = 10.0) -> Any:
        """The data of the next event (named ``name``, skipping others), or raise.

        Raises :class:`Disconnected` if the connection closes first.
        """
        with trio.fail_after(timeout):
            while True:
                try:
                    event, data = await self._events_out.receive()
                except trio.EndOfChannel:
                    raise Disconnected(self.disconnect_reason or "closed") from None
                if name is None or event == name:
                    return data if name is not None else (event, data)

    def pending_events(self) -> list[tuple[str, Any]]:
        """Every event received and not yet read, without waiting."""
        out = []
        while True:
            try:
                out.append(self._events_out.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return out

    def pause_reading(self) -> None:
        """Stop reading from the socket (to simulate a slow client in tests)."""
        self._reading = trio.Event()

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""
        self._reading.set()

    async def wait_closed(self) -> None:
        """Wait until the server or the network closed the connection."""
        await self._closed.wait()

    async def _reader(self) -> None:
        try:
            while True:
                await self._reading.wait()
                try:
                    message = await self.ws.get_message()
                except ConnectionClosed as exc:
                    reason = exc.reason
                    self.close_code = reason.code if reason else None
                    self.disconnect_reason = self.disconnect_reason or (
                        f"closed {reason.code} {reason.reason or ''}".strip()
                        if reason else "transport close"
                    )
                    return
                await self._on_message(message)
        finally:
            self._closed.set()
            self._events_in.close()
            for done, _ in self._acks.values():
                done.set()
            self._connected.set()

    async def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            packet = self._decoder.feed(message)
        elif message.startswith("4"):
            packet = self._decoder.feed(message[1:])
        else:
            if message.startswith("2") and self.answer_pings:
                await self.ws.send_message("3" + message[1:])
            elif message.startswith("0"):
                self.engine = json.loads(message[1:])
            return
        if packet is None:
            return
        kind = packet.type
        if kind in (socketio.PacketType.EVENT, socketio.PacketType.BINARY_EVENT):
            data = packet.data
            self._events_in.send_nowait((data[0], data[1] if len(data) > 1 else None))
        elif kind in (socketio.PacketType.ACK, socketio.PacketType.BINARY_ACK):
            entry = self._acks.get(packet.id) if packet.id is not None else None
            payload = packet.data[0] if packet.data else None
            if entry is not None:
                entry[1].append(payload)
                entry[0].set()
            elif packet.id is not None:
                self.unmatched_acks.append((packet.id, payload))
        elif kind is socketio.PacketType.CONNECT:
            self.sid = packet.data.get("sid") if isinstance(packet.data, dict) else None
            self._connected.set()
        elif kind is socketio.PacketType.CONNECT_ERROR:
            data = packet.data if isinstance(packet.data, dict) else {}
            self._connect_error = ConnectError(str(data.get("message")), data.get("data"))
            self._connected.set()
        elif kind is socketio.PacketType.DISCONNECT:
            self.disconnect_reason = "io server disconnect"


def socketio_resource(query: dict[str, Any] | None = None) -> str:
    """The request target for a websocket-only Socket.IO connection."""
    params: dict[str, Any] = {"EIO": "4", "transport": "websocket"}
    if query:
        params.update(query)
    return "/socket.io/?" + urlencode(params, doseq=True)


@asynccontextmanager
async def connect(
    url: str | None = None,
    *,
    token: str | None = None,
    auth: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    stream: trio.abc.Stream | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[Client]:
    """Connect (over ``url``, or over an already-open ``stream``) and yield a Client.

    ``token`` goes in the CONNECT ``auth`` payload (with any other ``auth`` keys, such
    as ``rooms``). Raises :class:`ConnectError` if the server refuses.
    """
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    resource = socketio_resource(query)
    auth_payload = dict(auth or {})
    if token is not None:
        auth_payload["token"] = token
    try:
        async with trio.open_nursery() as nursery:
            if stream is None:
                if url is None:
                    raise ValueError("connect() needs a url or a stream")
                parts = urlsplit(url)
                secure = parts.scheme in ("https", "wss")
                host = parts.hostname or "127.0.0.1"
                port = parts.port or (443 if secure else 80)
                if secure:
                    stream = await trio.open_ssl_over_tcp_stream(host, port)
                else:
                    stream = await trio.open_tcp_stream(host, port)
                host_header = parts.netloc
            else:
                host_header = "collabtrio.test"
            # trio-websocket annotates SocketStream, but any trio Stream works
            ws = await wrap_client_stream(
                nursery, stream, host_header, resource,  # type: ignore[arg-type]
                extra_headers=extra,
            )
            client = Client(ws)
            try:
                nursery.start_soon(client._reader)
                await client._send_packet(
                    socketio.Packet(socketio.PacketType.CONNECT, data=auth_payload or None)
                )
                with trio.fail_after(timeout):
                    await client._connected.wait()
                if client._connect_error is not None:
                    raise client._connect_error
                if client.sid is None:
                    raise Disconnected(client.disconnect_reason or "closed during connect")
                yield client
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
                    # trio-websocket leaves the stream open when the peer went first
                    await stream.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # the background tasks end quietly on a closed socket, so a group here holds the
        # one exception of the caller's own block (or of the handshake): raise it as is
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
