"""Fault-injection fixtures: real ``collabtrio serve`` processes that get killed,
restarted and starved of storage, clients that record every answer, a TCP proxy that
plays "PostgreSQL went away", and tmpfs mounts (a full disk, a read-only file system).

The tests are plain ``def test_...()`` functions that drive asyncio with :func:`run`
(pytest runs ``async def`` tests with trio here); every wait has a timeout.

Servers come from :func:`tests.conftest.start_server` through the ``servers`` fixture,
which, unlike ``server_factory``, allows a test to SIGKILL a server: at teardown every
server the test did not kill itself must still stop on SIGTERM with exit code 0 and
without a Python traceback in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest
import socketio

from tests.conftest import (
    SECRET,
    ServerProcess,
    clean_env,
    start_server,
)

CALL_TIMEOUT_S = 10.0
RUN_TIMEOUT_S = 60.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = RUN_TIMEOUT_S) -> Any:
    """Run ``coro`` in a fresh asyncio loop, bounded by ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- clients ----------------------------------------------------------------------------


class Client:
    """A python-socketio ``AsyncClient`` (websocket only) that records every event."""

    def __init__(self, server: ServerProcess, sub: str) -> None:
        self.server = server
        self.sub = sub
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.disconnects: list[Any] = []
        self.sio.on("*", self._on_any)
        self.sio.on("disconnect", self._on_disconnect)

    async def _on_any(self, event: str, *args: Any) -> None:
        self.events.append((event, args[0] if len(args) == 1 else args))

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnects.append(reason)

    async def connect(self, timeout: float = 5.0) -> Client:
        token = self.server.token(self.sub, name=self.sub.title())
        await asyncio.wait_for(
            self.sio.connect(self.server.url, auth={"token": token}, transports=["websocket"],
                             wait_timeout=timeout),
            timeout + 1,
        )
        return self

    @property
    def sid(self) -> str | None:
        return self.sio.get_sid("/")

    async def call(self, event: str, data: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """Emit with an ack and return the ack payload."""
        return await self.sio.call(event, data, timeout=timeout)

    async def join(self, room: str, **extra: Any) -> dict[str, Any]:
        ack = await self.call("join", {"room": room, **extra})
        assert ack["ok"] is True, ack
        return ack  # type: ignore[no-any-return]

    async def op(self, room: str, operation_id: str, op: str, collection: str, entity_id: str,
                 data: Any = None, timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        payload = {"room": room, "operationId": operation_id, "op": op,
                   "collection": collection, "id": entity_id}
        if data is not None:
            payload["data"] = data
        return await self.call("op", payload, timeout)  # type: ignore[no-any-return]

    async def field(self, room: str, operation_id: str, collection: str, entity_id: str,
                    path: list[str], value: Any,
                    timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        return await self.call(  # type: ignore[no-any-return]
            "field", {"room": room, "operationId": operation_id, "collection": collection,
                      "id": entity_id, "path": path, "value": value}, timeout)

    def named(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def wait_for(self, event: str, where: Callable[[Any], bool] | None = None,
                       timeout: float = 5.0, start: int = 0) -> Any:
        """The first ``event`` payload (from index ``start`` on) satisfying ``where``."""
        deadline = time.monotonic() + timeout
        while True:
            for name, data in self.events[start:]:
                if name == event and (where is None or where(data)):
                    return data
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.sub}: no {event!r} event within {timeout}s; "
                                     f"got {self.events[start:][-20:]}")
            await asyncio.sleep(0.01)

    async def wait_disconnect(self, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while not self.disconnects:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.sub}: not disconnected within {timeout}s")
            await asyncio.sleep(0.01)
        return self.disconnects[0]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.disconnect(), 5)


@contextlib.asynccontextmanager
async def connected(server: ServerProcess, *subs: str) -> Any:
    """One connected :class:`Client` per ``sub``, disconnected at the end."""
    made: list[Client] = []
    try:
        for sub in subs:
            client = Client(server, sub)
            made.append(client)
            await client.connect()
        yield made
    finally:
        await asyncio.gather(*(c.close() for c in made))


async def read_room(server: ServerProcess, room: str) -> tuple[dict[str, Any], list[Any]]:
    """What a new client sees: the join ack (full state) and, from a second join with
    ``since: 0``, every persisted event of the room replayed in order (``(event,
    payload)`` pairs; the room's whole history must still be in the replay window)."""
    async with connected(server, "reader") as (reader,):
        ack = await reader.join(room)
        await reader.call("leave", {"room": room})
        start = len(reader.events)
        replay_ack = await reader.join(room, since=0)
        replayed = [(name, data) for name, data in reader.events[start:]
                    if name in ("op", "field", "chat")]
        if ack["seq"] > 0:
            assert replay_ack["recovered"] is True, replay_ack
        return ack, replayed


def check_replay(replayed: list[tuple[str, Any]], seq: int) -> dict[int, Any]:
    """The replayed events must have seqs 1..seq, gapless and in order; returns them by
    seq."""
    seqs = [data["seq"] for _, data in replayed]
    assert seqs == list(range(1, seq + 1)), f"replayed seqs are not 1..{seq}: {seqs}"
    return {data["seq"]: data for _, data in replayed}


# -- servers ----------------------------------------------------------------------------


class Servers:
    """Start ``collabtrio serve`` processes; SIGKILL or SIGTERM them at will."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[ServerProcess] = []
        self.killed: set[int] = set()

    def start(self, *flags: str, db: str | None = None,
              env: dict[str, str] | None = None) -> ServerProcess:
        srv = start_server(self.workdir, *flags, db=db, env=env)
        self.started.append(srv)
        return srv

    def kill(self, srv: ServerProcess) -> None:
        """SIGKILL: no shutdown code runs at all."""
        self.killed.add(srv.pid)
        if srv.proc.poll() is None:
            srv.proc.kill()
        srv.proc.wait(10)

    def teardown(self) -> list[str]:
        problems = []
        for srv in self.started:
            if srv.pid in self.killed:
                continue
            code = srv.stop()
            log = srv.log()
            if code != 0:
                problems.append(f"server {srv.url} ended with {code} (SIGTERM at teardown or "
                                f"earlier by the test):\n{log[-4000:]}")
            elif "Traceback" in log and not srv.allow_tracebacks:
                problems.append(f"server {srv.url} logged a traceback:\n{log[-6000:]}")
        return problems


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    pool = Servers(tmp_path)
    try:
        yield pool
    finally:
        problems = pool.teardown()
    if problems:
        pytest.fail("\n\n".join(problems))


def serve_cmd(*flags: str) -> list[str]:
    return [sys.executable, "-m", "collabtrio", "serve", "--port", "0",
            "--auth-secret", SECRET, *flags]


def run_serve_to_exit(cwd: Path, *flags: str, timeout: float = 30) -> tuple[
        int, str, float]:
    """Run ``collabtrio serve FLAGS`` that is expected to exit by itself: ``(exit code,
    stdout + stderr, seconds)``; a server that starts listening instead is stopped."""
    started = time.monotonic()
    proc = subprocess.Popen(serve_cmd(*flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=clean_env(), cwd=cwd, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    return proc.returncode, out + err, time.monotonic() - started


# -- PostgreSQL -------------------------------------------------------------------------


@pytest.fixture
def postgres_schema(postgres_server: str) -> Iterator[str]:
    """A fresh schema of this test's own, dropped (with everything in it) afterwards."""
    import psycopg
    from psycopg import sql

    schema = f"ct_fault_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


def via(url: str, host: str, port: int, **params: str) -> str:
    """``url`` pointed at ``host:port`` instead, with ``params`` added to its query."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{port}", query=query))


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 (threads). :meth:`cut` drops every connection and
    closes the port (new connections are refused, as if the database were stopped);
    :meth:`restore` listens on the same port again. With :attr:`drop_replies` the
    requests still reach the database but its answers are lost (a commit that happened
    without the server learning it)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        # True: what the database answers is swallowed (requests still reach it)
        self.drop_replies = False
        self.dropped_reply_bytes = 0
        # set drop_replies once a request containing these bytes goes through
        self.drop_replies_after: bytes | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, listener)
        return self

    restore = start

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        try:
            while self._listener is listener:
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
                with self._lock:
                    if self._listener is not listener:
                        client.close()
                        upstream.close()
                        return
                    self.accepted += 1
                    self._sockets.update((client, upstream))
                pair = [client, upstream]
                self._spawn(self._pump, client, upstream, pair, False)
                self._spawn(self._pump, upstream, client, pair, True)
        finally:
            listener.close()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: list[socket.socket],
              replies: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if replies and self.drop_replies:
                    self.dropped_reply_bytes += len(data)
                    continue
                if not replies and self.drop_replies_after and self.drop_replies_after in data:
                    self.drop_replies = True
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                pair.pop()
                last = not pair
                if last:
                    self._sockets.difference_update((src, dst))
            if last:  # the second pump of the pair closes both sockets
                src.close()
                dst.close()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets = list(self._sockets)
        if listener is not None:
            # the accept thread closes it within its 0.1 s timeout; wait for that, so
            # the port refuses connections when this returns
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            deadline = time.monotonic() + 2
            while listener.fileno() != -1 and time.monotonic() < deadline:
                time.sleep(0.01)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def postgres_proxy(postgres_server: str) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` in front of the test PostgreSQL."""
    parts = urlsplit(postgres_server)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432)).start()
    try:
        yield proxy
    finally:
        proxy.close()


# -- tmpfs mounts -----------------------------------------------------------------------


class Mounts:
    """tmpfs mounts under ``tmp_path`` (needs CAP_SYS_ADMIN: root in most CI
    containers); unmounted (lazily) at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def _mount(self, *args: str) -> None:
        if shutil.which("mount") is None:
            pytest.skip("no `mount` command here: cannot make a tmpfs for this test")
        proc = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here (mount {' '.join(args)}: "
                        f"{(proc.stderr or proc.stdout).strip()}); this test needs root or "
                        f"CAP_SYS_ADMIN")

    def tmpfs(self, name: str, size: str = "4m") -> Path:
        """A fresh, empty, writable tmpfs of ``size`` at ``tmp_path/name``."""
        where = self.base / name
        where.mkdir()
        self._mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
        self.mounted.append(where)
        return where

    def remount_ro(self, where: Path) -> None:
        self._mount("-o", "remount,ro", str(where))

    def unmount_all(self) -> None:
        for where in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)
        self.mounted.clear()


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    m = Mounts(tmp_path)
    try:
        yield m
    finally:
        m.unmount_all()
