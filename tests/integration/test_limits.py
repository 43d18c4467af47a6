"""Limits and bad input: each costs only the client that caused it. Mock clock."""

from __future__ import annotations

import jwt
import pytest
import trio
import trio.testing

from collabtrio.client import Disconnected
from collabtrio.testing import open_test_server


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_ping_keeps_a_live_client_and_drops_a_silent_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(ping_interval_ms=25000, ping_timeout_ms=20000) as server:
        async with server.client("live") as live, server.client("silent") as silent:
            assert live.engine["pingInterval"] == 25000
            assert live.engine["pingTimeout"] == 20000
            silent.answer_pings = False
            start = trio.current_time()
            await silent.wait_closed()
            # first ping at 25 s, no pong by 25 + 20 s: closed then, not before
            assert trio.current_time() - start == pytest.approx(45, abs=0.01)
            await trio.sleep(600)
            assert (await live.join("r"))["ok"] is True
            assert len(server.server.connections) == 1


async def test_rate_limit_refills(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(rate_limit_per_s=5, rate_limit_burst=5) as server:
        async with server.client("a") as a, server.client("b") as b:
            await trio.sleep(10)  # full bucket
            await a.call("join", {"room": "r"})  # 1 token
            results = [await a.call("cursor", {"room": "r", "cursor": i}) for i in range(6)]
            codes = [r.get("error", {}).get("code") for r in results]
            assert codes == [None, None, None, None, "RATE_LIMITED", "RATE_LIMITED"]
            assert results[-1]["error"]["retryable"] is True
            await trio.sleep(1.0)  # 5 tokens back
            results = [await a.call("cursor", {"room": "r", "cursor": i}) for i in range(6)]
            assert [r["ok"] for r in results] == [True] * 5 + [False]
            # the other client is not affected
            assert (await b.join("r"))["ok"] is True


async def test_oversized_event_gets_too_large_and_connection_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_event_bytes=1000) as server, server.client("a") as a:
        await a.join("r")
        ack = await a.call("broadcast", {"room": "r", "event": "x", "data": "y" * 2000})
        assert ack["error"]["code"] == "TOO_LARGE"
        assert ack["error"]["retryable"] is False
        blob_ack = await a.call("broadcast", {"room": "r", "event": "x", "data": b"z" * 2000})
        assert blob_ack["error"]["code"] == "TOO_LARGE"
        assert (await a.call("cursor", {"room": "r", "cursor": 1})) == {"ok": True}


async def test_message_past_max_payload_closes_only_that_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_payload=10_000) as server:
        async with server.client("big") as big, server.client("other") as other:
            await big.join("r")
            await other.join("r")
            await big.emit("broadcast", {"room": "r", "event": "x", "data": "y" * 20_000})
            await big.wait_closed()
            assert "1009" in (big.disconnect_reason or "")
            assert (await other.call("cursor", {"room": "r", "cursor": 1})) == {"ok": True}


@pytest.mark.parametrize(
    "raw",
    [
        "4",  # empty Socket.IO packet
        "42[not json",
        "49",  # unknown Socket.IO type
        '42{"a":1}',  # event data must be a list
        "42[]",
        "43[1]",  # ack without id is fine to ignore, but malformed
        b"\x00\x01",  # attachment with no binary packet pending
        "x",  # unknown Engine.IO type
        "",
    ],
)
async def test_malformed_packets_hurt_nobody_else(
    autojump_clock: trio.testing.MockClock, raw: str | bytes
) -> None:
    async with open_test_server() as server:
        async with server.client("bad") as bad, server.client("good") as good:
            await bad.join("r")
            await good.join("r")
            await bad.send_raw(raw)
            await trio.sleep(1)
            # the server and the room are fine
            assert (await good.call("cursor", {"room": "r", "cursor": 1})) == {"ok": True}
            if not bad._closed.is_set():
                # a recoverable packet error leaves the bad client connected and told
                assert (await bad.call("typing", {"room": "r", "typing": True})) == {"ok": True}


async def test_too_many_attachments_closes_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_attachments=2) as server:
        async with server.client("bad") as bad, server.client("good") as good:
            await bad.send_raw('453-["broadcast",{"room":"r"}]')
            await bad.wait_closed()
            assert (await good.join("r"))["ok"] is True


