"""What the Socket.IO project's protocol test suites check, checked here in CI.

The suites are ``docs/engine.io-protocol/v4-test-suite`` and
``docs/socket.io-protocol/v5-test-suite`` of socketio/socket.io. They need node and a
server listening on port 3000, so they cannot run in CI; the project's rule is that
what they check, these tests check too, in the project's own code, against the
in-process server of :mod:`collabtrio.testing` (mock clock: timing is exact).

The tests speak raw WebSocket (trio-websocket over an in-memory stream) and send raw
Engine.IO text such as ``"40"``, ``"2"``, ``"3"``, the way the suites do. The server
runs with the suites' settings: pingInterval 300 ms, pingTimeout 200 ms,
maxPayload 1000000, a 1 s connect timeout, anonymous users allowed (a token still
identifies its user).

Where a suite check relies on its reference test server (an echo ``message`` event,
an ``auth`` event echoing the CONNECT payload, a ``/custom`` namespace, the
``/engine.io/`` path), the test checks collabtrio's equivalent behaviour and its
docstring says so. The HTTP long-polling checks are in ``test_polling.py``; the polling
handshake's refusals are at the end of this file.

Suite check (EIO = Engine.IO v4 suite, SIO = Socket.IO v5 suite) -> test:

- EIO/SIO handshake, WebSocket, opens a session -> test_open_packet_fields
- EIO/SIO handshake, WebSocket, invalid EIO -> test_websocket_with_bad_eio_is_refused
- EIO/SIO handshake, WebSocket, invalid transport -> test_websocket_with_bad_transport_is_refused
- EIO/SIO handshake, polling, invalid EIO / transport / method ->
  test_bad_polling_handshake_is_refused (the rest of polling: test_polling.py)
- EIO message, WebSocket, plain text packet -> the SIO message tests (collabtrio reads
  every Engine.IO message as a Socket.IO packet: there is no echo)
- EIO message, WebSocket, binary packet -> test_stray_binary_message_*
- EIO message, WebSocket, invalid packet format -> test_invalid_engineio_packet_closes_socket
- EIO/SIO heartbeat, WebSocket, ping/pong -> test_heartbeat_keeps_an_answering_client
- EIO/SIO heartbeat, WebSocket, ping timeout -> test_silent_client_is_closed_after_ping_timeout
- EIO/SIO close, WebSocket, forcefully closes -> test_engineio_close_packet_closes_session
- EIO/SIO upgrade (probe, then UPGRADE) -> test_probe_is_answered_and_upgrade_is_ignored,
  test_websocket_with_sid_is_refused (no session to upgrade from)
- SIO connect, main namespace -> test_connect_main_namespace
- SIO connect, main namespace with a payload -> test_connect_with_auth_payload,
  test_connect_with_bad_token_is_refused_and_session_stays
- SIO connect, custom namespace (with and without payload), unknown namespace ->
  test_connect_unknown_namespace_is_refused
- SIO connect, invalid handshake -> test_invalid_packet_before_connect_closes_socket
- SIO connect, no handshake -> test_socket_without_connect_is_closed_after_connect_timeout
- SIO disconnect, main namespace -> test_disconnect_ends_namespace_keeps_engineio_session
- SIO disconnect, custom namespace -> test_disconnect_of_namespace_never_joined_is_ignored
- SIO message, plain-text packet -> test_plain_text_event_*
- SIO message, binary attachments -> test_binary_event_attachments_reach_other_member
- SIO message, plain-text packet with an ack -> test_event_with_ack_id_gets_ack_with_same_id
- SIO message, binary attachments and an ack -> test_binary_event_with_ack_*,
  test_ack_with_bytes_is_a_binary_ack
- SIO message, invalid format (3 cases) -> test_malformed_packet_after_connect_*
  (collabtrio deliberately answers instead of closing)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio
import trio.testing
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from collabtrio.client import socketio_resource
from collabtrio.testing import TestServer, open_test_server

# the settings the suites' reference server runs with
PING_INTERVAL_MS = 300
PING_TIMEOUT_MS = 200
CONNECT_TIMEOUT_S = 1.0
MAX_PAYLOAD = 1_000_000

# collabtrio's WebSocket close codes (docs/protocol.md, section 7)
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008

PLACEHOLDER_0 = {"_placeholder": True, "num": 0}
PLACEHOLDER_1 = {"_placeholder": True, "num": 1}


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@asynccontextmanager
async def suite_server(**overrides: Any) -> AsyncIterator[TestServer]:
    """An in-process server with the suites' settings (``overrides`` on top)."""
    settings: dict[str, Any] = {
        "anonymous": True,
        "ping_interval_ms": PING_INTERVAL_MS,
        "ping_timeout_ms": PING_TIMEOUT_MS,
        "connect_timeout_s": CONNECT_TIMEOUT_S,
        "max_payload": MAX_PAYLOAD,
    }
    settings.update(overrides)
    async with open_test_server(**settings) as server:
        yield server


