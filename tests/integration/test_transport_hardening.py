"""Transport hardening: what sockets that never authenticate, oversized binary packets,
slow consumers, descriptor exhaustion and pings during a close cost the server.

Raw WebSockets here are a wsproto client over an in-memory stream (or a real TCP
socket where the kernel's behaviour is the point), so a test sees and sends exactly the
frames on the wire, including ones a polite client would not send. The mock clock makes
timing exact.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import resource
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import wsproto
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

from collabtrio.client import Client, connect, socketio_resource
from collabtrio.config import Config
from collabtrio.server import Server
from collabtrio.storage.memory import MemoryStore
from collabtrio.testing import TEST_SECRET, TestServer, open_test_server
from collabtrio.transport import accept
from collabtrio.transport.endpoint import EngineEndpoint
from collabtrio.transport.limits import Admission
from collabtrio.transport.session import SocketIOSession

from .test_polling import POLLING, HttpConnection, connected_polling, handshake, upgrade_resource

PH0 = {"_placeholder": True, "num": 0}
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TRY_AGAIN_LATER = 1013


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Rejected(Exception):
    """The server refused the WebSocket handshake with an HTTP answer."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers
        self.body = body


class RawWs:
    """A raw client WebSocket (wsproto) on ``stream``: frames exactly as sent."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.messages: list[str | bytes] = []
        self.close: CloseConnection | None = None
        self._parts: list[str | bytes] = []

    async def open(self, target: str | None = None) -> None:
        """The handshake; :class:`Rejected` if the server answers with an error."""
        await self.stream.send_all(self.ws.send(Request(host="collabtrio.test",
                                                        target=target or socketio_resource())))
        status, headers, body = 0, {}, b""
        accepted = False
        while not accepted:
            data = await self.stream.receive_some(65536)
            if not data:
                raise Rejected(status, headers, body)
            self.ws.receive_data(bytes(data))
            # every event of this read: frames that came with the 101 (the Engine.IO
            # OPEN) are read now, not left in wsproto until more bytes arrive
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                elif isinstance(event, RejectConnection):
                    status = event.status_code
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    if not event.has_body:
                        raise Rejected(status, headers, body)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise Rejected(status, headers, body)
                else:
                    self._on_event(event)

    async def send(self, message: str | bytes) -> None:
        await self.stream.send_all(self.ws.send(
            TextMessage(message) if isinstance(message, str) else BytesMessage(message)))

    async def send_ping(self) -> None:
        await self.stream.send_all(self.ws.send(Ping(b"hi")))

    def _on_event(self, event: object) -> None:
        if isinstance(event, TextMessage | BytesMessage):
            self._parts.append(event.data)
            if event.message_finished:
                first = self._parts[0]
                whole: str | bytes = ("".join(p for p in self._parts if isinstance(p, str))
                                      if isinstance(first, str)
                                      else b"".join(p for p in self._parts
                                                    if isinstance(p, bytes)))
                self.messages.append(whole)
                self._parts = []
        elif isinstance(event, CloseConnection):
            self.close = event

    async def recv(self) -> str | bytes:
        """The next message that is not an Engine.IO ping (pings are answered);
        ``EOFError`` once the server closed."""
        while True:
            while self.messages:
                message = self.messages.pop(0)
                if message == "2":
                    await self.send("3")
                    continue
                return message
            if self.close is not None:
                raise EOFError(self.close.code)
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                raise EOFError(None)
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                self._on_event(event)

    async def closed(self) -> int | None:
        """Read until the server closes; the close code (messages are ignored)."""
        while True:
            try:
                await self.recv()
            except EOFError as exc:
                code: int | None = exc.args[0]
                return code

    async def connect(self, token: str) -> str:
        """OPEN, then a Socket.IO CONNECT with ``token``; the socket id."""
        opened = await self.recv()
        assert str(opened).startswith("0{"), opened
        await self.send("40" + json.dumps({"token": token}))
        answer = str(await self.recv())
        assert answer.startswith("40{"), answer
        sid: str = json.loads(answer[2:])["sid"]
        return sid

    async def ack(self, ack_id: int) -> Any:
        """The payload of ack ``ack_id`` (other messages are skipped)."""
        prefix = f"43{ack_id}["
        while True:
            message = await self.recv()
            if isinstance(message, str) and message.startswith(prefix):
                return json.loads(message[len(prefix) - 1:])[0]


@asynccontextmanager
async def raw_ws(server: TestServer, remote: str | None = None,
                 target: str | None = None) -> AsyncIterator[RawWs]:
    """A raw WebSocket to ``server`` from ``remote`` (``host:port``, as the front door
    would see it)."""
    client_end, server_end = trio.testing.memory_stream_pair()
    server.server.connect_stream(server_end, remote=remote)
    sock = RawWs(client_end)
    try:
        await sock.open(target)
        yield sock
    finally:
        with trio.CancelScope(shield=True):
            await client_end.aclose()


@asynccontextmanager
async def client_from(server: TestServer, remote: str, sub: str) -> AsyncIterator[Client]:
    """A Socket.IO client (the project's own) connected from ``remote``."""
    client_end, server_end = trio.testing.memory_stream_pair()
    server.server.connect_stream(server_end, remote=remote)
    async with connect(token=server.token(sub), stream=client_end) as client:
        yield client


def admission_of(server: TestServer) -> Admission:
    """The ``/socket.io/`` endpoint's session counts."""
    router = server.server._router
    assert router is not None
    endpoint = getattr(router.find_http("/socket.io/"), "__self__", None)
    assert isinstance(endpoint, EngineEndpoint)
    return endpoint.admission


def session_with(server: TestServer, sid: str) -> SocketIOSession:
    return next(s for s in server.server.connections if s.sid == sid)


# -- 1. binary attachments: bounded before and after authentication -----------------------


async def test_binary_event_past_max_event_bytes_is_refused_as_its_attachments_arrive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The running total is checked at each attachment: the event is refused with
    TOO_LARGE as soon as it passes the limit, before its last attachment is even sent;
    the rest are dropped unread, and the connection goes on."""
    async with open_test_server(max_event_bytes=10_000) as server, raw_ws(server) as sock:
        sid = await sock.connect(server.token("alice"))
        await sock.send('420["join",{"room":"r"}]')
        assert (await sock.ack(0))["ok"] is True
        data = [PH0, *({"_placeholder": True, "num": i} for i in range(1, 4))]
        await sock.send('454-7["broadcast",' + json.dumps({"room": "r", "event": "e",
                                                          "data": data}) + "]")
        await sock.send(b"a" * 6000)
        await sock.send(b"b" * 6000)  # past 10,000 bytes here
        refused = await sock.ack(7)
        assert refused["ok"] is False
        assert refused["error"]["code"] == "TOO_LARGE"
        assert "at least" in refused["error"]["message"]
        session = session_with(server, sid)
        assert session.decoder.discarding
        assert not session.decoder.pending
        await sock.send(b"c" * 6000)  # the two left: dropped as they arrive
        await sock.send(b"d" * 6000)
        await sock.send('428["cursor",{"room":"r","cursor":1}]')
        assert await sock.ack(8) == {"ok": True}
        assert not session.decoder.discarding


@pytest.mark.parametrize("packet", [
    '451-["join",{"_placeholder":true,"num":0}]',  # a binary event
    '42["join",{"room":"r"}]',
    "431[]",  # an ack
    "41",  # a disconnect
    "4abc",
])
async def test_any_packet_but_connect_before_connect_closes_the_session(
    autojump_clock: trio.testing.MockClock, packet: str,
) -> None:
    """Before its first CONNECT a socket may send nothing but CONNECT (and Engine.IO
    pings): anything else closes it at once (1002), and nothing of it is buffered."""
    async with open_test_server(connect_timeout_s=10) as server, raw_ws(server) as sock:
        assert str(await sock.recv()).startswith("0{")
        start = trio.current_time()
        await sock.send("2")  # an Engine.IO ping is fine
        assert await sock.recv() == "3"
        await sock.send(packet)
        assert await sock.closed() == CLOSE_PROTOCOL_ERROR
        assert trio.current_time() - start < 0.1  # not at the connect timeout
        await trio.testing.wait_all_tasks_blocked()
        assert not server.server.connections


async def test_after_a_disconnect_attachments_are_not_buffered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After ``41`` the socket is unauthenticated again: its events are ignored as
    before, and a binary event's attachments are dropped as they arrive."""
    async with open_test_server() as server, raw_ws(server) as sock:
        await sock.connect(server.token("alice"))
        session = next(iter(server.server.connections))
        await sock.send("41")
        await sock.send('451-["join",{"_placeholder":true,"num":0}]')
        await trio.testing.wait_all_tasks_blocked()
        assert not session.decoder.pending
        assert session.decoder.discarding
        await sock.send(b"x" * 50_000)
        await trio.testing.wait_all_tasks_blocked()
        assert not session.decoder.discarding
        assert session.decoder._buffers == []
        await sock.send("40" + json.dumps({"token": server.token("alice")}))
        assert str(await sock.recv()).startswith("40{")


# -- 2. unauthenticated sessions, bounded apart from max_connections ------------------------


async def test_unauthenticated_sockets_take_no_connection_slot_and_are_capped_per_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Sockets that never CONNECT from one address fill its per-address cap (past it:
    503 with a clear body); they do not count against max_connections, so legitimate
    clients from another address connect up to max_connections meanwhile."""
    async with open_test_server(max_connections=2, max_unauthenticated=100,
                                max_unauthenticated_per_address=3,
                                connect_timeout_s=30) as server:
        async with raw_ws(server, "203.0.113.9:1001") as a, \
                raw_ws(server, "203.0.113.9:1002") as b, \
                raw_ws(server, "203.0.113.9:1003") as c:
            with pytest.raises(Rejected) as info:
                async with raw_ws(server, "203.0.113.9:1004"):
                    pass
            assert info.value.status == 503
            body = json.loads(info.value.body)
            assert "max_unauthenticated_per_address" in body["message"]
            assert info.value.headers["retry-after"] == "30"
            async with client_from(server, "198.51.100.7:2000", "alice") as alice, \
                    client_from(server, "198.51.100.8:2000", "bob") as bob:
                assert (await alice.join("r"))["ok"] is True
                assert (await bob.join("r"))["ok"] is True
                admission = admission_of(server)
                assert (admission.connected, admission.unauthenticated) == (2, 3)
                # max_connections is still enforced, on the connected
                with pytest.raises(Rejected) as full:
                    async with raw_ws(server, "198.51.100.9:2000"):
                        pass
                assert full.value.status == 503
                assert "max_connections" in json.loads(full.value.body)["message"]
            del a, b, c


async def test_global_unauthenticated_cap_refuses_handshakes_of_both_transports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_unauthenticated caps unauthenticated sessions over every address, WebSocket
    and polling alike (503); the connect timeout frees them, on both transports."""
    async with open_test_server(max_unauthenticated=2, max_unauthenticated_per_address=100,
                                connect_timeout_s=5, anonymous=True) as server:
        polling, _ = await handshake(server)  # one polling session, no CONNECT
        async with raw_ws(server, "192.0.2.1:1") as ws:
            with pytest.raises(Rejected) as info:
                async with raw_ws(server, "192.0.2.2:1"):
                    pass
            assert info.value.status == 503
            assert "max_unauthenticated" in json.loads(info.value.body)["message"]
            conn = HttpConnection(server)
            refused = await conn.request("GET", POLLING)
            assert refused.status == 503
            assert "max_unauthenticated" in refused.json()["message"]
            # both time out without a CONNECT and free their places
            await ws.closed()
            await trio.sleep(5)
            assert admission_of(server).unauthenticated == 0
            async with raw_ws(server, "192.0.2.3:1") as again:
                assert str(await again.recv()).startswith("0{")
        del polling


async def test_connect_past_max_connections_is_closed_to_try_again_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Handshakes are not refused for connected slots that CONNECTs in progress may
    still take: the CONNECT that would pass max_connections closes its socket with
    1013 (try again later), a transport close stock clients retry after."""
    async with open_test_server(max_connections=1) as server:
        async with raw_ws(server) as first, raw_ws(server) as second:
            await first.connect(server.token("alice"))
            assert str(await second.recv()).startswith("0{")
            await second.send("40" + json.dumps({"token": server.token("bob")}))
            assert await second.closed() == CLOSE_TRY_AGAIN_LATER
            assert admission_of(server).connected == 1


# -- 3. out of file descriptors ------------------------------------------------------------


class FlakyListener(trio.abc.Listener[trio.SocketStream]):
    """Fails ``failures`` accepts with EMFILE, then gives one stream, then waits."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []

    async def accept(self) -> trio.SocketStream:
        self.calls.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if len(self.calls) <= self.failures:
            raise OSError(errno.EMFILE, "Too many open files")
        if len(self.calls) == self.failures + 1:
            return object()  # type: ignore[return-value]
        await trio.sleep_forever()
        raise AssertionError

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_backs_off_and_logs_once_per_episode(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    """EMFILE on accept: pauses doubling from 10 ms up to 0.5 s, one warning when it
    starts and one line when it recovers, with the count of failed accepts."""
    listener = FlakyListener(failures=12)
    served: list[object] = []

    async def handler(stream: trio.SocketStream) -> None:
        served.append(stream)

    caplog.set_level(logging.INFO, logger="collabtrio.transport.accept")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(accept.serve_listeners, handler, [listener],
                                             handler_nursery=nursery))
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in zip(listener.calls, listener.calls[1:], strict=False)]
    assert gaps[:12] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert len(served) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "collabtrio.transport.accept"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("accept failed: EMFILE")
    assert "recovered after 12 failed accepts" in lines[1]


