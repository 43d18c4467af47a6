"""The front door (collabtrio/transport/frontdoor.py) as an HTTP client sees it.

Raw HTTP/1.1 bytes go over an in-memory stream to the in-process server; responses
are parsed client-side with h11. Under the mock clock the front door's limits are
exact: a request head must be complete within ``HEAD_TIMEOUT_S`` and is at most
``MAX_HEAD_BYTES``, an idle keep-alive connection waits ``http_keep_alive_s`` for its next
request, a body must be at most ``max_payload`` bytes (else 413) and arrive within
``BODY_TIMEOUT_S`` (else 408), and the connection then closes; a WebSocket handshake
must be HTTP/1.1 with a well-formed key and version 13 (else 400, or 426). Requests
on one connection are answered in order, and a WebSocket upgrade may come after plain
requests on the same connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trio.testing
import wsproto
import wsproto.connection
import wsproto.events

from collabtrio.client import connect
from collabtrio.testing import TestServer, open_test_server
from collabtrio.transport.frontdoor import (
    BODY_TIMEOUT_S,
    HEAD_TIMEOUT_S,
    MAX_HEAD_BYTES,
)

MAX_PAYLOAD = 1000
KEEP_ALIVE_S = 5.0  # the default of Config.http_keep_alive_s
UPGRADE_HEADERS = ("Upgrade: websocket", "Connection: Upgrade",
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13")


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def request(target: str = "/healthz", method: str = "GET", *headers: str,
            body: bytes = b"") -> bytes:
    """The raw bytes of one HTTP/1.1 request."""
    lines = [f"{method} {target} HTTP/1.1", "Host: collabtrio.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> object:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


class HttpConnection:
    """One client connection to the server: raw bytes out, h11-parsed responses in."""

    def __init__(self, server: TestServer) -> None:
        self.stream, server_end = trio.testing.memory_stream_pair()
        server.server.connect_stream(server_end)
        self._h11 = h11.Connection(h11.CLIENT)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self, method: str = "GET") -> Response:
        """The next response (the request it answers was sent raw, with :meth:`send`)."""
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        # tell the parser which request the response answers (the bytes are not sent)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        response: Response | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await self.stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                response = Response(event.status_code, {
                    k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers})
            elif isinstance(event, h11.Data):
                assert response is not None
                response.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response
            else:
                pytest.fail(f"unexpected {event!r} instead of a response")

    async def closed(self) -> float:
        """Wait for the server to close the connection, with nothing more sent; the
        time it took."""
        start = trio.current_time()
        leftover = self._h11.trailing_data[0]
        assert leftover == b"", f"unexpected bytes {leftover!r}"
        data = await self.stream.receive_some(65536)
        assert data == b"", f"expected the connection to close, got {bytes(data)!r}"
        return trio.current_time() - start

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_two_requests_on_one_connection(autojump_clock: trio.testing.MockClock) -> None:
    """Keep-alive: a second request on the same connection is answered, then a third."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        for _ in range(2):
            await conn.send(request("/healthz"))
            response = await conn.response()
            assert response.status == 200
            assert response.json() == {"status": "ok"}
            assert "close" not in response.headers.get("connection", "")
        await conn.send(request("/no/such/path"))
        assert (await conn.response()).status == 404
        await conn.aclose()


async def test_head_gets_headers_only_and_the_connection_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``HEAD /healthz`` is answered with the headers of the GET (its length included)
    and no body, and the next request on the connection is served."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(request("/healthz", "HEAD"))
        head = await conn.response("HEAD")
        assert head.status == 200
        assert head.body == b""
        assert head.headers["content-length"] == str(len(b'{"status": "ok"}'))
        await conn.send(request("/healthz"))
        response = await conn.response()
        assert response.json() == {"status": "ok"}
        await conn.aclose()


async def test_pipelined_requests_are_answered_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three requests written at once (GET /healthz twice, then a 404 path) get three
    responses, in the order of the requests."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(request("/healthz") + request("/healthz") + request("/nope"))
        statuses = [(await conn.response()).status for _ in range(3)]
        assert statuses == [200, 200, 404]
        await conn.aclose()