class RawSocket:
    """A raw WebSocket to the server: Engine.IO packets as they are on the wire."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.opened_at = trio.current_time()

    async def send(self, message: str | bytes) -> None:
        await self.ws.send_message(message)

    async def recv(self) -> str | bytes:
        """The next message, pings included (ConnectionClosed if the server closed)."""
        return await self.ws.get_message()

    async def recv_packet(self) -> str | bytes:
        """The next message that is not a ping; pings on the way are answered."""
        while True:
            message = await self.ws.get_message()
            if message == "2":
                await self.ws.send_message("3")
                continue
            return message

    async def open_packet(self) -> dict[str, Any]:
        """The Engine.IO OPEN packet's JSON (the first message of every session)."""
        opened = json.loads(text(await self.recv(), "0")[1:])
        assert isinstance(opened, dict)
        return opened

    async def connect(self, payload: str = "") -> dict[str, Any]:
        """Send a Socket.IO CONNECT to ``/`` and return the ``40`` answer's JSON."""
        await self.send("40" + payload)
        data = json.loads(text(await self.recv_packet(), "40")[2:])
        assert isinstance(data, dict)
        return data

    async def closed(self, *, answer_pings: bool = True) -> CloseReason:
        """Read until the server closes; fail on any message that is not a ping."""
        with pytest.raises(ConnectionClosed) as info:
            while True:
                message = await self.ws.get_message()
                if message == "2":
                    if answer_pings:
                        await self.ws.send_message("3")
                    continue
                pytest.fail(f"expected the socket to close, got {message!r}")
        reason = info.value.reason
        assert reason is not None
        return reason

    async def stays_open(self, seconds: float) -> None:
        """Answer pings for ``seconds``; fail if the server closes or sends anything else."""
        with trio.move_on_after(seconds):
            try:
                message = await self.recv_packet()
            except ConnectionClosed as exc:
                pytest.fail(f"the server closed the socket: {exc.reason}")
            pytest.fail(f"unexpected message {message!r}")


@asynccontextmanager
async def raw_socket(server: TestServer, resource: str | None = None) -> AsyncIterator[RawSocket]:
    """A raw WebSocket to ``server`` at ``resource`` (default: a websocket-only
    Socket.IO connection). Raises ``ConnectionRejected`` if the upgrade is refused."""
    client_end, server_end = trio.testing.memory_stream_pair()
    server.server.connect_stream(server_end)
    try:
        async with trio.open_nursery() as nursery:
            try:
                ws = await wrap_client_stream(
                    nursery, client_end, "collabtrio.test",  # type: ignore[arg-type]
                    resource or socketio_resource(),
                )
                try:
                    yield RawSocket(ws)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await ws.aclose()
            finally:
                with trio.CancelScope(shield=True):
                    await client_end.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # trio-websocket's reader ends quietly: a group holds the test's own exception
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def rejection(server: TestServer, resource: str) -> ConnectionRejected:
    """The HTTP refusal of a WebSocket upgrade to ``resource``."""
    with pytest.raises(ConnectionRejected) as info:
        async with raw_socket(server, resource):
            pass
    return info.value


def json_body(rejected: ConnectionRejected) -> Any:
    headers = {bytes(k).lower(): bytes(v) for k, v in rejected.headers or []}
    assert headers[b"content-type"] == b"application/json"
    assert rejected.body is not None
    return json.loads(rejected.body)


