"""HTTP long-polling on ``/socket.io/``, and its upgrade to WebSocket, as clients see them.

Every request is raw HTTP/1.1 over an in-memory stream to the in-process server
(:mod:`collabtrio.testing`), parsed client-side with h11. A polling session sends its
requests the way socket.io-client does: on keep-alive connections from a small pool,
so a held ``GET`` and a ``POST`` run on two connections at the same time. WebSockets
are raw (trio-websocket over an in-memory stream), so the tests see Engine.IO packets
exactly as they are on the wire. The mock clock makes timing exact.

Suite checks (EIO = the Engine.IO v4 test suite, SIO = the Socket.IO v5 test suite,
both ``docs/*/test-suite.js`` of socketio/socket.io) -> tests here:

- EIO/SIO handshake, polling, successfully opens a session -> test_handshake_open_packet
- EIO/SIO handshake, polling, invalid EIO / transport / method ->
  test_protocol_conformance.test_bad_polling_handshake_is_refused; here also
  test_requests_with_unknown_or_wrong_sid_are_refused
- EIO message, polling, one / several plain text packets: collabtrio reads every
  message as Socket.IO (there is no echo) -> test_connect_and_acked_join_over_polling,
  test_several_packets_in_one_post_are_answered_in_order,
  test_several_engineio_packets_in_one_post_are_answered_in_one_get
- EIO message, polling, plain text and binary packets ->
  test_binary_event_posted_reaches_websocket_member,
  test_binary_event_from_websocket_reaches_polling_member, test_binary_ack_over_polling
- EIO message, polling, closes the session upon invalid packet format ->
  test_invalid_payload_closes_session
- EIO message, polling, closes the session upon duplicate poll requests ->
  test_overlapping_polls_close_session
- EIO message, polling, closes the session upon cancelled polling request ->
  test_poll_closed_by_the_client_ends_session
- EIO/SIO heartbeat, polling, sends ping/pong packets -> test_polls_are_answered_with_pings
- EIO/SIO heartbeat, polling, closes the session upon ping timeout ->
  test_silent_session_is_gone_after_ping_timeout, test_waiting_poll_gets_close_at_ping_timeout
- EIO/SIO close, polling, forcefully closes the session ->
  test_close_packet_answers_waiting_poll_with_noop
- EIO/SIO upgrade, successfully upgrades from polling to WebSocket ->
  test_upgrade_to_websocket (the GET answered ``6``, held or next), then
  test_heartbeat_moves_to_the_websocket, test_upgrade_before_socketio_connect
- EIO/SIO upgrade, ignores HTTP requests with same sid after upgrade ->
  test_upgrade_to_websocket (a GET and a POST get 400, the WebSocket goes on)
- EIO/SIO upgrade, ignores WebSocket connection with same sid after upgrade ->
  test_second_websocket_with_same_sid_is_closed
- SIO connect, main namespace with a payload (``auth``) -> test_token_authenticates_polling_connect,
  test_bad_token_gets_connect_error

collabtrio's own contract for long-polling, beyond the suites:

- authentication: a Bearer header or ``?token=`` on the handshake, or ``auth.token``
  -> test_token_authenticates_polling_connect, test_bad_token_gets_connect_error
- server-side closes answer a held GET with what is queued, then ``1`` ->
  test_token_expiry_answers_waiting_poll_with_disconnect_and_close,
  test_connect_timeout_answers_waiting_poll_with_close,
  test_flood_while_a_poll_is_held_ends_it_with_the_slow_consumer_error
- one POST at a time -> test_overlapping_posts_are_refused; maxPayload ->
  test_post_larger_than_max_payload_gets_413
- the upgrade: abandoned or broken probes -> test_abandoned_probe_leaves_session_on_polling,
  test_probe_that_breaks_the_protocol_leaves_session_on_polling,
  test_probe_that_never_completes_is_closed; ordering ->
  test_no_message_lost_or_repeated_across_the_upgrade,
  test_post_handled_during_the_upgrade_is_answered_once; afterwards ->
  test_upgraded_websocket_that_drops_ends_the_session,
  test_upgrade_with_the_sid_of_a_closed_session_is_refused
- CORS and Origin -> the test_cors_* tests, test_websocket_upgrade_checks_origin,
  test_without_cors_configuration_only_same_origin_is_allowed
- slow consumers -> test_polling_member_that_stops_polling_is_disconnected,
  test_volatile_flood_does_not_disconnect_a_polling_member
- shutdown -> test_graceful_shutdown_answers_held_poll_with_close (cancelling the
  server instead tears everything down at once, WebSockets included, by design)
- the rest -> test_max_connections_counts_polling_sessions,
  test_non_ascii_text_round_trips_over_polling,
  test_socketio_disconnect_over_polling_keeps_engineio_session
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from collabtrio.client import Client
from collabtrio.storage.memory import MemoryStore
from collabtrio.testing import TestServer, open_test_server
from collabtrio.transport.session import SocketIOSession

HOST = "collabtrio.test"
RS = "\x1e"  # Engine.IO's record separator in long-polling payloads
PATH = "/socket.io/?EIO=4"
POLLING = PATH + "&transport=polling"
WS_PATH = PATH + "&transport=websocket"

# the suites' settings, for the heartbeat tests
SUITE_PING_INTERVAL_MS = 300
SUITE_PING_TIMEOUT_MS = 200
KEEP_ALIVE_S = 5.0  # Config.http_keep_alive_s's default

PLACEHOLDER_0 = {"_placeholder": True, "num": 0}
JOIN_R = '["join",{"room":"r"}]'


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@asynccontextmanager
async def polling_server(**overrides: Any) -> AsyncIterator[TestServer]:
    """An in-process server; anonymous users allowed unless ``overrides`` say not."""
    settings: dict[str, Any] = {"anonymous": True}
    settings.update(overrides)
    async with open_test_server(**settings) as server:
        yield server


# -- raw HTTP -----------------------------------------------------------------------------


class ConnectionGone(Exception):
    """The server closed the HTTP connection instead of answering."""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)

    def records(self) -> list[str]:
        """The long-polling payload's records (a 200 text/plain answer to a GET)."""
        assert self.status == 200, (self.status, self.body)
        assert self.headers["content-type"].startswith("text/plain"), self.headers
        return self.text.split(RS)


class HttpConnection:
    """One client HTTP/1.1 connection: requests out through h11, responses in."""

    def __init__(self, server: TestServer) -> None:
        self.stream, server_end = trio.testing.memory_stream_pair()
        server.server.connect_stream(server_end)
        self._h11 = h11.Connection(h11.CLIENT)
        self.idle_since = trio.current_time()

    @property
    def reusable(self) -> bool:
        """The last exchange ended cleanly and the server keeps the connection open."""
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def request(self, method: str, target: str,
                      headers: Sequence[tuple[str, str]] = (), body: bytes | None = None,
                      *, chunked: bool = False) -> Response:
        conn = self._h11
        if self.reusable:
            conn.start_next_cycle()
        all_headers = [("host", HOST), *headers]
        if chunked:
            all_headers.append(("transfer-encoding", "chunked"))
        elif body is not None:
            all_headers.append(("content-length", str(len(body))))
        data = conn.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
        if body:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        return await self._response()

    async def _response(self) -> Response:
        conn = self._h11
        response: Response | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ConnectionGone(str(exc)) from None
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Response):
                response = Response(event.status_code, {
                    k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers})
            elif isinstance(event, h11.Data):
                assert response is not None
                response.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                self.idle_since = trio.current_time()
                return response
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionGone("closed")
            else:
                pytest.fail(f"unexpected {event!r}")

    async def closed_by_server(self) -> None:
        """Wait until the server closes the connection, with nothing more sent."""
        assert self._h11.trailing_data[0] == b""
        data = await self.stream.receive_some(65536)
        assert data == b"", f"expected the connection to close, got {bytes(data)!r}"

    async def aclose(self) -> None:
        await self.stream.aclose()


