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
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

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
