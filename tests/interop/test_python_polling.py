"""python-socketio's AsyncClient over HTTP long-polling, against a real server.

With its default transports the client opens the session with long-polling and
upgrades it to a WebSocket at once; with ``transports=["polling"]`` it stays on
long-polling for good (held ``GET`` requests, ``POST`` payloads, binary attachments as
base64 records). Also: allowed origins (``--cors-origins``) and a token in the
``Authorization: Bearer`` header of the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import engineio.payload
import pytest
import socketio

from tests.conftest import ServerProcess

from .conftest import TIMEOUT_S, Client, ConnectRefused, clients, run

pytestmark = pytest.mark.interop

APP = "https://app.example"
EVIL = "https://evil.example"
NO_UPGRADE_WAIT_S = 1.0
"""How long a polling-only client is watched for an upgrade (one takes ~10 ms here)."""


class TransportClient(Client):
    """:class:`~tests.interop.conftest.Client` with a choice of transports (``None``:
    python-socketio's default, polling then the upgrade to websocket)."""

    def __init__(self, server: ServerProcess, transports: list[str] | None = None) -> None:
        super().__init__(server)
        self.transports = transports

    async def connect(self, token: str | None = None, *, auth: Any = None,
                      headers: dict[str, str] | None = None, query: Any = None,
                      namespaces: list[str] | None = None) -> TransportClient:
        if auth is None and token is not None:
            auth = {"token": token}
        try:
            await asyncio.wait_for(
                self.sio.connect(self.server.url, auth=auth, headers=headers or {},
                                 transports=self.transports, namespaces=namespaces,
                                 wait_timeout=TIMEOUT_S),
                TIMEOUT_S + 1,
            )
        except socketio.exceptions.ConnectionError as exc:
            if self.connect_errors:
                raise ConnectRefused(self.connect_errors[-1]) from exc
            raise
        return self

    @property
    def transport(self) -> str:
        return self.sio.transport()  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def transport_client(server: ServerProcess, sub: str | None,
                           transports: list[str] | None = None,
                           headers: dict[str, str] | None = None
                           ) -> AsyncIterator[TransportClient]:
    """A connected :class:`TransportClient` (token for ``sub``, none if ``None``)."""
    client = TransportClient(server, transports)
    try:
        token = server.token(sub, name=sub.title()) if sub is not None else None
        await client.connect(token, headers=headers)
        yield client
    finally:
        await client.close()


def _op(room: str, op_id: str, eid: str, data: Any) -> dict[str, Any]:
    return {"room": room, "operationId": op_id, "op": "add", "collection": "shapes",
            "id": eid, "data": data}


# -- default transports: polling, then the upgrade -----------------------------------------


def test_default_transports_upgrade_and_collaborate(server: ServerProcess) -> None:
    room = "doc:py-default"

    async def main() -> None:
        async with transport_client(server, "alice") as alice, clients(server, "bob") as (bob,):
            assert alice.transport == "websocket"
            ack = await alice.join(room)
            assert ack["role"] == "write"
            await bob.join(room)
            first = await alice.call("op", _op(room, "py-1", "s1", {"x": 1}))
            assert first["ok"] is True, first
            assert first["operationId"] == "py-1"
            got = await bob.wait_for("op")
            assert (got["operationId"], got["seq"], got["userId"]) == (
                "py-1", first["seq"], "alice")
            second = await bob.call("op", _op(room, "py-2", "s2", {"x": 2}))
            got = await alice.wait_for("op")
            assert (got["operationId"], got["seq"], got["data"]) == (
                "py-2", second["seq"], {"x": 2})
            again = await alice.call("op", _op(room, "py-1", "s1", {"x": 1}))
            assert again == first  # the same operationId is answered, not applied twice
            assert alice.transport == "websocket"

    run(main())


# -- polling only --------------------------------------------------------------------------


def test_polling_only_client_collaborates(server: ServerProcess) -> None:
    room = "doc:py-polling"
    blob_up = bytes(range(256)) * 8
    blob_down = bytes(range(255, -1, -1)) * 3

    async def main() -> None:
        async with transport_client(server, "alice", ["polling"]) as alice, \
                clients(server, "bob") as (bob,):
            assert alice.transport == "polling"
            ack = await alice.join(room)
            assert ack["presence"]["connections"] == 1
            await bob.join(room)
            await alice.wait_for("presence", lambda p: p["connections"] == 2)

            # ops with acks, both ways
            first = await alice.call("op", _op(room, "p-1", "s1", {"name": "ü🚀"}))
            assert first["ok"] is True, first
            got = await bob.wait_for("op")
            assert (got["operationId"], got["data"], got["socketId"]) == (
                "p-1", {"name": "ü🚀"}, alice.sid)
            second = await bob.call("op", _op(room, "p-2", "s2", {"n": 2}))
            got = await alice.wait_for("op")
            assert (got["operationId"], got["seq"]) == ("p-2", second["seq"])
            assert second["seq"] == first["seq"] + 1

            # a broadcast from the websocket client, with text past the 0x1e separator
            ack = await bob.call("broadcast", {"room": room, "event": "hello",
                                               "data": {"text": "a\x1eb", "n": 1}})
            assert ack == {"ok": True}
            got = await alice.wait_for("broadcast", lambda b: b["event"] == "hello")
            assert got["data"] == {"text": "a\x1eb", "n": 1}
            assert got["userId"] == "bob"

            # binary both ways
            ack = await alice.call("broadcast", {"room": room, "event": "up",
                                                 "data": {"update": blob_up}})
            assert ack == {"ok": True}
            got = await bob.wait_for("broadcast", lambda b: b["event"] == "up")
            assert got["data"] == {"update": blob_up}
            await bob.emit("broadcast", {"room": room, "event": "down",
                                         "data": [blob_down, {"more": b"\x00\x1e\xff"}]})
            got = await alice.wait_for("broadcast", lambda b: b["event"] == "down")
            assert got["data"] == [blob_down, {"more": b"\x00\x1e\xff"}]
            assert isinstance(got["data"][0], bytes)

            await asyncio.sleep(NO_UPGRADE_WAIT_S)
            assert alice.transport == "polling"
            assert alice.sio.connected
            assert alice.named("operation-error") == []

    run(main())


def test_polling_client_disconnect_updates_presence(server: ServerProcess) -> None:
    room = "doc:py-bye"

    async def main() -> None:
        async with clients(server, "bob") as (bob,):
            await bob.join(room)
            async with transport_client(server, "alice", ["polling"]) as alice:
                await alice.join(room)
                await bob.wait_for("presence", lambda p: p["connections"] == 2)
                await alice.sio.disconnect()
            presence = await bob.wait_for("presence", lambda p: p["connections"] == 1)
            assert [u["userId"] for u in presence["users"]] == ["bob"]

    run(main())


def test_polling_client_answers_pings_and_stays_connected(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--ping-interval-ms", "100", "--ping-timeout-ms", "1000")

    async def main() -> None:
        async with transport_client(server, "alice", ["polling"]) as alice:
            await asyncio.sleep(1.2)  # about ten ping/pong cycles over held GETs
            assert not alice.disconnects
            assert (await alice.join("doc:py-ping"))["ok"] is True
            assert alice.transport == "polling"

    run(main())


FAST_PUBLISHER = ("--rate-limit-per-s", "100000", "--rate-limit-burst", "100000")
"""Server flags that let one client publish 1,000 events at once."""


async def _burst(server: ServerProcess, room: str, count: int) -> TransportClient:
    """A polling-only subscriber gets ``count`` events a websocket client emits as fast
    as it can, then an ``end`` broadcast; the subscriber is returned still open."""
    async with transport_client(server, "sub", ["polling"]) as sub, \
            clients(server, "pub") as (pub,):
        await sub.join(room)
        await pub.join(room)
        for n in range(count):
            await pub.emit("broadcast", {"room": room, "event": "n", "data": {"n": n}})
        ack = await pub.call("broadcast", {"room": room, "event": "end", "data": None})
        assert ack == {"ok": True}
        assert pub.named("operation-error") == []
        deadline = time.monotonic() + 10
        while not any(b["event"] == "end" for b in sub.named("broadcast")):
            assert not sub.disconnects, f"the polling client was disconnected: {sub.disconnects}"
            assert time.monotonic() < deadline, f"no end event; got {len(sub.events)} events"
            await asyncio.sleep(0.01)
        assert sub.sio.connected
        assert sub.transport == "polling"
        return sub


def _numbers(sub: TransportClient) -> list[int]:
    return [b["data"]["n"] for b in sub.named("broadcast") if b["event"] == "n"]


def test_polling_subscriber_gets_every_event_in_order(
        server_factory: Callable[..., ServerProcess]) -> None:
    """1,000 events reach a stock python-socketio polling client in order, once each:
    many to one held GET, the others queued between GETs (the server answers a poll
    with at most 16 packets, the most python-engineio's client accepts)."""
    server = server_factory(*FAST_PUBLISHER)
    sub = run(_burst(server, "doc:py-order", 1000))
    assert _numbers(sub) == list(range(1000))


def test_polling_publisher_events_in_order(
        server_factory: Callable[..., ServerProcess]) -> None:
    """300 events a polling client emits at once (its POSTs carry many packets each)
    reach a websocket subscriber in order, once each."""
    server = server_factory(*FAST_PUBLISHER)
    room = "doc:py-pollpub"
    count = 300

    async def main() -> None:
        async with transport_client(server, "pub", ["polling"]) as pub, \
                clients(server, "sub") as (sub,):
            await pub.join(room)
            await sub.join(room)
            for n in range(count):
                await pub.emit("broadcast", {"room": room, "event": "n", "data": {"n": n}})
            ack = await pub.call("broadcast", {"room": room, "event": "end", "data": None})
            assert ack == {"ok": True}
            await sub.wait_for("broadcast", lambda b: b["event"] == "end", timeout=10)
            got = [b["data"]["n"] for b in sub.named("broadcast") if b["event"] == "n"]
            assert got == list(range(count))
            assert pub.named("operation-error") == []

    run(main())


def test_a_burst_reaches_a_stock_python_polling_client(
        server_factory: Callable[..., ServerProcess]) -> None:
    """A burst of 200 events stays connected and arrives whole at a stock python-socketio
    polling client, which refuses a poll answer of more than 16 packets."""
    assert engineio.payload.Payload.max_decode_packets == 16  # the stock client's limit
    server = server_factory(*FAST_PUBLISHER)
    sub = run(_burst(server, "doc:py-burst", 200))
    assert _numbers(sub) == list(range(200))


# -- allowed origins -----------------------------------------------------------------------


@pytest.fixture
def cors_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--cors-origins", APP)


@pytest.mark.parametrize("transports", [None, ["polling"], ["websocket"]],
                         ids=["default", "polling", "websocket"])
def test_origin_not_allowed_cannot_connect(cors_server: ServerProcess,
                                           transports: list[str] | None) -> None:
    async def main() -> None:
        client = TransportClient(cors_server, transports)
        try:
            with pytest.raises(ConnectRefused) as info:
                await client.connect(cors_server.token("mallory"), headers={"Origin": EVIL})
            assert not client.sio.connected
            if transports == ["websocket"]:
                # the WebSocket handshake is refused (HTTP 403): aiohttp tells no more
                assert info.value.data == "Connection error"
            else:
                # the polling handshake's answer: HTTP 403 with Engine.IO's error body
                assert info.value.data == {"code": 4, "message": info.value.data["message"]}
                assert "origin" in info.value.data["message"]
        finally:
            await client.close()

    run(main())


@pytest.mark.parametrize("transports", [None, ["polling"]], ids=["default", "polling"])
def test_allowed_origin_connects_and_works(cors_server: ServerProcess,
                                           transports: list[str] | None) -> None:
    room = "doc:py-cors"

    async def main() -> None:
        async with transport_client(cors_server, "alice", transports,
                                    headers={"Origin": APP}) as alice, \
                clients(cors_server, "bob") as (bob,):
            assert alice.transport == ("polling" if transports else "websocket")
            await alice.join(room)
            await bob.join(room)
            ack = await alice.call("op", _op(room, "c-1", "s1", {"v": 1}))
            assert ack["ok"] is True, ack
            await bob.wait_for("op")
            await bob.emit("cursor", {"room": room, "cursor": {"x": 3}})
            got = await alice.wait_for("cursor")
            assert got["cursor"] == {"x": 3}

    run(main())


# -- a token in the Authorization header ---------------------------------------------------


@pytest.mark.parametrize("transports", [None, ["polling"]], ids=["default", "polling"])
def test_bearer_token_on_the_polling_handshake(server: ServerProcess,
                                               transports: list[str] | None) -> None:
    token = server.token("alice", name="Alice", rooms={"doc:*": "read"})

    async def main() -> None:
        async with transport_client(server, None, transports,
                                    headers={"Authorization": f"Bearer {token}"}) as alice:
            ack = await alice.join("doc:py-bearer")
            assert ack["role"] == "read"
            (me,) = ack["presence"]["users"]
            assert (me["userId"], me["userName"], me["socketId"]) == (
                "alice", "Alice", alice.sid)
            assert alice.transport == ("polling" if transports else "websocket")

    run(main())


def test_bad_bearer_token_is_refused(server: ServerProcess) -> None:
    async def main() -> None:
        client = TransportClient(server)
        try:
            with pytest.raises(ConnectRefused) as info:
                await client.connect(headers={"Authorization": "Bearer nope"})
            assert info.value.code == "INVALID_TOKEN"
        finally:
            await client.close()

    run(main())