async def test_connection_close_closes_after_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Connection: close``: the request is answered (saying ``connection: close``),
    then the connection closes at once; a request pipelined after it is not served."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(request("/healthz", "GET", "Connection: close") + request("/healthz"))
        response = await conn.response()
        assert response.status == 200
        assert response.headers["connection"].lower() == "close"
        assert await conn.closed() == 0


async def test_http_1_0_request_closes_after_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An HTTP/1.0 request (no keep-alive) is answered, then the connection closes."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert (await conn.response()).status == 200
        assert await conn.closed() == 0


async def test_body_larger_than_max_payload_gets_413(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A POST body of max_payload + 1 bytes gets 413 at once and the connection closes;
    one of exactly max_payload bytes is read and routed (404 here, on the same kind of
    connection, which stays open)."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        big = HttpConnection(server)
        await big.send(request("/anything", "POST", f"Content-Length: {MAX_PAYLOAD + 1}",
                               body=b"x" * (MAX_PAYLOAD + 1)))
        response = await big.response("POST")
        assert response.status == 413
        assert response.headers["connection"].lower() == "close"
        assert await big.closed() == 0

        fits = HttpConnection(server)
        await fits.send(request("/anything", "POST", f"Content-Length: {MAX_PAYLOAD}",
                                body=b"x" * MAX_PAYLOAD))
        assert (await fits.response("POST")).status == 404
        await fits.send(request("/healthz"))
        assert (await fits.response()).status == 200
        await fits.aclose()


async def test_body_that_never_finishes_gets_408_after_body_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A POST announcing 100 bytes that sends 10 gets 408 Request Timeout (not 413: it
    is not too large) after BODY_TIMEOUT_S, then the connection closes."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        start = trio.current_time()
        await conn.send(request("/anything", "POST", "Content-Length: 100", body=b"x" * 10))
        response = await conn.response("POST")
        assert trio.current_time() - start == pytest.approx(BODY_TIMEOUT_S, abs=1e-3)
        assert response.status == 408
        assert await conn.closed() == 0


async def test_head_that_never_finishes_is_dropped_after_head_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A first request head that never ends (no blank line) is dropped without an
    answer HEAD_TIMEOUT_S after the connection opened; so is a connection that sends
    nothing at all."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        partial = HttpConnection(server)
        await partial.send(b"GET /healthz HTTP/1.1\r\nHost: collabtrio.test\r\n")
        silent = HttpConnection(server)
        assert await partial.closed() == pytest.approx(HEAD_TIMEOUT_S, abs=1e-3)
        assert await silent.closed() == 0  # closed at the same moment


async def test_second_head_that_never_finishes_is_dropped_after_head_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a keep-alive connection, a next request head that starts but never ends is
    dropped HEAD_TIMEOUT_S after it started (not KEEP_ALIVE_S after the last answer)."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(request("/healthz"))
        assert (await conn.response()).status == 200
        await trio.sleep(KEEP_ALIVE_S - 1)  # idle, within the keep-alive wait
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: collabtrio.test\r\n")
        assert await conn.closed() == pytest.approx(HEAD_TIMEOUT_S, abs=1e-3)


async def test_idle_keep_alive_connection_is_closed_after_keep_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After an answer, an idle connection waits KEEP_ALIVE_S for the next request: one
    arriving just before is served (and restarts the wait), then silence closes it."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(request("/healthz"))
        assert (await conn.response()).status == 200
        await trio.sleep(KEEP_ALIVE_S - 1)
        await conn.send(request("/healthz"))
        assert (await conn.response()).status == 200
        assert await conn.closed() == pytest.approx(KEEP_ALIVE_S, abs=1e-3)


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",  # not a request line
    b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",  # bad header line
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",  # bad length
    b"GET /healthz\r\n\r\n",  # no HTTP version
])
async def test_malformed_request_gets_a_4xx_and_the_connection_closes(
    autojump_clock: trio.testing.MockClock, raw: bytes
) -> None:
    """A request h11 cannot parse gets a 4xx answer, then the connection closes."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(raw)
        response = await conn.response()
        assert 400 <= response.status < 500
        assert await conn.closed() == 0


async def test_head_trickling_past_max_head_bytes_gets_431(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request head that grows past MAX_HEAD_BYTES without ending gets 431."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: collabtrio.test\r\n")
        sent = 0
        with pytest.raises(trio.BrokenResourceError):  # the server stops reading
            while sent < 2 * MAX_HEAD_BYTES:
                await conn.send(f"X-Filler-{sent}: {'a' * 980}\r\n".encode())
                sent += 1000
                await trio.testing.wait_all_tasks_blocked()  # read chunk by chunk
        assert sent > MAX_HEAD_BYTES
        response = await conn.response()
        assert response.status == 431
        assert await conn.closed() == 0


async def test_complete_head_larger_than_max_head_bytes_gets_431(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The head limit holds however the head arrives: 20 KiB in one write gets 431."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(request("/nope", "GET", "X-Big: " + "a" * 20 * 1024))
        assert (await conn.response()).status == 431


@pytest.mark.parametrize("target", ["/healthz", "/socket.io/?EIO=4&transport=websocket"])
async def test_head_padded_with_whitespace_past_max_head_bytes_gets_431(
    autojump_clock: trio.testing.MockClock, target: str,
) -> None:
    """The limit counts the head as sent: 22.9 kB of optional whitespace (which h11
    strips from the value) in one write gets 431, on an HTTP route and on an upgrade."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        raw = request(target, "GET", *UPGRADE_HEADERS, "X-Pad:" + " " * 22_900 + "v")
        assert len(raw) > MAX_HEAD_BYTES
        await conn.send(raw)
        assert (await conn.response()).status == 431
        assert await conn.closed() == 0