def text(message: str | bytes, prefix: str) -> str:
    """``message``, checked to be a text message starting with ``prefix``."""
    assert isinstance(message, str), message
    assert message.startswith(prefix), message
    return message


def socketio_event(message: str | bytes) -> list[Any]:
    """``[name, *args]`` of a ``42`` text packet."""
    data = json.loads(text(message, "42")[2:])
    assert isinstance(data, list)
    return data


def ack(message: str | bytes, ack_id: int) -> list[Any]:
    """The arguments of a ``43<ack_id>`` packet."""
    prefix = f"43{ack_id}"
    args = json.loads(text(message, prefix + "[")[len(prefix):])
    assert isinstance(args, list)
    return args


# -- Engine.IO: handshake ---------------------------------------------------------------


async def test_open_packet_fields(autojump_clock: trio.testing.MockClock) -> None:
    """The first message is the OPEN packet with exactly the five v4 fields: a string
    sid, no upgrades (already on WebSocket), pingInterval and pingTimeout as
    configured, maxPayload 1000000."""
    async with suite_server() as server, raw_socket(server) as sock:
        opened = await sock.open_packet()
        assert set(opened) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
        assert isinstance(opened["sid"], str)
        assert opened["sid"]
        assert opened["upgrades"] == []
        assert opened["pingInterval"] == PING_INTERVAL_MS
        assert opened["pingTimeout"] == PING_TIMEOUT_MS
        assert opened["maxPayload"] == 1000000
        assert all(type(opened[k]) is int for k in ("pingInterval", "pingTimeout", "maxPayload"))


async def test_open_packet_follows_the_config(autojump_clock: trio.testing.MockClock) -> None:
    """pingInterval, pingTimeout and maxPayload are the configured values, not constants."""
    async with suite_server(ping_interval_ms=25000, ping_timeout_ms=20000,
                            max_payload=4096) as server, raw_socket(server) as sock:
        opened = await sock.open_packet()
        assert (opened["pingInterval"], opened["pingTimeout"], opened["maxPayload"]) == (
            25000, 20000, 4096)


@pytest.mark.parametrize("query", [
    "transport=websocket",
    "EIO=abc&transport=websocket",
    "EIO=3&transport=websocket",
    "EIO=5&transport=websocket",
])
async def test_websocket_with_bad_eio_is_refused(
    autojump_clock: trio.testing.MockClock, query: str
) -> None:
    """A WebSocket upgrade without ``EIO=4`` is refused with HTTP 400 and Engine.IO's
    JSON body, code 5 (the suites only see the socket close)."""
    async with suite_server() as server:
        refused = await rejection(server, "/socket.io/?" + query)
        assert refused.status_code == 400
        assert json_body(refused) == {
            "code": 5, "message": "unsupported Engine.IO version (EIO=4 required)"}
        assert not server.server.connections


@pytest.mark.parametrize(("query", "code"), [
    ("EIO=4", 0), ("EIO=4&transport=abc", 0), ("EIO=4&transport=polling", 3)])
async def test_websocket_with_bad_transport_is_refused(
    autojump_clock: trio.testing.MockClock, query: str, code: int
) -> None:
    """A WebSocket upgrade without ``transport=websocket`` gets HTTP 400 and JSON: code
    0 for an unknown transport, 3 (bad request) for ``polling`` with an upgrade."""
    async with suite_server() as server:
        refused = await rejection(server, "/socket.io/?" + query)
        assert refused.status_code == 400
        assert json_body(refused)["code"] == code