async def test_start_raises_the_open_file_limit_and_warns_when_too_low(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At start the soft open-file limit goes up to the hard one; a configuration that
    needs more descriptors than that is warned about."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 512:
        pytest.skip("needs a finite hard limit above 512")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    caplog.set_level(logging.INFO, logger="collabtrio.transport.accept")
    try:
        config = Config(auth_secret=TEST_SECRET, db="memory://", port=0,
                        max_connections=hard + 10)
        server = Server(config, store=MemoryStore())
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
            server.shutdown()
        text = caplog.text
        assert f"raised from 256 to {hard}" in text
        assert f"open-file limit is {hard}, below the" in text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- 5. slow consumers: told first, never a torn frame -------------------------------------


async def test_slow_consumer_is_warned_before_it_is_disconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past half of outbox_max_bytes behind a blocked write the client gets a
    ``warning`` event, ahead of what is queued; then, at overflow, the
    ``slow-consumer`` error and the close."""
    limit = 16_384
    async with open_test_server(outbox_max_bytes=limit, rate_limit_per_s=10_000,
                                rate_limit_burst=10_000) as server, \
            server.client("fast") as fast, \
            server.client("slow", stream_pair=trio.testing.lockstep_stream_pair) as slow:
        await fast.join("r")
        await slow.join("r")
        await trio.testing.wait_all_tasks_blocked()
        slow.pause_reading()
        slow_session = session_with(server, slow.sid or "")
        for _ in range(400):
            await fast.call("broadcast", {"room": "r", "event": "e", "data": "y" * 200})
            if slow_session.close_reason is not None:
                break
        assert slow_session.close_reason == "slow-consumer"
        slow.resume_reading()
        names: list[str] = []
        payloads: dict[str, Any] = {}
        with pytest.raises(Exception):  # noqa: B017,PT011 - Disconnected at the end
            while True:
                name, data = await slow.next_event()
                names.append(name)
                payloads.setdefault(name, data)
        assert "warning" in names
        assert "error" in names
        assert names.index("warning") < names.index("error")
        assert payloads["warning"]["code"] == "SLOW_CONSUMER"
        assert payloads["warning"]["limitBytes"] == limit
        assert payloads["warning"]["queuedBytes"] * 2 > limit
        assert payloads["error"]["reason"] == "slow-consumer"


def _frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole server frames (opcode, payload) in ``data``, and the bytes left over."""
    frames: list[tuple[int, bytes]] = []
    at = 0
    while len(data) - at >= 2:
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        head = 2
        if length == 126:
            if len(data) - at < 4:
                break
            (length,), head = struct.unpack_from("!H", data, at + 2), 4
        elif length == 127:
            if len(data) - at < 10:
                break
            (length,), head = struct.unpack_from("!Q", data, at + 2), 10
        if len(data) - at < head + length:
            break
        frames.append((opcode, data[at + head:at + head + length]))
        at += head + length
    return frames, data[at:]


async def test_an_abandoned_write_aborts_the_connection_instead_of_tearing_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that stops reading over real TCP: when the server gives up on a write
    that is part-way through a frame, the client gets a reset, never an orderly end of
    stream after half a frame."""
    async with open_test_server(outbox_max_bytes=32_768, rate_limit_per_s=100_000,
                                rate_limit_burst=100_000, ping_interval_ms=10**8,
                                max_payload=10**6, max_event_bytes=10**6 - 1) as server:
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client_sock = trio.socket.socket()
        client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await client_sock.connect(listener.getsockname())
        server_sock, _ = await listener.accept()
        listener.close()
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        server.server.connect_stream(trio.SocketStream(server_sock))
        client = trio.SocketStream(client_sock)
        sock = RawWs(client)
        await sock.open()
        sid = await sock.connect(server.token("slow"))
        await sock.send('420["join",{"room":"r"}]')
        assert (await sock.ack(0))["ok"] is True
        leftover = sock.ws  # from here on the client reads nothing
        slow_session = session_with(server, sid)
        async with server.client("fast") as fast:
            await fast.join("r")
            for _ in range(200):
                await fast.emit("broadcast", {"room": "r", "event": "e", "data": "z" * 50_000})
                if slow_session.close_reason is not None:
                    break
            assert slow_session.close_reason == "slow-consumer"
            await trio.sleep(3)  # past the writer's grace: the write is abandoned
        received = bytearray()
        reset = False
        while True:
            try:
                data = await client.receive_some(1 << 20)
            except trio.BrokenResourceError:
                reset = True
                break
            if not data:
                break
            received += data
        del leftover
        frames, rest = _frames(bytes(received))
        # an orderly end only after whole frames, the close frame last; else a reset
        if not reset:
            assert rest == b""
            assert frames
            assert frames[-1][0] == 0x8
        assert reset or rest == b""
        await client.aclose()


# -- 6. pings while the server closes the socket --------------------------------------------


@pytest.mark.parametrize("what", ["websocket ping", "engine.io probe", "engine.io upgrade"])
async def test_pings_on_a_probe_while_the_session_closes_are_not_errors(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, what: str,
) -> None:
    """A polling session closed (here: shutdown) while a WebSocket probes it: pings
    and packets the client still sends on the probe are not answered after the close
    frame and end nothing with an exception (they used to: wsproto refused to frame a
    pong after the close, and the closed Engine.IO session refused packets)."""
    caplog.set_level(logging.INFO)
    async with open_test_server(anonymous=True) as server:
        polling, _ = await connected_polling(server)
        client_end, server_end = trio.testing.memory_stream_pair()
        server.server.connect_stream(server_end)
        sock = RawWs(client_end)
        await sock.open(upgrade_resource(polling))
        await sock.send("2probe")
        assert await sock.recv() == "3probe"
        for session in list(server.server.connections):
            session.close("server shutdown", 1001, notify=False)
        await trio.testing.wait_all_tasks_blocked()
        sent = 0
        try:
            for _ in range(3):
                if what == "websocket ping":
                    await sock.send_ping()
                elif what == "engine.io probe":
                    await sock.send("2probe")
                else:
                    await sock.send("5")
                sent += 1
                await trio.testing.wait_all_tasks_blocked()
        except trio.BrokenResourceError:
            pass  # the server has closed the probe: it may, once it is told
        assert sent >= 1
        assert await sock.closed() in (1001, None)
        await client_end.aclose()
        await trio.sleep(2)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_pings_while_a_websocket_session_is_kicked_are_not_errors(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    """WebSocket pings racing a server-side close of a WebSocket session (a kick, then
    shutdown) end nothing with an exception."""
    caplog.set_level(logging.INFO)
    async with open_test_server() as server, raw_ws(server) as sock:
        await sock.connect(server.token("alice"))
        for session in list(server.server.connections):
            session.close("kicked", 1008)
        try:
            for _ in range(3):
                await sock.send_ping()
        except trio.BrokenResourceError:
            pass  # the server has closed the connection already
        assert await sock.closed() in (1008, None)
        await trio.sleep(2)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