async def test_head_just_within_max_head_bytes_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A head of exactly MAX_HEAD_BYTES, however padded, is served."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        raw = request("/healthz", "GET", "X-Pad:v")
        raw = request("/healthz", "GET", "X-Pad:" + " " * (MAX_HEAD_BYTES - len(raw)) + "v")
        assert len(raw) == MAX_HEAD_BYTES
        await conn.send(raw)
        assert (await conn.response()).status == 200


SOCKETIO_WS = "/socket.io/?EIO=4&transport=websocket"


async def test_http_1_0_websocket_upgrade_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """RFC 6455 section 4.1 asks for HTTP/1.1 or later: an HTTP/1.0 upgrade gets 400,
    then the connection closes."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        raw = request(SOCKETIO_WS, "GET", *UPGRADE_HEADERS).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        await conn.send(raw)
        response = await conn.response()
        assert response.status == 400
        assert response.json() == {"code": 3, "message": "a WebSocket upgrade needs HTTP/1.1"}
        assert await conn.closed() == 0
        assert not server.server.connections


@pytest.mark.parametrize("key", [
    "not base64!",
    "dGhlIHNhbXBsZSBub25j",  # base64 of 15 bytes
    "dGhlIHNhbXBsZSBub25jZSE=",  # base64 of 17 bytes
    "",
])
async def test_malformed_websocket_key_gets_400(
    autojump_clock: trio.testing.MockClock, key: str,
) -> None:
    """``Sec-WebSocket-Key`` must be the base64 encoding of 16 bytes (RFC 6455 4.1)."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        headers = [h for h in UPGRADE_HEADERS if not h.startswith("Sec-WebSocket-Key")]
        await conn.send(request(SOCKETIO_WS, "GET", *headers, f"Sec-WebSocket-Key: {key}"))
        response = await conn.response()
        assert response.status == 400
        assert "Sec-WebSocket-Key" in str(response.json())
        assert not server.server.connections