async def test_websocket_with_sid_of_a_websocket_session_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A WebSocket with the ``sid`` of a session that is already on WebSocket (nothing
    to upgrade) is accepted and closed at once, as the reference server does; one with
    the sid of no session gets 400; the live session is not disturbed."""
    async with suite_server() as server, raw_socket(server) as live:
        sid = (await live.open_packet())["sid"]
        async with raw_socket(server, socketio_resource({"sid": sid})) as second:
            assert (await second.closed()).code == 1008
        unknown = await rejection(server, socketio_resource({"sid": "no-such-sid"}))
        assert unknown.status_code == 400
        assert json_body(unknown) == {"code": 1, "message": "Session ID unknown"}
        assert await live.connect()
        assert len(server.server.connections) == 1


# -- Engine.IO: heartbeat, close, invalid packets, upgrade -----------------------------


async def test_heartbeat_keeps_an_answering_client(autojump_clock: trio.testing.MockClock) -> None:
    """The server pings (``2``) every pingInterval; a client answering ``3`` stays
    connected well past pingInterval + pingTimeout, and keeps working. (Engine.IO only:
    the connect timeout is raised so that no Socket.IO CONNECT is needed meanwhile.)"""
    async with suite_server(connect_timeout_s=60) as server, raw_socket(server) as sock:
        await sock.open_packet()
        for i in range(1, 4):
            assert await sock.recv() == "2"
            assert trio.current_time() - sock.opened_at == pytest.approx(i * 0.3, abs=1e-3)
            await sock.send("3")
        await sock.stays_open(2.0)
        assert (await sock.connect())["sid"]
        assert len(server.server.connections) == 1


async def test_silent_client_is_closed_after_ping_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that never answers pings is closed pingInterval + pingTimeout after
    the OPEN packet (the ping goes out at pingInterval), not before."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        assert await sock.recv() == "2"
        assert trio.current_time() - sock.opened_at == pytest.approx(0.3, abs=1e-3)
        reason = await sock.closed(answer_pings=False)
        assert trio.current_time() - sock.opened_at == pytest.approx(0.5, abs=1e-3)
        assert (reason.code, reason.reason) == (CLOSE_NORMAL, "ping timeout")
        await trio.sleep(0.01)
        assert not server.server.connections


async def test_silent_connected_client_is_closed_after_ping_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same with the default timings and a connected Socket.IO socket: closed at
    25 + 20 s, with no Socket.IO DISCONNECT first."""
    async with suite_server(ping_interval_ms=25000, ping_timeout_ms=20000) as server:
        async with raw_socket(server) as sock:
            await sock.open_packet()
            await sock.connect()
            assert await sock.recv() == "2"
            reason = await sock.closed(answer_pings=False)
            assert trio.current_time() - sock.opened_at == pytest.approx(45, abs=1e-3)
            assert reason.code == CLOSE_NORMAL


@pytest.mark.parametrize("connected", [False, True])
async def test_engineio_close_packet_closes_session(
    autojump_clock: trio.testing.MockClock, connected: bool
) -> None:
    """An Engine.IO CLOSE (``1``) from the client ends the session at once."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        if connected:
            await sock.connect()
        start = trio.current_time()
        await sock.send("1")
        reason = await sock.closed()
        assert trio.current_time() == start
        assert (reason.code, reason.reason) == (CLOSE_NORMAL, "client close")
        await trio.sleep(0.01)
        assert not server.server.connections


@pytest.mark.parametrize("connected", [False, True])
@pytest.mark.parametrize("packet", ["abc", "", "7", "0"])
async def test_invalid_engineio_packet_closes_socket(
    autojump_clock: trio.testing.MockClock, packet: str, connected: bool
) -> None:
    """An invalid Engine.IO packet (unknown type, empty, or an OPEN from the client)
    closes the socket with 1002, before and after the Socket.IO CONNECT."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        if connected:
            await sock.connect()
        await sock.send(packet)
        reason = await sock.closed()
        assert reason.code == CLOSE_PROTOCOL_ERROR
        assert str(reason.reason).startswith("protocol error")


async def test_probe_is_answered_and_upgrade_is_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The upgrade exchange on a plain WebSocket: the probe ``2probe`` gets ``3probe``,
    a client ping ``2`` gets ``3``, and the UPGRADE ``5`` (nothing to upgrade from) is
    ignored: no answer, and the connection keeps working."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.send("2probe")
        assert await sock.recv() == "3probe"
        await sock.send("2")
        assert await sock.recv() == "3"
        await sock.send("5")
        await sock.send("6")  # a noop is ignored too
        assert await sock.connect()
        await sock.send('420["join",{"room":"r"}]')
        assert ack(await sock.recv_packet(), 0)[0]["ok"] is True
        await sock.stays_open(1.0)
        assert len(server.server.connections) == 1