async def test_events_before_connect_are_ignored(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server, server.client("a") as a:
        assert a.sid is not None
        assert len(server.server.connections) == 1


async def test_slow_consumer_drops_volatile_first_then_disconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_test_server(
        outbox_max_bytes=4096, rate_limit_per_s=10_000, rate_limit_burst=10_000
    ) as server, server.client("fast") as fast,
        server.client("slow", stream_pair=trio.testing.lockstep_stream_pair) as slow,
    ):
        await fast.join("r")
        await slow.join("r")
        await trio.testing.wait_all_tasks_blocked()
        slow.pause_reading()
        # volatile cursors: dropped once the outbox is full, but no disconnect
        for i in range(300):
            await fast.call("cursor", {"room": "r", "cursor": {"i": i, "pad": "x" * 50}})
        await trio.testing.wait_all_tasks_blocked()
        slow_conn = next(c for c in server.server.connections if c.sid == slow.sid)
        assert slow_conn.close_reason is None
        assert slow_conn.outbox.dropped_volatile > 0
        # non-volatile broadcasts that do not fit: disconnected as a slow consumer
        for _ in range(300):
            await fast.call("broadcast", {"room": "r", "event": "e", "data": "y" * 100})
        assert slow_conn.close_reason == "slow-consumer"
        slow.resume_reading()
        events = []
        with pytest.raises(Disconnected):
            while True:
                events.append(await slow.next_event())
        errors = [data for name, data in events if name == "error"]
        assert errors
        assert errors[-1]["reason"] == "slow-consumer"
        # the fast member and the room carry on
        assert (await fast.call("cursor", {"room": "r", "cursor": 0})) == {"ok": True}
        room = server.server.registry.get("r")
        assert room is not None
        assert len(room.members) == 1


async def test_token_expiry_then_refresh(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(token_refresh_grace_s=25) as server:
        async with server.client("a") as keeper:
            pass
        token = server.token("alice", ttl_s=60)
        async with server.connect(token=token) as alice:
            await alice.join("r")
            err = await alice.next_event("error", timeout=120)
            assert err["code"] == "TOKEN_EXPIRED"
            await trio.sleep(20)
            ack = await alice.call("refresh-token", {"token": server.token("alice", ttl_s=60)})
            assert ack["ok"] is True
            await trio.sleep(30)  # past the first grace period
            assert (await alice.call("cursor", {"room": "r", "cursor": 1})) == {"ok": True}
            # another user's token is refused
            ack = await alice.call("refresh-token", {"token": server.token("mallory")})
            assert ack["error"]["code"] == "FORBIDDEN"
        del keeper


async def test_token_expiry_without_refresh_disconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(token_refresh_grace_s=25) as server:
        token = server.token("alice", ttl_s=60)
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        async with server.connect(token=token) as alice:
            expected = exp - server.wall_clock() + 25
            start = trio.current_time()
            await alice.wait_closed()
            assert trio.current_time() - start == pytest.approx(expected, abs=0.01)


async def test_max_connections(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(max_connections=1) as server, server.client("a"):
        with pytest.raises(Exception):  # noqa: B017,PT011 - the handshake is refused (503)
            async with server.client("b"):
                pass


async def test_socket_without_connect_is_closed_after_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trio_websocket import ConnectionClosed, wrap_client_stream

    from collabtrio.client import socketio_resource

    async with open_test_server(connect_timeout_s=10, max_connections=1) as server:
        client_end, server_end = trio.testing.memory_stream_pair()
        server.server.connect_stream(server_end)
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, client_end, "x", socketio_resource())
            start = trio.current_time()
            assert (await ws.get_message()).startswith("0")  # the open packet, no CONNECT
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.get_message()
            assert trio.current_time() - start == pytest.approx(10, abs=0.01)
            await ws.aclose()
            await client_end.aclose()
        # the slot is free again
        async with server.client("a") as a:
            assert a.sid


async def test_binary_packet_without_its_attachments_is_still_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server, server.client("a") as a:
        await a.join("r")
        # announces one attachment (ack id 900) but the next frame is a new packet
        await a.send_raw('451-900["broadcast",{"room":"r","event":"e","data":'
                         '{"_placeholder":true,"num":0}}]')
        ack = await a.call("cursor", {"room": "r", "cursor": 1})
        assert ack == {"ok": True}  # the new packet was read as usual
        [(ack_id, abandoned)] = a.unmatched_acks
        assert ack_id == 900
        assert abandoned["error"]["code"] == "VALIDATION"