async def test_unsupported_websocket_version_gets_426_naming_version_13(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """RFC 6455 section 4.4: a version the server does not speak gets 426 Upgrade
    Required with ``Sec-WebSocket-Version: 13``."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        headers = [h for h in UPGRADE_HEADERS if not h.startswith("Sec-WebSocket-Version")]
        await conn.send(request(SOCKETIO_WS, "GET", *headers, "Sec-WebSocket-Version: 8"))
        response = await conn.response()
        assert response.status == 426
        assert response.headers["sec-websocket-version"] == "13"
        assert await conn.closed() == 0


async def test_websocket_upgrade_to_unknown_path_gets_404(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A WebSocket handshake to a path with no WebSocket route is refused with 404 and
    ``{code, message}``, then the connection closes (even ``/healthz``, an HTTP route)."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        for path in ("/no/such/socket", "/healthz"):
            conn = HttpConnection(server)
            await conn.send(request(path, "GET", *UPGRADE_HEADERS))
            response = await conn.response()
            assert response.status == 404
            assert response.json() == {"code": 3, "message": "not found"}
            assert await conn.closed() == 0


async def test_polling_requests_share_a_keep_alive_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bad ``/socket.io/`` request gets 400 with Engine.IO's JSON body, and the same
    connection then carries a polling handshake and other requests."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(request("/socket.io/"))
        response = await conn.response()
        assert response.status == 400
        assert response.json() == {"code": 5,
                                   "message": "unsupported Engine.IO version (EIO=4 required)"}
        await conn.send(request("/socket.io/?EIO=4&transport=polling"))
        handshake = await conn.response()
        assert handshake.status == 200
        assert handshake.body.startswith(b'0{"sid":')
        await conn.send(request("/healthz"))
        assert (await conn.response()).status == 200
        await conn.aclose()


async def test_websocket_upgrade_as_second_request_on_keep_alive_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a plain request on a keep-alive connection, a WebSocket upgrade on the same
    connection is handed to Socket.IO: the full CONNECT works, and so do events."""
    async with open_test_server(max_payload=MAX_PAYLOAD) as server:
        conn = HttpConnection(server)
        await conn.send(request("/healthz"))
        assert (await conn.response()).status == 200
        async with connect(token=server.token("alice"), stream=conn.stream) as client:
            assert client.sid
            assert client.engine["maxPayload"] == MAX_PAYLOAD
            joined = await client.join("doc:1")
            assert joined["ok"] is True
            assert [u["userId"] for u in joined["presence"]["users"]] == ["alice"]
            assert len(server.server.connections) == 1


async def test_frames_sent_with_the_upgrade_request_are_read_after_the_101(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that writes its first frame (the Socket.IO CONNECT) in the same packet
    as its upgrade request gets the 101 (with the RFC 6455 accept token), the Engine.IO
    OPEN and then the answer to that CONNECT: nothing read after the head is lost."""
    async with open_test_server() as server:
        conn = HttpConnection(server)
        framing = wsproto.connection.Connection(wsproto.ConnectionType.CLIENT)
        connect_frame = framing.send(wsproto.events.TextMessage(
            data="40" + json.dumps({"token": server.token("alice")})))
        await conn.send(request(SOCKETIO_WS, "GET", *UPGRADE_HEADERS) + connect_frame)
        data = b""
        while b"\r\n\r\n" not in data:
            data += await conn.stream.receive_some()
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        # RFC 6455 section 1.3's example nonce and its accept token
        assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert headers["upgrade"].lower() == "websocket"
        messages: list[str] = []
        framing.receive_data(rest)
        with trio.fail_after(5):  # a CONNECT that was lost is never answered
            while len(messages) < 2:
                for event in framing.events():
                    if isinstance(event, wsproto.events.TextMessage):
                        messages.append(event.data)
                if len(messages) < 2:
                    framing.receive_data(await conn.stream.receive_some())
        assert messages[0].startswith("0{")
        assert messages[1].startswith("40{")
        assert "sid" in json.loads(messages[1][2:])