async def test_stray_binary_message_before_connect_closes_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The suite's binary echo does not apply: binary Engine.IO messages carry Socket.IO
    attachments. One that no binary packet announced, before CONNECT, closes (1002)."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.send(b"\x01\x02\x03\x04")
        assert (await sock.closed()).code == CLOSE_PROTOCOL_ERROR


async def test_stray_binary_message_after_connect_is_a_validation_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After CONNECT, an attachment nothing announced is a malformed packet: an
    ``operation-error`` of type VALIDATION, and the connection stays."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.connect()
        await sock.send(b"\x01\x02\x03\x04")
        name, error = socketio_event(await sock.recv_packet())
        assert name == "operation-error"
        assert error["type"] == "VALIDATION"
        assert error["message"].startswith("malformed packet: ")
        assert (error["event"], error["retryable"]) == (None, False)
        await sock.send('421["join",{"room":"r"}]')
        assert ack(await sock.recv_packet(), 1)[0]["ok"] is True


# -- Socket.IO: connect ----------------------------------------------------------------


async def test_connect_main_namespace(autojump_clock: trio.testing.MockClock) -> None:
    """``40`` gets ``40{"sid":...}``: an object with only a string ``sid``, which is not
    the Engine.IO sid. (The reference server then emits an ``auth`` event echoing the
    CONNECT payload; collabtrio sends nothing more: its first event is an answer.)"""
    async with suite_server() as server, raw_socket(server) as sock:
        engine_sid = (await sock.open_packet())["sid"]
        await sock.send("40")
        handshake = json.loads(text(await sock.recv(), "40")[2:])
        assert set(handshake) == {"sid"}
        assert isinstance(handshake["sid"], str)
        assert handshake["sid"]
        assert handshake["sid"] != engine_sid
        await sock.stays_open(0.2)  # nothing else before the first ping


async def test_connect_with_auth_payload(autojump_clock: trio.testing.MockClock) -> None:
    """The reference server echoes the CONNECT payload in an ``auth`` event; collabtrio
    reads the payload's ``token``: ``40{"token": ...}`` connects as that token's user,
    which the join ack's presence shows."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        token = server.token("alice", name="Alice")
        handshake = await sock.connect(json.dumps({"token": token}))
        assert set(handshake) == {"sid"}
        await sock.send('427["join",{"room":"r"}]')
        joined = ack(await sock.recv_packet(), 7)[0]
        assert joined["ok"] is True
        [me] = joined["presence"]["users"]
        assert (me["socketId"], me["userId"], me["userName"]) == (handshake["sid"], "alice",
                                                                  "Alice")


async def test_connect_with_bad_token_is_refused_and_session_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The suite's ``40{"token":"123"}``: collabtrio checks the token, so it gets a
    CONNECT_ERROR ``44{"message", "data": {"code": "INVALID_TOKEN", "message"}}``;
    the Engine.IO session stays and a CONNECT with a valid token then works."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.send('40{"token":"123"}')
        refusal = json.loads(text(await sock.recv(), "44{")[2:])
        assert set(refusal) == {"message", "data"}
        assert refusal["data"]["code"] == "INVALID_TOKEN"
        assert refusal["data"]["message"] == refusal["message"]
        assert (await sock.connect(json.dumps({"token": server.token("bob")})))["sid"]


@pytest.mark.parametrize(("packet", "namespace"), [
    ("40/custom,", "/custom"),
    ('40/custom,{"token":"abc"}', "/custom"),
    ("40/random", "/random"),
    ("40/random,", "/random"),
])
async def test_connect_unknown_namespace_is_refused(
    autojump_clock: trio.testing.MockClock, packet: str, namespace: str
) -> None:
    """collabtrio serves only ``/``; the suites' ``/custom`` namespace is unknown here.
    A CONNECT to it (with or without payload, with or without the comma) gets exactly
    ``44<nsp>,{"message":"Invalid namespace"}``, and the session stays: ``/`` connects."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.send(packet)
        assert await sock.recv() == f'44{namespace},{{"message":"Invalid namespace"}}'
        assert (await sock.connect())["sid"]


