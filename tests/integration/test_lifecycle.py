"""Embedding: serve() in a user's nursery, graceful shutdown, nothing left behind."""

from __future__ import annotations

import psutil
import pytest
import trio
import trio.testing

import collabtrio
from collabtrio.auth import mint_token
from collabtrio.client import Disconnected, connect
from collabtrio.testing import TEST_SECRET


def _all_tasks() -> set[trio.lowlevel.Task]:
    out: set[trio.lowlevel.Task] = set()

    def walk(task: trio.lowlevel.Task) -> None:
        out.add(task)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return out


def _server_sockets(port: int) -> list[object]:
    return [
        c for c in psutil.Process().net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port
    ]


async def _http_get(port: int, path: str) -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        # read to the end: ask the server to close after answering (HTTP/1.1 keeps alive)
        await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                              .encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        return data


def _config(**kw: object) -> collabtrio.Config:
    return collabtrio.Config(port=0, auth_secret=TEST_SECRET, db="memory://", **kw)  # type: ignore[arg-type]


async def test_cancelling_serve_leaves_no_task_or_socket_behind() -> None:
    before = _all_tasks()
    token = mint_token(TEST_SECRET, sub="alice")
    async with trio.open_nursery() as clients:
        with trio.CancelScope():
            async with trio.open_nursery() as nursery:
                server = await nursery.start(collabtrio.serve, _config())
                port = server.port
                assert port
                joined = trio.Event()
                closed: list[str] = []

                async def client() -> None:
                    async with connect(server.url, token=token) as c:
                        await c.join("doc")
                        joined.set()
                        await c.wait_closed()
                        closed.append(c.disconnect_reason or "")

                for _ in range(3):
                    clients.start_soon(client)
                with trio.fail_after(5):
                    await joined.wait()
                    while len(server.connections) < 3:
                        await trio.sleep(0.01)
                assert server.registry.get("doc") is not None
                assert _server_sockets(port)
                nursery.cancel_scope.cancel()
    # the clients ended because the server went away
    assert len(closed) == 3
    # every server-side socket is closed: nothing listens or stays connected on the port
    with trio.fail_after(5):
        while [c for c in _server_sockets(port) if c.status in ("LISTEN", "ESTABLISHED")]:
            await trio.sleep(0.05)
    leftover = _all_tasks() - before - {trio.lowlevel.current_task()}
    assert leftover == set()


async def test_graceful_shutdown_closes_clients_with_1001() -> None:
    token = mint_token(TEST_SECRET, sub="alice")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(collabtrio.serve, _config())
        async with connect(server.url, token=token) as c:
            await c.join("doc")
            started = trio.current_time()
            server.shutdown()
            with trio.fail_after(3):
                await c.wait_closed()
            assert c.close_code == 1001
            with pytest.raises(Disconnected):
                await c.call("join", {"room": "x"})
        with trio.fail_after(3):
            await server.wait_stopped()
        assert trio.current_time() - started < 2


async def test_embedded_server_reports_port_and_serves_healthz() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(collabtrio.serve, _config())
        data = await _http_get(server.port, "/healthz")
        assert data.startswith(b"HTTP/1.1 200")
        assert b'"status": "ok"' in data
        data = await _http_get(server.port, "/nothing")
        assert data.startswith(b"HTTP/1.1 404")
        nursery.cancel_scope.cancel()