class Polling:
    """One Engine.IO long-polling session, driven as a client would.

    Requests go on keep-alive connections from a pool: an idle connection is reused
    (unless the server's keep-alive wait is nearly over), a busy one is not, so a held
    ``GET`` and a ``POST`` run on two connections at once.
    """

    def __init__(self, server: TestServer, sid: str,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        self.server = server
        self.sid = sid
        self.headers = list(headers)
        self._idle: list[HttpConnection] = []
        self.connections_opened = 0

    def target(self, extra: str = "") -> str:
        return f"{POLLING}&sid={self.sid}{extra}"

    def keep(self, conn: HttpConnection) -> None:
        """Put ``conn`` (idle, reusable) in the pool."""
        if conn.reusable:
            self._idle.append(conn)

    async def _take(self) -> HttpConnection:
        while self._idle:
            conn = self._idle.pop()
            if trio.current_time() - conn.idle_since < KEEP_ALIVE_S - 0.5:
                return conn
            await conn.aclose()  # the server is about to close it
        self.connections_opened += 1
        return HttpConnection(self.server)

    async def request(self, method: str, body: bytes | None = None, *, extra: str = "",
                      headers: Sequence[tuple[str, str]] = ()) -> Response:
        conn = await self._take()
        try:
            response = await conn.request(method, self.target(extra),
                                          [*self.headers, *headers], body)
        except BaseException:
            with trio.CancelScope(shield=True):
                await conn.aclose()
            raise
        if conn.reusable:
            self._idle.append(conn)
        else:
            await conn.aclose()
        return response

    async def get(self, extra: str = "") -> Response:
        return await self.request("GET", extra=extra)

    async def post(self, body: str | bytes, *,
                   headers: Sequence[tuple[str, str]] = ()) -> Response:
        data = body.encode("utf-8") if isinstance(body, str) else body
        return await self.request("POST", data, headers=[("content-type",
                                                          "text/plain;charset=UTF-8"),
                                                         *headers])

    async def post_ok(self, body: str) -> None:
        """POST ``body``; the server must answer 200 ``ok``."""
        response = await self.post(body)
        assert (response.status, response.body) == (200, b"ok"), response

    async def poll(self) -> list[str]:
        """GET; the records of the 200 answer."""
        return (await self.get()).records()

async def handshake(server: TestServer, query: str = "",
                    headers: Sequence[tuple[str, str]] = ()) -> tuple[Polling, dict[str, Any]]:
    """Open a polling session: the session and its OPEN packet's JSON."""
    conn = HttpConnection(server)
    response = await conn.request("GET", POLLING + query, headers)
    [opened] = response.records()
    assert opened.startswith("0{"), opened
    info = json.loads(opened[1:])
    polling = Polling(server, info["sid"], headers)
    polling.keep(conn)
    return polling, info


async def connect(polling: Polling, payload: str = "") -> dict[str, Any]:
    """Socket.IO CONNECT over polling: POST ``40``; the ``40{...}`` answer's JSON."""
    await polling.post_ok("40" + payload)
    [record] = await polling.poll()
    assert record.startswith("40{"), record
    data = json.loads(record[2:])
    assert isinstance(data, dict)
    return data


async def connected_polling(server: TestServer, query: str = "",
                            headers: Sequence[tuple[str, str]] = (),
                            room: str | None = "r") -> tuple[Polling, str]:
    """A polling client connected to ``/`` (and in ``room``): the session and its
    Socket.IO sid."""
    polling, _ = await handshake(server, query, headers)
    sid = (await connect(polling))["sid"]
    if room is not None:
        await polling.post_ok(f'4299["join",{{"room":"{room}"}}]')
        [record] = await polling.poll()
        assert ack(record, 99)[0]["ok"] is True
    return polling, sid


class Pending:
    """A request running in the background (a held GET, usually)."""

    def __init__(self) -> None:
        self.response: Response | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()

    async def result(self) -> Response:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


async def start_get(nursery: trio.Nursery, polling: Polling, extra: str = "") -> Pending:
    """Send a GET in the background and return once the server holds it."""
    pending = Pending()

    async def run() -> None:
        try:
            pending.response = await polling.get(extra)
        except (ConnectionGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            pending.error = exc
        finally:
            pending.done.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return pending


def assert_engine_error(response: Response, status: int, code: int,
                        message: str | None = None) -> None:
    """An Engine.IO error answer: ``status`` with ``{"code", "message"}``."""
    assert response.status == status, (response.status, response.body)
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code
    if message is not None:
        assert body["message"] == message


async def assert_session_gone(polling: Polling) -> None:
    """A GET with the session's sid gets 400, code 1 (the session is unknown)."""
    assert_engine_error(await polling.get(), 400, 1, "Session ID unknown")


def session_of(server: TestServer, engine_sid: str) -> SocketIOSession | None:
    return next((s for s in server.server.connections if s.engine.sid == engine_sid), None)


# -- Socket.IO packets --------------------------------------------------------------------


def event(record: str | bytes) -> list[Any]:
    """``[name, payload]`` of a ``42`` packet."""
    assert isinstance(record, str), record
    assert record.startswith("42["), record
    data = json.loads(record[2:])
    assert isinstance(data, list)
    return data


def ack(record: str | bytes, ack_id: int) -> list[Any]:
    """The arguments of the ``43<ack_id>`` packet ``record``."""
    prefix = f"43{ack_id}["
    assert isinstance(record, str), record
    assert record.startswith(prefix), record
    args = json.loads(record[len(prefix) - 1:])
    assert isinstance(args, list)
    return args


def broadcast_data(record: str | bytes) -> Any:
    """The ``data`` of a relayed ``broadcast`` event."""
    name, payload = event(record)
    assert name == "broadcast"
    return payload["data"]


# -- raw WebSockets -----------------------------------------------------------------------


@asynccontextmanager
async def websocket(server: TestServer, resource: str,
                    headers: Sequence[tuple[str, str]] = ()) -> AsyncIterator[WebSocketConnection]:
    """A raw WebSocket to ``resource``; ``ConnectionRejected`` if refused."""
    client_end, server_end = trio.testing.memory_stream_pair()
    server.server.connect_stream(server_end)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    try:
        async with trio.open_nursery() as nursery:
            try:
                ws = await wrap_client_stream(nursery, client_end,  # type: ignore[arg-type]
                                              HOST, resource, extra_headers=extra)
                try:
                    yield ws
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


async def close_code(ws: WebSocketConnection) -> int:
    """Wait for the server to close ``ws`` (nothing else may arrive); its close code."""
    with pytest.raises(ConnectionClosed) as info:
        message = await ws.get_message()
        pytest.fail(f"expected the WebSocket to close, got {message!r}")
    reason = info.value.reason
    assert reason is not None
    return reason.code


async def ws_packet(ws: WebSocketConnection) -> str | bytes:
    """The next WebSocket message that is not a ping (pings are answered)."""
    while True:
        message = await ws.get_message()
        if message == "2":
            await ws.send_message("3")
            continue
        return message


@asynccontextmanager
async def raw_member(server: TestServer, room: str = "r") -> AsyncIterator[WebSocketConnection]:
    """A raw websocket-only Socket.IO client, connected and in ``room``."""
    async with websocket(server, WS_PATH) as ws:
        opened = await ws.get_message()
        assert isinstance(opened, str)
        assert opened.startswith("0{")
        await ws.send_message("40")
        assert str(await ws_packet(ws)).startswith("40{")
        await ws.send_message(f'4299["join",{{"room":"{room}"}}]')
        assert ack(await ws_packet(ws), 99)[0]["ok"] is True
        yield ws


async def next_presence(client: Client) -> dict[str, Any]:
    presence = await client.next_event("presence")
    assert isinstance(presence, dict)
    return presence


# -- 1. handshake and authentication ------------------------------------------------------


@pytest.mark.parametrize(("settings", "expected"), [
    ({"ping_interval_ms": SUITE_PING_INTERVAL_MS, "ping_timeout_ms": SUITE_PING_TIMEOUT_MS,
      "max_payload": 1_000_000}, (300, 200, 1_000_000)),
    ({"ping_interval_ms": 25000, "ping_timeout_ms": 20000, "max_payload": 4096},
     (25000, 20000, 4096)),
])
async def test_handshake_open_packet(
    autojump_clock: trio.testing.MockClock, settings: dict[str, Any],
    expected: tuple[int, int, int],
) -> None:
    """``GET ?EIO=4&transport=polling`` gets 200, text/plain, the OPEN packet ``0{...}``
    with exactly sid, upgrades ``["websocket"]`` and the configured pingInterval,
    pingTimeout and maxPayload (integers); a new session each time."""
    async with polling_server(**settings) as server:
        conn = HttpConnection(server)
        response = await conn.request("GET", POLLING)
        assert response.status == 200
        assert response.headers["content-type"].lower() == "text/plain; charset=utf-8"
        [record] = response.records()
        assert record.startswith("0{")
        opened = json.loads(record[1:])
        assert set(opened) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
        assert isinstance(opened["sid"], str)
        assert opened["sid"]
        assert opened["upgrades"] == ["websocket"]
        assert (opened["pingInterval"], opened["pingTimeout"], opened["maxPayload"]) == expected
        assert all(type(opened[k]) is int for k in ("pingInterval", "pingTimeout", "maxPayload"))
        again = json.loads((await conn.request("GET", POLLING)).records()[0][1:])
        assert again["sid"] != opened["sid"]
        assert len(server.server.connections) == 2
        await conn.aclose()


async def test_requests_with_unknown_or_wrong_sid_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A GET or POST with a sid no session has gets 400, code 1 ``Session ID unknown``;
    a request with ``transport=websocket`` but no upgrade gets 400, code 3; a DELETE
    on a live session 400, code 3; the live session is not disturbed."""
    async with polling_server() as server:
        polling, _ = await handshake(server)
        stranger = Polling(server, "no-such-sid")
        assert_engine_error(await stranger.get(), 400, 1, "Session ID unknown")
        assert_engine_error(await stranger.post("40"), 400, 1, "Session ID unknown")
        conn = HttpConnection(server)
        no_upgrade = await conn.request("GET", f"{WS_PATH}&sid={polling.sid}")
        assert_engine_error(no_upgrade, 400, 3)
        assert_engine_error(await polling.request("DELETE"), 400, 3)
        assert (await connect(polling))["sid"]
        await conn.aclose()


@pytest.mark.parametrize("how", ["bearer", "auth", "query"])
async def test_token_authenticates_polling_connect(
    autojump_clock: trio.testing.MockClock, how: str,
) -> None:
    """A token as ``Authorization: Bearer`` on the handshake, as ``auth.token`` in the
    CONNECT, or as ``?token=`` on the handshake URL: POST ``40`` gets ``ok``, the GET
    ``40{"sid"}`` (not the Engine.IO sid), and the socket is that token's user (the
    join ack's presence shows it)."""
    async with polling_server(anonymous=False) as server:
        token = server.token("alice", name="Alice")
        query, headers, payload = "", [], ""
        if how == "bearer":
            headers = [("authorization", f"Bearer {token}")]
        elif how == "query":
            query = f"&token={token}"
        else:
            payload = json.dumps({"token": token})
        polling, opened = await handshake(server, query, headers)
        handshake_data = await connect(polling, payload)
        assert set(handshake_data) == {"sid"}
        assert handshake_data["sid"] != opened["sid"]
        await polling.post_ok('427["join",{"room":"r"}]')
        [record] = await polling.poll()
        joined = ack(record, 7)[0]
        assert joined["ok"] is True
        [me] = joined["presence"]["users"]
        assert (me["socketId"], me["userId"], me["userName"]) == (
            handshake_data["sid"], "alice", "Alice")


@pytest.mark.parametrize("how", ["bearer", "auth", "query", "none"])
async def test_bad_token_gets_connect_error(
    autojump_clock: trio.testing.MockClock, how: str,
) -> None:
    """A bad token (wherever it is) gets ``44{"message", "data": {"code":
    "INVALID_TOKEN"}}`` in the next GET, no token at all (anonymous off) AUTH_REQUIRED;
    the Engine.IO session stays: a CONNECT with a good ``auth.token`` then works."""
    async with polling_server(anonymous=False) as server:
        query, headers, payload = "", [], ""
        if how == "bearer":
            headers = [("authorization", "Bearer 123")]
        elif how == "query":
            query = "&token=123"
        elif how == "auth":
            payload = '{"token":"123"}'
        polling, _ = await handshake(server, query, headers)
        await polling.post_ok("40" + payload)
        [record] = await polling.poll()
        assert record.startswith("44{"), record
        refusal = json.loads(record[2:])
        assert set(refusal) == {"message", "data"}
        code = "AUTH_REQUIRED" if how == "none" else "INVALID_TOKEN"
        assert refusal["data"]["code"] == code
        assert refusal["data"]["message"] == refusal["message"]
        good = json.dumps({"token": server.token("bob")})
        assert (await connect(polling, good))["sid"]


# -- 2. messages ------------------------------------------------------------------------


async def test_connect_and_acked_join_over_polling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """POST ``40`` gets 200 ``ok``; the next GET is exactly ``40{"sid":...}``; POST of an
    acked join ``420[...]`` gets ``ok`` and the next GET carries its ack ``430[...]``,
    and nothing else."""
    async with polling_server() as server:
        polling, _ = await handshake(server)
        response = await polling.post("40")
        assert (response.status, response.body) == (200, b"ok")
        [record] = await polling.poll()
        assert record.startswith('40{"sid":"'), record
        sid = json.loads(record[2:])["sid"]
        await polling.post_ok("420" + JOIN_R)
        [record] = await polling.poll()
        joined = ack(record, 0)[0]
        assert (joined["ok"], joined["room"]) == (True, "r")
        assert [u["socketId"] for u in joined["presence"]["users"]] == [sid]
        # every request went on the handshake's keep-alive connection
        assert polling.connections_opened == 0


async def test_several_packets_in_one_post_are_answered_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three acked events in one POST (``\\x1e``-joined: two broadcasts, then a leave)
    are handled in order: the other member sees the two broadcasts in order, then the
    leave; the three acks come in one GET, joined with ``\\x1e``, in order."""
    async with polling_server() as server, server.client("bob") as bob:
        await bob.join("r")
        polling, _ = await connected_polling(server)
        assert (await next_presence(bob))["connections"] == 2
        await polling.post_ok(RS.join([
            '421["broadcast",{"room":"r","event":"e","data":1}]',
            '422["broadcast",{"room":"r","event":"e","data":2}]',
            '423["leave",{"room":"r"}]',
        ]))
        await trio.testing.wait_all_tasks_blocked()
        records = await polling.poll()
        assert len(records) == 3, records
        assert ack(records[0], 1) == [{"ok": True}]
        assert ack(records[1], 2) == [{"ok": True}]
        assert ack(records[2], 3) == [{"ok": True, "room": "r"}]
        seen = [(await bob.next_event("broadcast"))["data"] for _ in range(2)]
        assert seen == [1, 2]
        assert (await next_presence(bob))["connections"] == 1


async def test_several_engineio_packets_in_one_post_are_answered_in_one_get(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The suite's several-packets check at the Engine.IO level: three client pings
    with data in one POST get their three pongs, in order, in one GET."""
    async with polling_server() as server:
        polling, _ = await handshake(server)
        await polling.post_ok(RS.join(["2test1", "2test2", "2test3"]))
        assert await polling.poll() == ["3test1", "3test2", "3test3"]


async def test_binary_event_posted_reaches_websocket_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A polling client POSTs a BINARY_EVENT and its attachment as ``b<base64>`` in one
    payload; a WebSocket member of the room gets ``451-[...]`` with the placeholder,
    then the raw bytes as a binary message. With an ack id, the ack comes in a GET."""
    async with polling_server() as server, raw_member(server) as ws:
        polling, sid = await connected_polling(server)
        assert event(await ws_packet(ws))[0] == "presence"
        attachment = bytes([1, 2, 3, 4, 255])
        await polling.post_ok(
            '451-["broadcast",{"room":"r","event":"e","data":{"_placeholder":true,"num":0}}]'
            + RS + "b" + base64.b64encode(attachment).decode())
        head = await ws_packet(ws)
        assert isinstance(head, str)
        assert head.startswith("451-["), head
        name, relayed = json.loads(head[4:])
        assert name == "broadcast"
        assert (relayed["event"], relayed["data"], relayed["socketId"]) == (
            "e", PLACEHOLDER_0, sid)
        assert await ws.get_message() == attachment
        await polling.post_ok(
            '451-7["broadcast",{"room":"r","event":"e","data":{"_placeholder":true,"num":0}}]'
            + RS + "bAQIDBA==")
        [record] = await polling.poll()
        assert ack(record, 7) == [{"ok": True}]
        assert str(await ws_packet(ws)).startswith("451-[")
        assert await ws.get_message() == b"\x01\x02\x03\x04"


async def test_binary_event_from_websocket_reaches_polling_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A WebSocket member sends a binary broadcast (``451-[...]`` and a binary
    message); the polling member's GET has the packet then a ``b<base64>`` record
    holding the same bytes."""
    async with polling_server() as server:
        polling, _ = await connected_polling(server)
        async with raw_member(server) as ws:
            [presence] = await polling.poll()
            assert event(presence)[0] == "presence"
            attachment = bytes(range(256))
            await ws.send_message('451-["broadcast",{"room":"r","event":"e",'
                                  '"data":{"_placeholder":true,"num":0}}]')
            await ws.send_message(attachment)
            await trio.testing.wait_all_tasks_blocked()
            records = await polling.poll()
            assert len(records) == 2, records
            assert records[0].startswith("451-["), records[0]
            name, relayed = json.loads(records[0][4:])
            assert (name, relayed["data"]) == ("broadcast", PLACEHOLDER_0)
            assert records[1] == "b" + base64.b64encode(attachment).decode()


# -- 3. heartbeat ---------------------------------------------------------------------------


def suite_timing(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"ping_interval_ms": SUITE_PING_INTERVAL_MS,
                                "ping_timeout_ms": SUITE_PING_TIMEOUT_MS,
                                "connect_timeout_s": 60}
    settings.update(overrides)
    return settings


@pytest.mark.parametrize(("interval_ms", "timeout_ms"), [(300, 200), (25000, 20000)])
async def test_polls_are_answered_with_pings(
    autojump_clock: trio.testing.MockClock, interval_ms: int, timeout_ms: int,
) -> None:
    """A GET with nothing to send is held and answered ``2`` exactly at pingInterval
    (the suites' 300 ms, and the default 25 s: no front-door timeout cuts a held GET);
    POST ``3`` gets ``ok``; three rounds (each ping pingInterval after the last), and
    the session is still alive long past pingInterval + pingTimeout."""
    interval = interval_ms / 1000
    async with polling_server(**suite_timing(ping_interval_ms=interval_ms,
                                             ping_timeout_ms=timeout_ms,
                                             connect_timeout_s=1000)) as server:
        polling, _ = await handshake(server)
        opened_at = trio.current_time()
        for i in range(1, 4):
            assert await polling.poll() == ["2"]
            assert trio.current_time() - opened_at == pytest.approx(i * interval, abs=1e-6)
            await polling.post_ok("3")
        assert await polling.poll() == ["2"]
        assert trio.current_time() - opened_at == pytest.approx(4 * interval, abs=1e-6)
        await polling.post_ok("3")
        assert (await connect(polling))["sid"]


async def test_silent_session_is_gone_after_ping_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A session that never polls nor answers is alive just before pingInterval +
    pingTimeout and gone just after: a GET gets 400, code 1 ``Session ID unknown``."""
    async with polling_server(**suite_timing()) as server:
        polling, _ = await handshake(server)
        await trio.sleep(0.5 - 0.001)
        assert session_of(server, polling.sid) is not None
        await trio.sleep(0.002)
        assert session_of(server, polling.sid) is None
        await assert_session_gone(polling)
        assert not server.server.connections


async def test_waiting_poll_gets_close_at_ping_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that polls but never answers the ping: its GET gets ``2`` at
    pingInterval, the next GET is held and answered ``1`` (CLOSE) exactly at
    pingInterval + pingTimeout; then the session is unknown."""
    async with polling_server(**suite_timing()) as server:
        polling, _ = await handshake(server)
        opened_at = trio.current_time()
        assert await polling.poll() == ["2"]
        assert await polling.poll() == ["1"]
        assert trio.current_time() - opened_at == pytest.approx(0.5, abs=1e-6)
        await assert_session_gone(polling)


# -- 4. close -------------------------------------------------------------------------------


@pytest.mark.parametrize("connected", [False, True])
async def test_close_packet_answers_waiting_poll_with_noop(
    autojump_clock: trio.testing.MockClock, connected: bool,
) -> None:
    """A GET is held while the client POSTs ``1`` on another connection: the POST gets
    ``ok``, the GET ``6`` (noop) at once; a later GET gets 400. A connected client
    leaves its rooms (the other member's presence shows it)."""
    async with polling_server() as server, server.client("bob") as bob:
        await bob.join("r")
        if connected:
            polling, _ = await connected_polling(server)
            assert (await next_presence(bob))["connections"] == 2
        else:
            polling, _ = await handshake(server)
        async with trio.open_nursery() as nursery:
            held = await start_get(nursery, polling)
            start = trio.current_time()
            await polling.post_ok("1")
            response = await held.result()
        assert response.records() == ["6"]
        assert trio.current_time() == start
        await assert_session_gone(polling)
        if connected:
            assert (await next_presence(bob))["connections"] == 1
        assert len(server.server.connections) == 1


async def test_token_expiry_answers_waiting_poll_with_disconnect_and_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Server-side close: a polling client whose token expires gets the TOKEN_EXPIRED
    error event in its held GET; if it does not refresh within the grace, its next
    held GET is answered with what was queued, the Socket.IO DISCONNECT ``41``, then
    the Engine.IO CLOSE ``1``; then the session is unknown."""
    async with polling_server(anonymous=False, token_refresh_grace_s=5) as server:
        token = server.token("alice", ttl_s=10)
        polling, _ = await connected_polling(
            server, headers=[("authorization", f"Bearer {token}")])
        start = trio.current_time()
        [record] = await polling.poll()
        name, error = event(record)
        assert (name, error["code"]) == ("error", "TOKEN_EXPIRED")
        assert 9 <= trio.current_time() - start <= 10
        expired_at = trio.current_time()
        assert await polling.poll() == ["41", "1"]
        assert trio.current_time() - expired_at == pytest.approx(5, abs=1e-6)
        await assert_session_gone(polling)


async def test_kick_between_two_polls_is_fetched_by_the_next_poll(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A graceful server-side close (token expired, no refresh) while no GET is held:
    the next GET still gets the error event, ``41`` and ``1`` (so a stock client knows
    it was kicked and does not reconnect); then the session is unknown. Unclaimed, the
    closed session is forgotten a ping interval later."""
    async with polling_server(anonymous=False, token_refresh_grace_s=5,
                              ping_interval_ms=60_000, ping_timeout_ms=60_000) as server:
        token = server.token("alice", ttl_s=10)
        polling, _ = await connected_polling(
            server, headers=[("authorization", f"Bearer {token}")])
        await trio.sleep(20)  # expired at 10 s, kicked at 15 s: no GET was held
        assert session_of(server, polling.sid) is None  # no longer a live connection
        records = await polling.poll()
        assert [event(r)[0] for r in records[:-2]] == ["error"]
        assert records[-2:] == ["41", "1"]
        await assert_session_gone(polling)
        other, _ = await connected_polling(
            server, headers=[("authorization", f"Bearer {server.token('bob', ttl_s=10)}")])
        await trio.sleep(15 + 60 + 0.001)  # kicked at 15 s, then a ping interval
        await assert_session_gone(other)


async def test_connect_timeout_answers_waiting_poll_with_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A polling session that sends no Socket.IO CONNECT is closed connect_timeout_s
    after the handshake: its held GET (it answered every ping) gets ``1``."""
    async with polling_server(**suite_timing(connect_timeout_s=1.0)) as server:
        polling, _ = await handshake(server)
        opened_at = trio.current_time()
        while True:
            records = await polling.poll()
            if records != ["2"]:
                break
            await polling.post_ok("3")
        assert records == ["1"]
        assert trio.current_time() - opened_at == pytest.approx(1.0, abs=1e-6)
        await assert_session_gone(polling)


# -- 5. protocol errors -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"abc", b"", b"7", b"40\x1e", b"b!!!", b"\xff\xfe"])
async def test_invalid_payload_closes_session(
    autojump_clock: trio.testing.MockClock, body: bytes,
) -> None:
    """A POST whose payload cannot be decoded (the suite's ``abc``; empty; an unknown
    type; an empty record; bad base64; not UTF-8) gets 400, code 3, and closes the
    session: the GET held meanwhile gets ``1``, a later GET 400, code 1."""
    async with polling_server() as server:
        polling, _ = await connected_polling(server)
        async with trio.open_nursery() as nursery:
            held = await start_get(nursery, polling)
            assert_engine_error(await polling.post(body), 400, 3)
            assert (await held.result()).records() == ["1"]
        await assert_session_gone(polling)
        assert not server.server.connections


async def test_overlapping_polls_close_session(autojump_clock: trio.testing.MockClock) -> None:
    """A second GET while one is held (the suite's ``&t=burst``, on another
    connection): the first is answered 200 ``1``, the second 400; then GETs get 400."""
    async with polling_server() as server:
        polling, _ = await connected_polling(server)
        async with trio.open_nursery() as nursery:
            first = await start_get(nursery, polling)
            second = await polling.get("&t=burst")
            assert second.status == 400
            assert second.json()["code"] == 3
            response = await first.result()
        assert (response.status, response.text) == (200, "1")
        await assert_session_gone(polling)


async def test_poll_closed_by_the_client_ends_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The client aborts a held GET (closes its HTTP connection): the session ends at
    once, its rooms see it leave (presence), and a later GET gets 400, code 1."""
    # presence at once after every change, so the time bob hears of the leave is the
    # time the session ended
    async with polling_server(presence_interval_ms=0) as server, server.client("bob") as bob:
        await bob.join("r")
        polling, _ = await connected_polling(server)
        assert (await next_presence(bob))["connections"] == 2
        conn = HttpConnection(server)
        await conn.stream.send_all(f"GET {polling.target()} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
                                   .encode())
        await trio.testing.wait_all_tasks_blocked()
        session = session_of(server, polling.sid)
        assert session is not None
        assert session.poll is not None
        assert session.poll.waiting
        start = trio.current_time()
        await conn.aclose()
        presence = await next_presence(bob)
        assert trio.current_time() == start
        assert presence["connections"] == 1
        assert [u["userId"] for u in presence["users"]] == ["bob"]
        await assert_session_gone(polling)


class GatedStore(MemoryStore):
    """A memory store that says it holds grants, and whose ``grants_for`` waits for
    :attr:`gate` (a slow CONNECT)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.waiting = False

    async def has_grants(self) -> bool:
        return True

    async def grants_for(self, user_id: str) -> dict[str, Any]:
        self.waiting = True
        await self.gate.wait()
        return await super().grants_for(user_id)


async def test_overlapping_posts_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    """A POST while another is still being handled (its CONNECT waits for storage)
    gets 400, code 3, and the session closes (as in the reference server): the first
    POST is still answered, and a later GET gets 400, code 1."""
    store = GatedStore()
    async with polling_server(store=store) as server:
        polling, _ = await handshake(server)
        async with trio.open_nursery() as nursery:
            first = Pending()

            async def post_connect() -> None:
                first.response = await polling.post("40")
                first.done.set()

            nursery.start_soon(post_connect)
            await trio.testing.wait_all_tasks_blocked()
            assert store.waiting
            assert_engine_error(await polling.post("3"), 400, 3)
            store.gate.set()
            response = await first.result()
        assert (response.status, response.body) == (200, b"ok")
        await assert_session_gone(polling)
        assert not server.server.connections


# -- 6. maxPayload ----------------------------------------------------------------------------


async def test_post_larger_than_max_payload_gets_413(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """maxPayload 1000: a POST of 1001 bytes (with Content-Length, or chunked) gets 413
    and its connection closes; one of exactly 1000 bytes is read and handled (``ok``);
    the session goes on (as in the reference server, a 413 does not close it)."""
    async with polling_server(max_payload=1000) as server:
        polling, opened = await handshake(server)
        assert opened["maxPayload"] == 1000
        for chunked in (False, True):
            conn = HttpConnection(server)
            response = await conn.request("POST", polling.target(), body=b"6" * 1001,
                                          chunked=chunked)
            assert response.status == 413
            assert response.headers["connection"].lower() == "close"
            await conn.closed_by_server()
        await polling.post_ok("6" * 1000)  # one NOOP packet with 999 bytes of data
        await polling.post_ok("2" + "x" * 999)  # a ping, answered with its data
        assert await polling.poll() == ["3" + "x" * 999]
        assert (await connect(polling))["sid"]


# -- 7. upgrade to WebSocket --------------------------------------------------------------------


def upgrade_resource(polling: Polling) -> str:
    return f"{WS_PATH}&sid={polling.sid}"


async def probe(ws: WebSocketConnection) -> None:
    """Send the probe ``2probe``; the server must answer ``3probe``."""
    await ws.send_message("2probe")
    assert await ws.get_message() == "3probe"


@pytest.mark.parametrize("held", [True, False])
async def test_upgrade_to_websocket(autojump_clock: trio.testing.MockClock, held: bool) -> None:
    """A connected polling client opens a WebSocket with its sid: ``2probe`` gets
    ``3probe``, the held GET (or, with none held, the next GET) is answered ``6``;
    after ``5`` the session is on the WebSocket: an acked event's ack comes there,
    other members' events come there, its events reach them, with the same Socket.IO
    sid; GETs and POSTs with the sid get 400, code 3."""
    async with polling_server() as server, server.client("bob") as bob:
        await bob.join("r")
        polling, sid = await connected_polling(server)
        assert (await next_presence(bob))["connections"] == 2
        async with websocket(server, upgrade_resource(polling)) as ws:
            async with trio.open_nursery() as nursery:
                pending = await start_get(nursery, polling) if held else None
                await probe(ws)
                response = await pending.result() if pending else await polling.get()
            assert response.records() == ["6"]
            await ws.send_message("5")
            await ws.send_message('421["broadcast",{"room":"r","event":"e","data":"up"}]')
            assert ack(await ws_packet(ws), 1) == [{"ok": True}]
            relayed = await bob.next_event("broadcast")
            assert (relayed["data"], relayed["socketId"]) == ("up", sid)
            await bob.emit("broadcast", {"room": "r", "event": "e", "data": "down"})
            assert broadcast_data(await ws_packet(ws)) == "down"
            get_after = await polling.get()
            assert_engine_error(get_after, 400, 3)
            assert_engine_error(await polling.post('42["broadcast",{}]'), 400, 3)
            await ws.send_message('422["broadcast",{"room":"r","event":"e","data":"still"}]')
            assert ack(await ws_packet(ws), 2) == [{"ok": True}]
            session = session_of(server, polling.sid)
            assert session is not None
            assert (session.transport, session.sid) == ("websocket", sid)
            assert len(server.server.connections) == 2


async def test_heartbeat_moves_to_the_websocket(autojump_clock: trio.testing.MockClock) -> None:
    """After the upgrade the pings come on the WebSocket, pingInterval apart; answering
    them keeps the session; not answering closes it after pingTimeout."""
    async with polling_server(**suite_timing()) as server:
        polling, _ = await connected_polling(server)
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            await ws.send_message("5")
            pings = []
            for _ in range(3):
                assert await ws.get_message() == "2"
                pings.append(trio.current_time())
                await ws.send_message("3")
            assert pings[2] - pings[1] == pytest.approx(0.3, abs=1e-6)
            assert pings[1] - pings[0] == pytest.approx(0.3, abs=1e-6)
            assert await ws.get_message() == "2"
            silent_from = trio.current_time()
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
            assert trio.current_time() - silent_from == pytest.approx(0.2, abs=1e-6)
        assert not server.server.connections


async def test_second_websocket_with_same_sid_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A WebSocket with the sid of a session that is being probed, or has upgraded
    already, is accepted and closed at once (1008); the upgraded one goes on."""
    async with polling_server() as server:
        polling, _ = await connected_polling(server)
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            async with websocket(server, upgrade_resource(polling)) as during:
                assert await close_code(during) == 1008
            assert await polling.poll() == ["6"]
            await ws.send_message("5")
            async with websocket(server, upgrade_resource(polling)) as after:
                assert await close_code(after) == 1008
            await ws.send_message("423" + JOIN_R)
            assert ack(await ws_packet(ws), 3)[0]["ok"] is True


async def test_abandoned_probe_leaves_session_on_polling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A probe WebSocket that closes after ``3probe`` but before ``5``: the session goes
    on over polling (acked events, other members' events), and a later probe
    upgrades it."""
    async with polling_server() as server, server.client("bob") as bob:
        await bob.join("r")
        polling, _ = await connected_polling(server)
        assert (await next_presence(bob))["connections"] == 2
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
        await trio.testing.wait_all_tasks_blocked()
        await polling.post_ok('425["broadcast",{"room":"r","event":"e","data":1}]')
        [record] = await polling.poll()
        assert ack(record, 5) == [{"ok": True}]
        assert (await bob.next_event("broadcast"))["data"] == 1
        await bob.emit("broadcast", {"room": "r", "event": "e", "data": 2})
        [record] = await polling.poll()
        assert broadcast_data(record) == 2
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            await ws.send_message("5")
            await ws.send_message('426["broadcast",{"room":"r","event":"e","data":3}]')
            assert ack(await ws_packet(ws), 6) == [{"ok": True}]
            assert_engine_error(await polling.get(), 400, 3)


async def test_probe_that_breaks_the_protocol_leaves_session_on_polling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A probe WebSocket that sends something other than the upgrade packets is closed
    (1002); the polling session is not affected."""
    async with polling_server() as server:
        polling, _ = await connected_polling(server)
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            await ws.send_message("42[\"broadcast\",{}]")
            assert await close_code(ws) == 1002
        assert await polling.poll() == ["2"]  # no upgrade any more: the next ping
        await polling.post_ok("3")
        await polling.post_ok("427" + JOIN_R)
        [record] = await polling.poll()
        assert ack(record, 7)[0]["ok"] is True


def numbers(records: Sequence[str | bytes]) -> list[int]:
    """The ``data`` of the relayed broadcasts among ``records`` (noops and pings
    skipped)."""
    out = []
    for record in records:
        if record in ("6", "2"):
            continue
        out.append(broadcast_data(record))
    return out


@pytest.mark.parametrize("held", [True, False])
async def test_no_message_lost_or_repeated_across_the_upgrade(
    autojump_clock: trio.testing.MockClock, held: bool,
) -> None:
    """While the client upgrades, another member's broadcasts keep coming: before the
    probe, while the last GET is held and released (``held``) or queued before the
    probe and taken by the last GET, after that GET (the
    client has paused polling), and after ``5``. Every one reaches the client exactly
    once, in order, through the GETs or on the WebSocket."""
    async with polling_server() as server, server.client("bob") as bob:
        await bob.join("r")
        polling, _ = await connected_polling(server)
        assert (await next_presence(bob))["connections"] == 2
        sent = 0

        async def bob_sends(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                await bob.emit("broadcast", {"room": "r", "event": "n", "data": sent})
                sent += 1
            await trio.testing.wait_all_tasks_blocked()

        received: list[int] = []
        async with websocket(server, upgrade_resource(polling)) as ws:
            await bob_sends(3)  # queued for polling: the next GET takes them
            received += numbers(await polling.poll())
            assert received == [0, 1, 2]
            if held:
                async with trio.open_nursery() as nursery:
                    pending = await start_get(nursery, polling)
                    await ws.send_message("2probe")
                    await bob_sends(3)  # while the GET is being released
                    assert await ws.get_message() == "3probe"
                    last = (await pending.result()).records()
                assert "6" in last
            else:
                await bob_sends(3)  # queued: no GET is held
                await probe(ws)
                last = await polling.poll()  # what was queued ends the poll: no noop needed
                assert len(last) == 3
            received += numbers(last)
            await bob_sends(4)  # the client has paused polling: queued
            await ws.send_message("5")
            await bob_sends(3)  # on the WebSocket
            while len(received) < sent:
                received += numbers([await ws_packet(ws)])
            assert received == list(range(sent))
            with trio.move_on_after(1):
                extra = await ws_packet(ws)
                pytest.fail(f"unexpected {extra!r}")


# -- 8. CORS and Origin -------------------------------------------------------------------------

APP = "https://app.example"
EVIL = "https://evil.example"


async def test_cors_handshake_from_an_origin_not_listed_is_forbidden(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``cors_origins=https://app.example``: a handshake with ``Origin:
    https://evil.example`` gets 403, code 4, no CORS headers, and no session."""
    async with polling_server(cors_origins=APP) as server:
        conn = HttpConnection(server)
        response = await conn.request("GET", POLLING, [("origin", EVIL)])
        assert_engine_error(response, 403, 4)
        assert "access-control-allow-origin" not in response.headers
        assert not server.server.connections
        await conn.aclose()


async def test_cors_listed_origin_gets_credentialed_cors_headers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The listed origin: the handshake, the POSTs and the GETs all get 200 with
    ``access-control-allow-origin: https://app.example`` and
    ``access-control-allow-credentials: true`` (a browser reads none of them
    otherwise); a request of that session from another origin gets 403."""
    async with polling_server(cors_origins=APP) as server:
        headers = [("origin", APP)]
        conn = HttpConnection(server)
        response = await conn.request("GET", POLLING, headers)
        assert response.status == 200
        assert response.headers["access-control-allow-origin"] == APP
        assert response.headers["access-control-allow-credentials"] == "true"
        sid = json.loads(response.records()[0][1:])["sid"]
        polling = Polling(server, sid, headers)
        polling.keep(conn)
        post = await polling.post("40")
        assert (post.status, post.body) == (200, b"ok")
        get = await polling.get()
        assert get.records()[0].startswith("40{")
        for answer in (post, get):
            assert answer.headers["access-control-allow-origin"] == APP
            assert answer.headers["access-control-allow-credentials"] == "true"
        evil = Polling(server, sid, [("origin", EVIL)])
        assert_engine_error(await evil.post("3"), 403, 4)


async def test_cors_preflight(autojump_clock: trio.testing.MockClock) -> None:
    """A preflight ``OPTIONS`` from the listed origin asking for ``authorization`` gets
    204 with the origin, credentials, the allowed methods (GET, POST) and that header;
    one from another origin gets 403."""
    async with polling_server(cors_origins=APP) as server:
        conn = HttpConnection(server)
        response = await conn.request("OPTIONS", POLLING, [
            ("origin", APP), ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization")])
        assert response.status == 204
        assert response.body == b""
        assert response.headers["access-control-allow-origin"] == APP
        assert response.headers["access-control-allow-credentials"] == "true"
        methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
        assert {"GET", "POST"} <= methods
        assert response.headers["access-control-allow-headers"].lower() == "authorization"
        refused = await conn.request("OPTIONS", POLLING, [
            ("origin", EVIL), ("access-control-request-method", "POST")])
        assert refused.status == 403
        assert "access-control-allow-origin" not in refused.headers
        await conn.aclose()


async def test_websocket_upgrade_checks_origin(autojump_clock: trio.testing.MockClock) -> None:
    """A WebSocket (new, or upgrading a polling session) with an origin not listed gets
    403, code 4; with the listed origin it is accepted, and the upgrade works."""
    async with polling_server(cors_origins=APP) as server:
        with pytest.raises(ConnectionRejected) as info:
            async with websocket(server, WS_PATH, [("origin", EVIL)]):
                pass
        assert info.value.status_code == 403
        assert info.value.body is not None
        assert json.loads(info.value.body)["code"] == 4
        async with websocket(server, WS_PATH, [("origin", APP)]) as ws:
            assert str(await ws.get_message()).startswith("0{")
        polling, _ = await connected_polling(server, headers=[("origin", APP)])
        with pytest.raises(ConnectionRejected) as info:
            async with websocket(server, upgrade_resource(polling), [("origin", EVIL)]):
                pass
        assert info.value.status_code == 403
        async with websocket(server, upgrade_resource(polling), [("origin", APP)]) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            await ws.send_message("5")
            await ws.send_message("421" + JOIN_R)
            assert ack(await ws_packet(ws), 1)[0]["ok"] is True


@pytest.mark.parametrize(("origin", "allowed"), [
    (f"http://{HOST}", True),  # the server's own origin (same as Host)
    (f"https://{HOST}", True),
    (f"http://{HOST}:8080", False),  # another port is another origin
    ("http://other.test", False),
    (None, True),  # not a browser
])
async def test_without_cors_configuration_only_same_origin_is_allowed(
    autojump_clock: trio.testing.MockClock, origin: str | None, allowed: bool,
) -> None:
    """No ``cors_origins``: a request whose Origin is the Host header's origin is
    served (with that origin in the CORS headers), one without Origin too (with no CORS
    headers), another origin gets 403; the same holds for WebSocket upgrades."""
    async with polling_server() as server:
        headers = [] if origin is None else [("origin", origin)]
        conn = HttpConnection(server)
        response = await conn.request("GET", POLLING, headers)
        if not allowed:
            assert_engine_error(response, 403, 4)
            with pytest.raises(ConnectionRejected) as info:
                async with websocket(server, WS_PATH, headers):
                    pass
            assert info.value.status_code == 403
            return
        assert response.records()[0].startswith("0{")
        if origin is None:
            assert "access-control-allow-origin" not in response.headers
        else:
            assert response.headers["access-control-allow-origin"] == origin
            assert response.headers["access-control-allow-credentials"] == "true"
        async with websocket(server, WS_PATH, headers) as ws:
            assert str(await ws.get_message()).startswith("0{")
        await conn.aclose()


async def test_cors_star_allows_any_origin_without_credentials(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``cors_origins=*``: any origin is served, with ``access-control-allow-origin: *``
    and no credentials header (browsers refuse credentials with ``*``), on the
    handshake, POSTs, GETs and the preflight; WebSockets from it are accepted."""
    async with polling_server(cors_origins="*") as server:
        headers = [("origin", EVIL)]
        polling, _ = await handshake(server, headers=headers)
        conn = HttpConnection(server)
        answers = [
            await conn.request("GET", POLLING, headers),
            await polling.post("40"),
            await polling.get(),
            await conn.request("OPTIONS", POLLING, [*headers,
                                                    ("access-control-request-method", "POST")]),
        ]
        assert [a.status for a in answers] == [200, 200, 200, 204]
        for answer in answers:
            assert answer.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in answer.headers
        async with websocket(server, WS_PATH, headers) as ws:
            assert str(await ws.get_message()).startswith("0{")
        await conn.aclose()


# -- 9. slow consumers --------------------------------------------------------------------------

OUTBOX = 2000  # outbox_max_bytes for the slow-consumer tests
FILLER = "x" * 400


async def test_polling_member_that_stops_polling_is_disconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A polling member stops polling while another member floods the room with
    non-volatile broadcasts: past outbox_max_bytes it is disconnected (a GET gets 400,
    code 1; the room sees it leave); the flooding member and a WebSocket member get
    every broadcast and stay."""
    async with polling_server(outbox_max_bytes=OUTBOX) as server:
        async with server.client("bob") as bob, server.client("carol") as carol:
            await bob.join("r")
            await carol.join("r")
            polling, _ = await connected_polling(server)
            for member in (bob, carol):
                while (await next_presence(member))["connections"] < 3:
                    pass
            for i in range(20):
                assert await bob.call("broadcast", {"room": "r", "event": "e",
                                                    "data": [i, FILLER]}) == {"ok": True}
            seen: list[int] = []
            connections: list[int] = []
            while len(seen) < 20 or not connections:
                name, data = await carol.next_event()
                if name == "broadcast":
                    seen.append(data["data"][0])
                elif name == "presence":
                    connections.append(data["connections"])
            assert seen == list(range(20))
            assert connections == [2]
            await assert_session_gone(polling)
            assert len(server.server.connections) == 2
            assert (await bob.join("r2"))["ok"] is True


async def test_flood_while_a_poll_is_held_ends_it_with_the_slow_consumer_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A held GET allows a burst, but not an unbounded one: a flood queued in one go
    (one POST of 40 broadcasts from another polling member) past the burst bound
    disconnects the member whose GET is held; the GET is answered with the
    SLOW_CONSUMER error event, then ``1``."""
    async with polling_server(outbox_max_bytes=OUTBOX) as server:
        slow, _ = await connected_polling(server)
        flooder, _ = await connected_polling(server)
        [presence] = await slow.poll()
        assert event(presence)[1]["connections"] == 2
        async with trio.open_nursery() as nursery:
            held = await start_get(nursery, slow)
            await flooder.post_ok(RS.join(
                f'42["broadcast",{{"room":"r","event":"e","data":[{i},"{FILLER}"]}}]'
                for i in range(40)))
            records = (await held.result()).records()
        assert len(records) == 2, records
        name, error = event(records[0])
        assert (name, error["code"], error["retryable"]) == ("error", "SLOW_CONSUMER", True)
        assert records[1] == "1"
        await assert_session_gone(slow)
        [presence] = await flooder.poll()
        assert event(presence)[1]["connections"] == 1


async def test_volatile_flood_does_not_disconnect_a_polling_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Only volatile cursors flood a member that stopped polling: the oldest are
    dropped, it is not disconnected; its next GET has the latest cursors (in order,
    ending with the last), and the session goes on."""
    async with polling_server(outbox_max_bytes=OUTBOX) as server:
        async with server.client("bob") as bob:
            await bob.join("r")
            polling, _ = await connected_polling(server)
            await next_presence(bob)
            for i in range(50):
                await bob.emit("cursor", {"room": "r", "cursor": {"i": i, "pad": FILLER}})
            await bob.call("join", {"room": "r"})  # every cursor has been relayed
            await trio.testing.wait_all_tasks_blocked()
            session = session_of(server, polling.sid)
            assert session is not None
            assert session.close_reason is None
            records = await polling.poll()
            cursors = [event(r)[1]["cursor"]["i"] for r in records]
            assert 0 < len(cursors) < 50
            assert cursors == sorted(cursors)
            assert cursors[-1] == 49
            await polling.post_ok("421" + JOIN_R)
            # the join ack (full state) may come after a slow-consumer warning
            [record] = [r for r in await polling.poll() if not r.startswith('42["warning"')]
            assert ack(record, 1)[0]["ok"] is True


# -- 10. graceful shutdown ------------------------------------------------------------------------


async def test_graceful_shutdown_answers_held_poll_with_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Server.shutdown()`` with a GET held: the GET is answered 200 ``1`` at once,
    then the server closes the connection."""
    async with polling_server() as server:
        polling, _ = await connected_polling(server)
        conn = HttpConnection(server)
        async with trio.open_nursery() as nursery:
            held = Pending()

            async def get() -> None:
                held.response = await conn.request("GET", polling.target())
                held.done.set()

            nursery.start_soon(get)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            server.server.shutdown()
            response = await held.result()
        assert trio.current_time() == start
        assert response.records() == ["1"]
        await conn.closed_by_server()
        await server.server.wait_stopped()


# -- more of the contract -------------------------------------------------------------------------


async def test_max_connections_counts_polling_sessions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_connections 1: with one polling session open, a second handshake (polling or
    WebSocket) gets 503; the open session can still upgrade (it is not a new one);
    once it is gone, a handshake works again."""
    async with polling_server(max_connections=1) as server:
        polling, _ = await connected_polling(server)
        conn = HttpConnection(server)
        assert_engine_error(await conn.request("GET", POLLING), 503, 3)
        with pytest.raises(ConnectionRejected) as info:
            async with websocket(server, WS_PATH):
                pass
        assert info.value.status_code == 503
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            await ws.send_message("5")
            await ws.send_message("421" + JOIN_R)
            assert ack(await ws_packet(ws), 1)[0]["ok"] is True
            await ws.send_message("1")
            with pytest.raises(ConnectionClosed):
                await ws_packet(ws)
        await trio.testing.wait_all_tasks_blocked()
        assert (await conn.request("GET", POLLING)).records()[0].startswith("0{")
        await conn.aclose()


async def test_non_ascii_text_round_trips_over_polling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Payloads are UTF-8: non-ASCII text (accents, a snowman, a character outside the
    BMP) POSTed by a polling member reaches a WebSocket member unchanged, and back in
    a GET; ``content-length`` counts bytes."""
    text = "héllo ☃ 𝄞"
    async with polling_server() as server, raw_member(server) as ws:
        polling, _ = await connected_polling(server)
        assert event(await ws_packet(ws))[0] == "presence"
        await polling.post_ok("42" + json.dumps(
            ["broadcast", {"room": "r", "event": "e", "data": text}], ensure_ascii=False))
        assert broadcast_data(await ws_packet(ws)) == text
        await ws.send_message(
            "42" + json.dumps(["broadcast", {"room": "r", "event": "e", "data": text + "!"}],
                              ensure_ascii=False))
        response = await polling.get()
        assert int(response.headers["content-length"]) == len(response.body)
        [record] = response.records()
        assert broadcast_data(record) == text + "!"


async def test_upgrade_with_the_sid_of_a_closed_session_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A WebSocket with the sid of a polling session that has closed gets 400, code 1."""
    async with polling_server() as server:
        polling, _ = await handshake(server)
        await polling.post_ok("1")
        with pytest.raises(ConnectionRejected) as info:
            async with websocket(server, upgrade_resource(polling)):
                pass
        assert info.value.status_code == 400
        assert info.value.body is not None
        assert json.loads(info.value.body) == {"code": 1, "message": "Session ID unknown"}


async def test_socketio_disconnect_over_polling_keeps_engineio_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """POST ``41``: the namespace ends (the room sees the client leave), the Engine.IO
    session stays (its next GET is the ping); a new ``40`` gets a new socket id."""
    async with polling_server(ping_interval_ms=1000) as server, server.client("bob") as bob:
        await bob.join("r")
        polling, first_sid = await connected_polling(server)
        assert (await next_presence(bob))["connections"] == 2
        await polling.post_ok("41")
        assert (await next_presence(bob))["connections"] == 1
        assert await polling.poll() == ["2"]
        await polling.post_ok("3")
        second_sid = (await connect(polling))["sid"]
        assert second_sid != first_sid


async def test_post_handled_during_the_upgrade_is_answered_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The client's last POST before it pauses (after ``3probe``, before ``5``): its ack
    is queued for polling, and after ``5`` comes on the WebSocket, exactly once."""
    async with polling_server() as server, server.client("bob") as bob:
        await bob.join("r")
        polling, _ = await connected_polling(server)
        assert (await next_presence(bob))["connections"] == 2
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            await polling.post_ok('428["broadcast",{"room":"r","event":"e","data":"late"}]')
            await trio.testing.wait_all_tasks_blocked()
            await ws.send_message("5")
            assert ack(await ws_packet(ws), 8) == [{"ok": True}]
            assert (await bob.next_event("broadcast"))["data"] == "late"
            with trio.move_on_after(1):
                extra = await ws_packet(ws)
                pytest.fail(f"unexpected {extra!r}")


async def test_binary_ack_over_polling(autojump_clock: trio.testing.MockClock) -> None:
    """An ack whose payload holds bytes reaches a polling client as a BINARY_ACK
    ``461-<id>[...]`` followed by its attachment as ``b<base64>``, in one GET: a
    WebSocket member's binary cursor is in the polling client's join ack."""
    async with polling_server() as server, raw_member(server) as ws:
        await ws.send_message('451-["cursor",{"room":"r","cursor":{"_placeholder":true,"num":0}}]')
        await ws.send_message(b"\x07\x08\x09")
        await trio.testing.wait_all_tasks_blocked()
        polling, _ = await handshake(server)
        await connect(polling)
        await polling.post_ok("4212" + JOIN_R)
        records = await polling.poll()
        assert len(records) == 2, records
        assert records[0].startswith("461-12["), records[0]
        [joined] = json.loads(records[0][len("461-12"):])
        assert PLACEHOLDER_0 in [u["cursor"] for u in joined["presence"]["users"]]
        assert records[1] == "b" + base64.b64encode(b"\x07\x08\x09").decode()


async def test_upgrade_before_socketio_connect(autojump_clock: trio.testing.MockClock) -> None:
    """socket.io-client probes the upgrade as soon as the Engine.IO session opens,
    while its CONNECT goes by POST: the ``40{sid}`` answer queued for polling comes on
    the WebSocket after ``5``; a CONNECT sent on the WebSocket works too."""
    async with polling_server() as server:
        polling, _ = await handshake(server)
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            await polling.post_ok("40")
            await trio.testing.wait_all_tasks_blocked()
            await ws.send_message("5")
            message = await ws_packet(ws)
            assert str(message).startswith('40{"sid":'), message
            await ws.send_message("421" + JOIN_R)
            assert ack(await ws_packet(ws), 1)[0]["ok"] is True
        polling, _ = await handshake(server)
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            await ws.send_message("5")
            await ws.send_message("40")
            assert str(await ws_packet(ws)).startswith('40{"sid":')


async def test_upgraded_websocket_that_drops_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the upgrade the WebSocket is the session: when its connection drops, the
    session ends (the room sees the client leave, the sid is unknown)."""
    async with polling_server() as server, server.client("bob") as bob:
        await bob.join("r")
        polling, _ = await connected_polling(server)
        assert (await next_presence(bob))["connections"] == 2
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            await ws.send_message("5")
            await trio.testing.wait_all_tasks_blocked()
        assert (await next_presence(bob))["connections"] == 1
        assert session_of(server, polling.sid) is None
        await assert_session_gone(polling)


async def test_probe_that_never_completes_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A probe WebSocket that answers the probe but never sends ``5`` is closed by the
    server within the reference server's upgradeTimeout (10 s); the session goes on
    over polling and a new probe can upgrade it."""
    async with polling_server() as server:
        polling, _ = await connected_polling(server)
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            with trio.move_on_after(10.5) as scope:
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
            assert not scope.cancelled_caught, "the probe WebSocket is still open"
        async with websocket(server, upgrade_resource(polling)) as ws:
            await probe(ws)
            assert await polling.poll() == ["6"]
            await ws.send_message("5")
            await ws.send_message("421" + JOIN_R)
            assert ack(await ws_packet(ws), 1)[0]["ok"] is True