async def test_invalid_packet_before_connect_closes_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An invalid Socket.IO handshake (``4abc``: unknown packet type) closes the socket
    (1002), as with the reference server."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.send("4abc")
        reason = await sock.closed()
        assert reason.code == CLOSE_PROTOCOL_ERROR
        await trio.sleep(0.01)
        assert not server.server.connections


async def test_socket_without_connect_is_closed_after_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A socket that sends no Socket.IO CONNECT is closed connect_timeout_s after it
    opened (1008), even though it answers every ping."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        reason = await sock.closed(answer_pings=True)
        assert trio.current_time() - sock.opened_at == pytest.approx(CONNECT_TIMEOUT_S,
                                                                      abs=1e-3)
        assert (reason.code, reason.reason) == (CLOSE_POLICY, "connect timeout")


async def test_connected_socket_outlives_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A socket that did CONNECT is not closed by the connect timeout."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.connect()
        await sock.stays_open(3 * CONNECT_TIMEOUT_S)


# -- Socket.IO: disconnect -------------------------------------------------------------


async def test_disconnect_ends_namespace_keeps_engineio_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``41`` ends the namespace ``/`` but not the Engine.IO session: the next message
    is the server's ping, events are ignored (no ack) until a new CONNECT, the client
    leaves its rooms, and a new ``40`` connects again."""
    async with suite_server() as server, raw_socket(server) as sock:
        async with server.client("watcher") as watcher:
            await watcher.join("r")
            await sock.open_packet()
            first_sid = (await sock.connect())["sid"]
            await sock.send('420["join",{"room":"r"}]')
            assert ack(await sock.recv_packet(), 0)[0]["ok"] is True
            presence = await watcher.next_event("presence")
            assert presence["connections"] == 2

            await sock.send("41")
            await sock.send('421["join",{"room":"r"}]')  # not connected: ignored
            assert await sock.recv() == "2"  # the Engine.IO session is still pinged
            assert trio.current_time() - sock.opened_at == pytest.approx(0.3, abs=1e-3)
            await sock.send("3")
            presence = await watcher.next_event("presence")
            assert presence["connections"] == 1  # left the room: no ghost

            second_sid = (await sock.connect())["sid"]
            assert second_sid
            assert second_sid != first_sid  # a new socket, a new id
            await sock.send('422["join",{"room":"r"}]')
            assert ack(await sock.recv_packet(), 2)[0]["ok"] is True
            assert len(server.server.connections) == 2


async def test_socket_disconnected_from_namespace_gets_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After ``41`` the socket holds no namespace: like a new one, it is closed
    connect_timeout_s later unless it sends a new CONNECT."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.connect()
        await trio.sleep(0.1)
        start = trio.current_time()
        await sock.send("41")
        reason = await sock.closed()
        assert trio.current_time() - start == pytest.approx(CONNECT_TIMEOUT_S, abs=1e-3)
        assert reason.code == CLOSE_POLICY


@pytest.mark.parametrize("disconnect", ["41/custom,", "41/custom"])
async def test_disconnect_of_namespace_never_joined_is_ignored(
    autojump_clock: trio.testing.MockClock, disconnect: str
) -> None:
    """The suite connects to ``/custom`` then disconnects from it and checks that ``/``
    still works. ``/custom`` is unknown here (its CONNECT gets ``44``), so its
    DISCONNECT is for a namespace the client never joined: it is ignored, and the next
    event on ``/`` is answered as usual."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.connect()
        await sock.send("40/custom,")
        assert await sock.recv_packet() == '44/custom,{"message":"Invalid namespace"}'
        await sock.send(disconnect)
        await sock.send('425["join",{"room":"r"}]')
        assert ack(await sock.recv_packet(), 5)[0]["ok"] is True
        await sock.stays_open(1.5)


# -- Socket.IO: messages ----------------------------------------------------------------


