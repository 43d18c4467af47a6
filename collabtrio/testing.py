"""A harness for deterministic trio tests of collaborative features.

It runs a real collabtrio server in-process, with no TCP port: each client talks to
it over an in-memory stream pair, through the real WebSocket, Engine.IO and Socket.IO
layers. Everything uses trio's clock, so tests run under
``trio.testing.MockClock(autojump_threshold=0)`` and an idle room's 30 seconds pass
in no real time.

Example (pytest-trio)::

    import pytest, trio
    from collabtrio.testing import open_test_server

    @pytest.fixture
    def autojump_clock():
        return trio.testing.MockClock(autojump_threshold=0)

    async def test_cursor_reaches_the_other_member(autojump_clock):
        async with open_test_server() as server:
            async with server.client("alice") as alice, server.client("bob") as bob:
                await alice.join("doc:1")
                await bob.join("doc:1")
                await alice.emit("cursor", {"room": "doc:1", "cursor": {"x": 3}})
                event = await bob.next_event("cursor")
                assert event["cursor"] == {"x": 3} and event["userId"] == "alice"

Tokens: :meth:`TestServer.token` mints HS256 tokens with the harness's secret, and
the server's wall clock follows trio's clock, so token expiry is testable too.

HTTP: :meth:`TestServer.request` sends one HTTP request through the front door (the
HTTP API needs an API key: ``open_test_server(api_keys="svc:" + "s" * 32)`` and
``server.request("GET", "/api/stats", key="s" * 32)``).
"""

from __future__ import annotations

import json as jsonlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import trio
import trio.testing

from .auth import mint_token
from .client import Client, connect
from .config import Config
from .server import Server
from .storage.base import Store
from .storage.memory import MemoryStore

TEST_SECRET = "collabtrio-testing-secret-0123456789abcdef"

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


@dataclass
class HttpAnswer:
    """A response to :meth:`TestServer.request`: status, headers (lower-cased names)
    and body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body, decoded as JSON."""
        return jsonlib.loads(self.body)


class TestServer:
    """A running in-process server; see :func:`open_test_server`."""

    __test__ = False  # not a pytest test class

    def __init__(self, server: Server, wall_clock: Callable[[], float]) -> None:
        self.server = server
        self.config = server.config
        self.wall_clock = wall_clock

    def token(
        self,
        sub: str,
        *,
        name: str | None = None,
        rooms: Mapping[str, str] | None = None,
        ttl_s: float = 3600,
        picture: str | None = None,
    ) -> str:
        """A token for ``sub`` signed with the harness's secret, valid for ``ttl_s``."""
        secret = self.config.auth_secret
        if not secret:
            raise RuntimeError("this server has no auth_secret")
        return mint_token(secret, sub=sub, name=name or sub, rooms=rooms, ttl_s=ttl_s,
                          picture=picture, now=self.wall_clock())

    @asynccontextmanager
    async def connect(
        self,
        *,
        token: str | None = None,
        auth: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        stream_pair: StreamPair = trio.testing.memory_stream_pair,
    ) -> AsyncIterator[Client]:
        """Connect a client over an in-memory stream (raises ``ConnectError`` if refused).

        Pass ``stream_pair=trio.testing.lockstep_stream_pair`` to get a client whose
        socket applies backpressure (for slow-consumer tests).
        """
        client_end, server_end = stream_pair()
        self.server.connect_stream(server_end)
        async with connect(token=token, auth=auth, query=query, headers=headers,
                           stream=client_end) as client:
            yield client

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        json: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpAnswer:
        """Send one HTTP request over an in-memory stream and return the answer.

        ``key`` becomes ``Authorization: Bearer <key>``; ``json`` is sent as a JSON
        body (or ``body`` as it is).
        """
        if json is not None:
            body = jsonlib.dumps(json).encode()
        payload = body or b""
        sent = [("host", "collabtrio.test"), ("connection", "close")]
        if key is not None:
            sent.append(("authorization", f"Bearer {key}"))
        if method not in ("GET", "HEAD") or payload:
            sent.append(("content-length", str(len(payload))))
            sent.append(("content-type", "application/json"))
        sent.extend((headers or {}).items())
        client_end, server_end = trio.testing.memory_stream_pair()
        self.server.connect_stream(server_end)
        conn = h11.Connection(h11.CLIENT)
        data = conn.send(h11.Request(method=method, target=path, headers=sent))
        data += conn.send(h11.Data(data=payload)) if payload else b""
        data += conn.send(h11.EndOfMessage())
        answer: HttpAnswer | None = None
        async with client_end:
            await client_end.send_all(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await client_end.receive_some(65536)))
                elif isinstance(event, h11.Response):
                    answer = HttpAnswer(event.status_code, {
                        k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers})
                elif isinstance(event, h11.Data):
                    assert answer is not None
                    answer.body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    assert answer is not None, "the server closed without answering"
                    return answer

    @asynccontextmanager
    async def client(self, sub: str, **kwargs: Any) -> AsyncIterator[Client]:
        """Connect as user ``sub`` with a fresh token (``kwargs`` go to :meth:`connect`)."""
        rooms = kwargs.pop("rooms", None)
        async with self.connect(token=self.token(sub, rooms=rooms), **kwargs) as c:
            yield c


@asynccontextmanager
async def open_test_server(
    config: Config | None = None, *, store: Store | None = None, **overrides: Any
) -> AsyncIterator[TestServer]:
    """Run a server in-process for the body of the ``async with``.

    The default config uses an HS256 test secret and in-memory storage; keyword
    arguments override any :class:`~collabtrio.config.Config` field. Pass the same
    ``store`` to two servers in turn to test what survives a restart. On exit the
    server is cancelled (rooms flush what is pending) and every task and stream it
    had is closed; a ``store`` you passed is left open.
    """
    base = config or Config(auth_secret=TEST_SECRET, db="memory://", port=0)
    if overrides:
        base = base.replace(**overrides)
    wall_base = time.time()
    trio_base = trio.current_time()

    def wall_clock() -> float:
        return wall_base + (trio.current_time() - trio_base)

    if store is None and base.db.startswith("memory://"):
        store = MemoryStore()
    server = Server(base, store=store, wall_clock=wall_clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(listen=False, task_status=task_status))
        try:
            yield TestServer(server, wall_clock)
        finally:
            nursery.cancel_scope.cancel()
