"""Inputs the fuzzers found, kept as regression tests (each was a bug, now fixed).

Found by ``bench/fuzz.py --target frontdoor`` and ``tests/fuzz/test_server.py``, or by
reading the code a crash pointed at. A bug found but not fixed yet goes here as a
``@pytest.mark.xfail(strict=True, reason=...)`` test, with a matching case in
:func:`tests.fuzz.targets.known_bug` so the property tests stay green meanwhile.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from collabtrio.protocol import engineio, jsonsafe
from collabtrio.protocol import engineio_session as es
from collabtrio.testing import TestServer, open_test_server

from . import targets


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def exchange(server: TestServer, data: bytes) -> bytes:
    """Send ``data`` on a new connection, then EOF; everything the server wrote back."""
    client, server_end = trio.testing.memory_stream_pair()
    server.server.connect_stream(server_end)
    await client.send_all(data)
    await client.send_stream.aclose()
    out = bytearray()
    with trio.move_on_after(30):
        while chunk := await client.receive_some(65536):
            out += chunk
    return bytes(out)


# found by bench/fuzz.py --target frontdoor (the first two) and by hand from them
BODY_CRASHES = [
    b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\x0f\n0\r\n\r\n",
    b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n\r\n",
    b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
]


@pytest.mark.parametrize("data", BODY_CRASHES)
def test_bad_request_body_is_no_server_error(data: bytes) -> None:
    """A malformed or cut-off body was an h11 RemoteProtocolError out of _read_body:
    logged as a server error, and no 400."""
    targets.check_frontdoor([data], tolerate_known=False)


async def test_malformed_chunked_poll_body_gets_400(autojump_clock: trio.testing.MockClock) -> None:
    """The same on the real server: a long-polling POST with a broken chunked body is
    answered 400, not logged as a server error."""
    async with open_test_server() as server:
        with targets.logged_exceptions() as records:
            out = await exchange(server, b"POST /socket.io/?EIO=4&transport=polling&sid=x "
                                 b"HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"5\r\nhello\x0f\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert records == []


async def test_client_leaving_mid_body_is_not_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client gone in the middle of a body was logged as a server error."""
    async with open_test_server() as server:
        with targets.logged_exceptions() as records:
            await exchange(server, b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1"
                           b"\r\nHost: t\r\nContent-Length: 100\r\n\r\n4hello")
    assert records == []


async def test_head_with_a_body_gets_413(autojump_clock: trio.testing.MockClock) -> None:
    """The 413 was written with a body, which h11 refuses for HEAD (LocalProtocolError):
    logged, and no answer at all."""
    async with open_test_server() as server:
        with targets.logged_exceptions() as records:
            out = await exchange(server, b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n"
                                 b"Content-Length: 5\r\n\r\nhello")
    assert out.startswith(b"HTTP/1.1 413 ")
    assert records == []


async def test_websocket_upgrade_with_a_non_ascii_host_gets_400(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """wsproto decoded Host as IDNA; its UnicodeDecodeError was not a HandshakeError:
    logged, no answer. Found by tests/fuzz/test_server.py (COLLABTRIO_FUZZ_SEED=2797591534)."""
    async with open_test_server() as server:
        with targets.logged_exceptions() as records:
            out = await exchange(server, b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1"
                                 b"\r\nHost: collabtrio\x93test\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\n"
                                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert records == []


async def test_request_target_with_a_bad_ipv6_host_gets_400(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """urlsplit's ValueError for ``//[`` (a bad IPv6 host) was not caught: logged, no
    answer. Found by bench/fuzz.py --target frontdoor (reduced)."""
    async with open_test_server() as server:
        with targets.logged_exceptions() as records:
            out = await exchange(server, b"GET //[ HTTP/1.1\r\nHost: t\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert records == []


def test_connect_answered_by_a_route_is_no_server_error() -> None:
    """A 2xx answer to CONNECT made h11 switch to a tunnel, so the body could not be
    written (LocalProtocolError, logged). Found by bench/fuzz.py --target frontdoor
    (reduced): the test router's ``/h`` answers 200 to every method."""
    targets.check_frontdoor([b"CONNECT /h HTTP/1.1\r\nHost: x\r\n\r\n"], tolerate_known=False)


def test_client_session_refuses_a_deeply_nested_open_packet() -> None:
    """_parse_open caught ValueError only: RecursionError got out of ``receive``."""
    session = es.EngineSession(es.Side.CLIENT, "polling")
    with pytest.raises(es.RemoteProtocolError):
        session.receive(engineio.Packet(engineio.PacketType.OPEN, "[" * 100_000))


def test_jsonsafe_refuses_a_raw_lone_surrogate() -> None:
    """loads looked for lone surrogates only as ``\\u`` escapes (no wire path gives a raw
    one: frames and bodies are strict UTF-8)."""
    with pytest.raises(jsonsafe.UnsafeJSON):
        jsonsafe.loads('["\ud800"]')