async def test_plain_text_event_unknown_to_the_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """collabtrio has no echo ``message`` event: the suite's packet
    ``42["message",1,"2",{"3":[true]}]`` gets an ``operation-error`` UNKNOWN_EVENT
    naming the event, and the connection stays."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.connect()
        await sock.send('42["message",1,"2",{"3":[true]}]')
        name, error = socketio_event(await sock.recv_packet())
        assert name == "operation-error"
        assert (error["type"], error["event"], error["retryable"]) == (
            "UNKNOWN_EVENT", "message", False)
        await sock.stays_open(1.0)


async def test_plain_text_event_reaches_other_member_as_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """collabtrio's equivalent of the echo: a ``broadcast`` with the suite's arguments
    reaches the other member as a ``42`` packet with the data unchanged."""
    async with suite_server() as server:
        async with raw_socket(server) as alice, raw_socket(server) as bob:
            for sock in (alice, bob):
                await sock.open_packet()
                await sock.connect()
                await sock.send('420["join",{"room":"r"}]')
                assert ack(await sock.recv_packet(), 0)[0]["ok"] is True
            socketio_event(await alice.recv_packet())  # presence: bob joined
            await alice.send('42["broadcast",{"room":"r","event":"message",'
                             '"data":[1,"2",{"3":[true]}]}]')
            name, relayed = socketio_event(await bob.recv_packet())
            assert name == "broadcast"
            assert (relayed["event"], relayed["data"]) == ("message", [1, "2", {"3": [True]}])


async def test_event_with_ack_id_gets_ack_with_same_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``42456[...]`` gets exactly one ``43456[...]``: the suite's unknown
    ``message-with-ack`` event gets an error ack, a known event its result."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.connect()
        await sock.send('42456["message-with-ack",1,"2",{"3":[false]}]')
        [refused] = ack(await sock.recv_packet(), 456)
        assert refused["ok"] is False
        assert (refused["error"]["code"], refused["error"]["retryable"]) == (
            "UNKNOWN_EVENT", False)
        await sock.send('42457["join",{"room":"r"}]')
        [joined] = ack(await sock.recv_packet(), 457)
        assert (joined["ok"], joined["room"]) == (True, "r")
        await sock.stays_open(1.0)  # one ack each, nothing more


async def _joined_pair(alice: RawSocket, bob: RawSocket) -> None:
    for sock in (alice, bob):
        await sock.open_packet()
        await sock.connect()
        await sock.send('420["join",{"room":"r"}]')
        assert ack(await sock.recv_packet(), 0)[0]["ok"] is True
    assert socketio_event(await alice.recv_packet())[0] == "presence"


async def test_binary_event_attachments_reach_other_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A BINARY_EVENT with two attachments (``452-[...]`` then two binary messages) is
    reassembled and relayed as ``452-[...]`` with the placeholders in order, followed
    by the same two binary messages."""
    async with suite_server() as server:
        async with raw_socket(server) as alice, raw_socket(server) as bob:
            await _joined_pair(alice, bob)
            await alice.send('452-["broadcast",{"room":"r","event":"e","data":'
                             '[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]}]')
            await alice.send(bytes([1, 2, 3]))
            await alice.send(bytes([4, 5, 6]))
            name, relayed = json.loads(text(await bob.recv_packet(), "452-[")[4:])
            assert name == "broadcast"
            assert relayed["data"] == [PLACEHOLDER_0, PLACEHOLDER_1]
            assert await bob.recv() == bytes([1, 2, 3])
            assert await bob.recv() == bytes([4, 5, 6])


