"""Interop fixtures: a real server subprocess and python-socketio clients that record events.

The tests are plain ``def test_...()`` functions that drive asyncio with :func:`run`
(pytest runs ``async def`` tests with trio here). Every wait has a timeout, and
:func:`clients` disconnects whatever it connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
import socketio

if TYPE_CHECKING:
    from tests.conftest import ServerProcess

TIMEOUT_S = 5.0
RUN_TIMEOUT_S = 30.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = RUN_TIMEOUT_S) -> Any:
    """Run ``coro`` in a fresh asyncio loop, bounded by ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A server with the default limits."""
    return server_factory()


class ConnectRefused(Exception):
    """The server answered CONNECT_ERROR (``data`` is what ``connect_error`` got)."""

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.data = data

    @property
    def code(self) -> Any:
        inner = self.data.get("data") if isinstance(self.data, dict) else None
        return inner.get("code") if isinstance(inner, dict) else None


class Client:
    """A python-socketio ``AsyncClient`` (websocket only) that records every event."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.connect_errors: list[Any] = []
        self.disconnects: list[Any] = []
        self.sio.on("*", self._on_any)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("disconnect", self._on_disconnect)

    async def _on_any(self, event: str, *args: Any) -> None:
        self.events.append((event, args[0] if len(args) == 1 else args))

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_errors.append(data)

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnects.append(reason)

    @property
    def sid(self) -> str | None:
        """The Socket.IO socket id (what the server calls ``socketId``)."""
        return self.sio.get_sid("/")

    async def connect(self, token: str | None = None, *, auth: Any = None,
                      headers: dict[str, str] | None = None, query: Any = None,
                      namespaces: list[str] | None = None) -> Client:
        """Connect; raise :class:`ConnectRefused` on CONNECT_ERROR."""
        if auth is None and token is not None:
            auth = {"token": token}
        url = self.server.url
        if query:
            url += "?" + urlencode(query, doseq=True)
        try:
            await asyncio.wait_for(
                self.sio.connect(url, auth=auth, headers=headers or {},
                                 transports=["websocket"], namespaces=namespaces,
                                 wait_timeout=TIMEOUT_S),
                TIMEOUT_S + 1,
            )
        except socketio.exceptions.ConnectionError as exc:
            if self.connect_errors:
                raise ConnectRefused(self.connect_errors[-1]) from exc
            raise
        return self

    async def call(self, event: str, data: Any = None, timeout: float = TIMEOUT_S) -> Any:
        """Emit with an ack and return the ack payload."""
        return await self.sio.call(event, data, timeout=timeout)

    async def emit(self, event: str, data: Any = None) -> None:
        """Emit without an ack."""
        await self.sio.emit(event, data)

    async def join(self, room: str, **extra: Any) -> dict[str, Any]:
        ack = await self.call("join", {"room": room, **extra})
        assert ack["ok"] is True, ack
        return ack  # type: ignore[no-any-return]

    def named(self, event: str) -> list[Any]:
        """Payloads of the ``event`` events received so far, in order."""
        return [data for name, data in self.events if name == event]

    async def wait_for(self, event: str, where: Callable[[Any], bool] | None = None,
                       timeout: float = TIMEOUT_S, start: int = 0) -> Any:
        """The first ``event`` payload (from index ``start`` on) satisfying ``where``."""
        deadline = time.monotonic() + timeout
        while True:
            for name, data in self.events[start:]:
                if name == event and (where is None or where(data)):
                    return data
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event!r} event within {timeout}s; got {self.events}")
            await asyncio.sleep(0.01)

    async def wait_disconnect(self, timeout: float = TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout
        while not self.disconnects:
            if time.monotonic() > deadline:
                raise AssertionError(f"not disconnected within {timeout}s")
            await asyncio.sleep(0.01)
        return self.disconnects[0]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), TIMEOUT_S)


@contextlib.asynccontextmanager
async def clients(server: ServerProcess, *subs: str) -> AsyncIterator[list[Client]]:
    """Connect one client per ``sub`` (with a fresh token, name = sub.title())."""
    made: list[Client] = []
    try:
        for sub in subs:
            client = Client(server)
            made.append(client)
            await client.connect(server.token(sub, name=sub.title()))
        yield made
    finally:
        await asyncio.gather(*(c.close() for c in made))


@contextlib.asynccontextmanager
async def new_client(server: ServerProcess) -> AsyncIterator[Client]:
    """An unconnected :class:`Client`, disconnected at the end."""
    client = Client(server)
    try:
        yield client
    finally:
        await client.close()


_MEMBER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, socketio

    async def main(url, token, room):
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(url, auth={"token": token}, transports=["websocket"])
        ack = await sio.call("join", {"room": room}, timeout=5)
        assert ack["ok"], ack
        print(sio.get_sid("/"), flush=True)
        await asyncio.sleep(60)

    asyncio.run(main(*sys.argv[1:]))
    """
)


class MemberProcess:
    """A client in another process, joined to a room, that can be killed (SIGKILL)."""

    def __init__(self, server: ServerProcess, sub: str, room: str) -> None:
        token = server.token(sub, name=sub.title())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MEMBER_SCRIPT, server.url, token, room],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        self.sid: str | None = None

    async def joined(self, timeout: float = 15.0) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if not line.strip():
            self.kill()
            assert self.proc.stderr is not None
            raise AssertionError(f"member process failed: {self.proc.stderr.read().decode()}")
        self.sid = line.decode().strip()
        return self.sid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


async def gather_with_timeout(*aws: Awaitable[Any], timeout: float = TIMEOUT_S) -> list[Any]:
    return list(await asyncio.wait_for(asyncio.gather(*aws), timeout))
