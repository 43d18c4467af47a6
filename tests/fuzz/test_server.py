"""A real server fed fuzzed bytes while ordinary clients work beside them.

The in-process server of :mod:`collabtrio.testing` (mock clock, in-memory streams: the
same bytes path as TCP from the front door down) gets a fixed number of fuzz
connections, several at a time: mutated HTTP requests, WebSocket frames built by hand
(random opcodes, lengths, masks, RSV bits, fragments), Engine.IO and Socket.IO text
mutated after a valid CONNECT, long-polling payloads. Meanwhile two ordinary clients in
one room go on working: every ``op`` is acked ok and reaches the other member, every
``broadcast`` reaches the other member. At the end a new client still connects and
joins, ``/healthz`` still answers, and no exception was logged but a known bug's.

The inputs come from ``random.Random(seed)``; the seed is printed, and
``COLLABTRIO_FUZZ_SEED=<seed>`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import wsproto
from wsproto.events import AcceptConnection, BytesMessage, RejectConnection, Request, TextMessage

from collabtrio.client import Client, socketio_resource
from collabtrio.testing import TestServer, open_test_server

from . import targets

FUZZ_INPUTS = 200
CONCURRENT = 8
MIN_ROUNDS = 10
ROOM = "doc"
WS_TARGET = socketio_resource()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# -- what the fuzz connections send -------------------------------------------------

def _http_requests(token: str) -> list[bytes]:
    def req(line: str, *headers: str, body: bytes = b"") -> bytes:
        return ("\r\n".join([line, "Host: collabtrio.test", *headers]) + "\r\n\r\n").encode() + body

    return [
        req("GET /healthz HTTP/1.1"),
        req("HEAD /healthz HTTP/1.1"),
        req("GET /socket.io/?EIO=4&transport=polling HTTP/1.1"),
        req("POST /socket.io/?EIO=4&transport=polling&sid=nosuchsid HTTP/1.1",
            "Content-Length: 5", body=b"40{}\x1e"),
        req("OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1", "Origin: http://x",
            "Access-Control-Request-Method: POST"),
        req(f"GET {WS_TARGET} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"),
        req("GET /socket.io/?EIO=3&transport=websocket HTTP/1.1", "Upgrade: websocket",
            "Connection: Upgrade"),
        req("POST /socket.io/?EIO=4&transport=polling HTTP/1.1", "Transfer-Encoding: chunked",
            body=b"4\r\n40{}\r\n0\r\n\r\n"),
        req(f"GET /healthz?token={token} HTTP/1.0"),
    ]


def _socketio_texts(token: str) -> list[str]:
    """Socket.IO texts (without the Engine.IO ``4``) worth mutating."""
    def ev(name: str, payload: dict[str, Any], ack_id: int | str = "") -> str:
        return f"2{ack_id}" + json.dumps([name, payload])

    fz = {"room": "fz:1"}
    op = {**fz, "operationId": "f1", "op": "add", "collection": "c", "id": "1",
          "data": {"x": 1}}
    return [
        ev("join", fz), ev("join", {"room": ROOM}, 1), ev("op", op, 2),
        ev("op", {**op, "room": ROOM}, 3),
        ev("field", {**fz, "operationId": "g", "collection": "c", "id": "1", "path": ["a"],
                     "value": 2}),
        ev("chat", {**fz, "text": "hi"}, 4), ev("cursor", {"room": ROOM, "cursor": {"x": 1}}),
        ev("broadcast", {"room": ROOM, "event": "e", "data": [1]}, 5),
        '51-["broadcast",{"room":"fz:1","event":"b","data":{"_placeholder":true,"num":0}}]',
        '51-7["yjs-update",{"room":"fz:1","update":{"_placeholder":true,"num":0}}]',
        ev("refresh-token", {"token": token}), ev("leave", fz),
        ev("chat-history", {**fz, "limit": 5}, 8), "1", "0/admin,{}", '3[{"ok":true}]',
    ]


def _mutated(rng: random.Random, data: bytes, most: int = 6) -> bytes:
    ops = [(rng.randrange(7), rng.randrange(1 << 16), rng.randrange(256))
           for _ in range(rng.randrange(most + 1))]
    return targets.mutate(data, ops)


def _mutated_text(rng: random.Random, text: str) -> str:
    return _mutated(rng, text.encode()).decode("utf-8", "replace")


def _raw_frame(rng: random.Random, payload: bytes) -> bytes:
    """A client frame built by hand: usually valid, sometimes not in every way."""
    fin = rng.random() < 0.85
    rsv = 0 if rng.random() < 0.9 else rng.randrange(1, 8)
    opcode = rng.choice((0x1, 0x1, 0x2, 0x0, 0x8, 0x9, 0xA, rng.randrange(16)))
    masked = rng.random() < 0.9
    length = len(payload)
    if rng.random() < 0.1:  # a length that lies
        length = rng.choice((0, length + 1, max(0, length - 1), 126, 65535, 2**16 + 1,
                             2**63 - 1, 2**64 - 1))
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126 and rng.random() < 0.95:
        head = bytes([first, mask_bit | length])
    elif length < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return head + payload
    key = bytes(rng.randrange(256) for _ in range(4))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# -- the fuzz connections -----------------------------------------------------------

class FuzzConnection:
    """One raw connection to the server, read in the background (nothing is checked
    here: the server's health is checked by the ordinary clients)."""

    def __init__(self, server: TestServer) -> None:
        self.stream, server_end = trio.testing.memory_stream_pair()
        server.server.connect_stream(server_end)
        self.received = bytearray()

    async def send(self, data: bytes) -> bool:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def read_for(self, seconds: float) -> bytes:
        with trio.move_on_after(seconds):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                self.received += data
        return bytes(self.received)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _open_ws(conn: FuzzConnection) -> wsproto.WSConnection | None:
    """A proper WebSocket handshake (wsproto, client side); None if refused."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await conn.send(ws.send(Request(host="collabtrio.test", target=WS_TARGET)))
    with trio.move_on_after(5):
        while True:
            data = await conn.stream.receive_some(65536)
            if not data:
                return None
            ws.receive_data(bytes(data))
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return ws
                if isinstance(event, RejectConnection):
                    return None
    return None


async def fuzz_http(server: TestServer, rng: random.Random, token: str) -> None:
    """Mutated HTTP requests (one or two pipelined), cut into several writes."""
    conn = FuzzConnection(server)
    requests = _http_requests(token)
    data = b"".join(rng.choice(requests) for _ in range(rng.randint(1, 2)))
    data = _mutated(rng, data)
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(3)))
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        if not await conn.send(data[a:b]):
            break
        await trio.sleep(0.01)
    await conn.read_for(rng.choice((0.1, 1, 12)))  # 12 s: past the head timeout
    await conn.aclose()


async def fuzz_ws_frames(server: TestServer, rng: random.Random, token: str) -> None:
    """A valid upgrade, then frames built by hand around Engine.IO text and random bytes."""
    conn = FuzzConnection(server)
    ws = await _open_ws(conn)
    if ws is not None:
        texts = ["40" + json.dumps({"token": token}), "2", "3", "2probe", "5", "6"]
        texts += ["4" + t for t in _socketio_texts(token)]
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.2:
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
            else:
                payload = _mutated(rng, rng.choice(texts).encode(), 3)
            if not await conn.send(_raw_frame(rng, payload)):
                break
        await conn.read_for(0.5)
    await conn.aclose()


async def fuzz_socketio(server: TestServer, rng: random.Random, token: str) -> None:
    """A valid WebSocket and CONNECT, then mutated Socket.IO packets in valid frames,
    binary attachments among them (in any order)."""
    conn = FuzzConnection(server)
    ws = await _open_ws(conn)
    if ws is not None:
        await conn.send(ws.send(TextMessage(data="40" + json.dumps({"token": token}))))
        await conn.read_for(0.05)
        texts = _socketio_texts(token)
        for _ in range(rng.randint(2, 8)):
            roll = rng.random()
            message: BytesMessage | TextMessage
            if roll < 0.2:
                message = BytesMessage(data=bytes(rng.randrange(256)
                                                  for _ in range(rng.randrange(16))))
            else:
                text = rng.choice(texts)
                message = TextMessage(data="4" + (text if roll < 0.35
                                                  else _mutated_text(rng, text)))
            if not await conn.send(ws.send(message)):
                break
        await conn.read_for(0.5)
    await conn.aclose()


async def fuzz_polling(server: TestServer, rng: random.Random, token: str) -> None:
    """A polling handshake, then a POST of a mutated payload (``\\x1e`` records, ``b``
    base64 records) with the session's sid, then a poll."""
    conn = FuzzConnection(server)
    head = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: collabtrio.test\r\n\r\n"
    await conn.send(head)
    answer = await conn.read_for(0.05)
    start = answer.find(b'{"sid":"')
    if start != -1:
        sid = answer[start + 8:answer.index(b'"', start + 8)].decode()
        records = ["40" + json.dumps({"token": token}), "2", "3", "6", "bAQID", "1"]
        records += ["4" + t for t in _socketio_texts(token)]
        body = "\x1e".join(rng.choice(records) for _ in range(rng.randint(1, 4)))
        data = _mutated(rng, body.encode(), 4)
        target = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
        post = (f"POST {target} HTTP/1.1\r\nHost: collabtrio.test\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        await conn.send(post + data)
        await conn.read_for(0.05)
        await conn.send(f"GET {target} HTTP/1.1\r\nHost: collabtrio.test\r\n\r\n".encode())
        await conn.read_for(0.5)
    await conn.aclose()


FUZZERS: list[Callable[[TestServer, random.Random, str], Any]] = [
    fuzz_http, fuzz_ws_frames, fuzz_socketio, fuzz_socketio, fuzz_polling,
]


async def run_fuzzers(server: TestServer, seed: int, done: trio.Event) -> None:
    """``FUZZ_INPUTS`` fuzz connections, ``CONCURRENT`` at a time."""
    rng = random.Random(seed)
    # each input gets its own generator, so one input replays alone from its seed
    jobs = [(rng.choice(FUZZERS), rng.randrange(2**32)) for _ in range(FUZZ_INPUTS)]
    token = server.token("fuzzer", rooms={ROOM: "read"})
    limit = trio.Semaphore(CONCURRENT)

    async def one(fuzzer: Callable[..., Any], job_seed: int) -> None:
        async with limit:
            await fuzzer(server, random.Random(job_seed), token)

    try:
        async with trio.open_nursery() as nursery:
            for fuzzer, job_seed in jobs:
                nursery.start_soon(one, fuzzer, job_seed)
    finally:
        done.set()


# -- the ordinary clients -----------------------------------------------------------

async def next_matching(client: Client, event: str, match: Callable[[Any], bool]) -> Any:
    """The next ``event`` whose data matches, skipping the others (fuzzers' included)."""
    while True:
        data = await client.next_event(event, timeout=30)
        if match(data):
            return data


async def ordinary_round(alice: Client, bob: Client, i: int) -> None:
    """An acked ``op`` from alice that bob receives; a ``broadcast`` from bob that alice
    receives."""
    op_id = f"ordinary-{i}"
    ack = await alice.call("op", {"room": ROOM, "operationId": op_id, "op": "add",
                                  "collection": "ordinary", "id": f"e{i}", "data": {"i": i}})
    assert ack["ok"] is True, ack
    got = await next_matching(bob, "op", lambda d: d.get("operationId") == op_id)
    assert got["data"] == {"i": i}
    assert got["seq"] == ack["seq"]
    ack = await bob.call("broadcast", {"room": ROOM, "event": "ordinary", "data": i})
    assert ack["ok"] is True, ack
    await next_matching(alice, "broadcast",
                        lambda d: d.get("event") == "ordinary" and d.get("data") == i)


async def test_server_survives_fuzzed_connections(autojump_clock: trio.testing.MockClock) -> None:
    seed = int(os.environ.get("COLLABTRIO_FUZZ_SEED") or random.randrange(2**32))
    print(f"fuzz seed: COLLABTRIO_FUZZ_SEED={seed}")
    with targets.logged_exceptions() as records:
        async with open_test_server() as server:
            async with server.client("alice") as alice, server.client("bob") as bob:
                assert (await alice.join(ROOM))["ok"] is True
                assert (await bob.join(ROOM))["ok"] is True
                done = trio.Event()
                rounds = 0
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run_fuzzers, server, seed, done)
                    while not done.is_set() or rounds < MIN_ROUNDS:
                        await ordinary_round(alice, bob, rounds)
                        rounds += 1
                        await trio.sleep(0.05)  # an ordinary pace: under the rate limit
                # still up: a newcomer connects and sees every ordinary op
                async with server.client("carol") as carol:
                    joined = await carol.join(ROOM)
                    assert joined["ok"] is True
                    assert len(joined["state"]["ordinary"]) == rounds
                conn = FuzzConnection(server)
                await conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert (await conn.read_for(5)).startswith(b"HTTP/1.1 200 ")
                await conn.aclose()
    unexpected = []
    for record in records:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or targets.known_bug(exc, "frontdoor") is None:
            unexpected.append(f"{record.name}: {record.getMessage()}: {exc!r}")
    assert not unexpected, f"seed {seed}: " + "\n".join(unexpected)