async def test_binary_event_with_ack_gets_ack_with_same_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``452-789[...]`` and its two attachments get one ack ``43789[...]`` (a plain ACK:
    the answer holds no bytes), and the other member gets the bytes."""
    async with suite_server() as server:
        async with raw_socket(server) as alice, raw_socket(server) as bob:
            await _joined_pair(alice, bob)
            await alice.send('452-789["broadcast",{"room":"r","event":"e","data":'
                             '[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]}]')
            await alice.send(bytes([1, 2, 3]))
            await alice.send(bytes([4, 5, 6]))
            assert ack(await alice.recv_packet(), 789) == [{"ok": True}]
            text(await bob.recv_packet(), "452-[")
            assert [await bob.recv(), await bob.recv()] == [bytes([1, 2, 3]), bytes([4, 5, 6])]


async def test_ack_with_bytes_is_a_binary_ack(autojump_clock: trio.testing.MockClock) -> None:
    """An ack whose payload holds bytes is a BINARY_ACK ``46<n>-<id>[...]`` followed by
    its attachments: bob's cursor (sent with an attachment) is in alice's join ack."""
    async with suite_server() as server:
        async with raw_socket(server) as alice, raw_socket(server) as bob:
            await bob.open_packet()
            await bob.connect()
            await bob.send('420["join",{"room":"r"}]')
            assert ack(await bob.recv_packet(), 0)[0]["ok"] is True
            await bob.send('451-["cursor",{"room":"r","cursor":{"_placeholder":true,"num":0}}]')
            await bob.send(b"\x07\x08")
            await alice.open_packet()
            await alice.connect()
            await alice.send('42789["join",{"room":"r"}]')
            head = text(await alice.recv_packet(), "461-789[")
            [joined] = json.loads(head[len("461-789"):])
            cursors = [u["cursor"] for u in joined["presence"]["users"]]
            assert PLACEHOLDER_0 in cursors
            assert await alice.recv() == b"\x07\x08"


@pytest.mark.parametrize(("packet", "why"), [
    ("4abc", "unknown packet type 'a'"),
    ("42{}", "EVENT data must be a non-empty array"),
    ('42abc["message-with-ack",1,"2",{"3":[false]}]', "invalid JSON payload"),
])
async def test_malformed_packet_after_connect_is_answered_and_connection_stays(
    autojump_clock: trio.testing.MockClock, packet: str, why: str
) -> None:
    """Deliberate difference from the reference server, which closes the connection on
    an unknown packet type, a non-array event payload or a bad ack id: collabtrio
    (docs/protocol.md, "Socket.IO") answers a malformed packet after CONNECT with an
    ``operation-error`` ``{type: "VALIDATION", message: "malformed packet: ...",
    event: null, retryable: false}`` and keeps the connection, which goes on working."""
    async with suite_server() as server, raw_socket(server) as sock:
        await sock.open_packet()
        await sock.connect()
        await sock.send(packet)
        name, error = socketio_event(await sock.recv_packet())
        assert name == "operation-error"
        assert set(error) == {"type", "message", "event", "retryable"}
        assert (error["type"], error["event"], error["retryable"]) == ("VALIDATION", None, False)
        assert error["message"].startswith(f"malformed packet: {why}")
        await sock.send('423["join",{"room":"r"}]')
        assert ack(await sock.recv_packet(), 3)[0]["ok"] is True
        await sock.stays_open(1.5)
        assert len(server.server.connections) == 1


# -- HTTP long-polling: the handshake's refusals (the rest: test_polling.py) -------------


async def _http(server: TestServer, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on a fresh connection: (status, headers, body)."""
    client_end, server_end = trio.testing.memory_stream_pair()
    server.server.connect_stream(server_end)
    conn = h11.Connection(h11.CLIENT)
    headers = [("host", "collabtrio.test"), ("content-length", "0")]
    await client_end.send_all(conn.send(h11.Request(method=method, target=target,
                                                     headers=headers))
                              + conn.send(h11.EndOfMessage()))
    status, response_headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await client_end.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
            response_headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
    await client_end.aclose()
    return status, response_headers, body


@pytest.mark.parametrize(("method", "query", "code"), [
    ("GET", "transport=polling", 5),  # invalid EIO
    ("GET", "EIO=abc&transport=polling", 5),
    ("GET", "EIO=4", 0),  # invalid transport
    ("GET", "EIO=4&transport=abc", 0),
    ("POST", "EIO=4&transport=polling", 2),  # invalid handshake method
    ("PUT", "EIO=4&transport=polling", 2),
])
async def test_bad_polling_handshake_is_refused(
    autojump_clock: trio.testing.MockClock, method: str, query: str, code: int
) -> None:
    """The suites' polling handshake checks: 400 for a bad EIO, transport or method,
    with Engine.IO's JSON body and code (5, 0 and 2), and no session is made."""
    async with suite_server() as server:
        status, headers, body = await _http(server, method, "/socket.io/?" + query)
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["code"] == code
        assert not server.server.connections
