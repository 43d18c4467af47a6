"""``GET /readyz``: whether a load balancer should send this node traffic.

200 while the server serves and its storage answers; 503 while it starts, once
``shutdown()`` was called (it drains: the listeners are still open), and while
storage is down. ``/healthz`` keeps answering for the process and its storage.
"""

from __future__ import annotations

import trio
import trio.testing

from collabtrio.config import Config
from collabtrio.server import Server
from collabtrio.storage.memory import MemoryStore
from collabtrio.testing import TEST_SECRET, open_test_server


async def test_ready_while_serving(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server:
        assert server.server.phase == "serving"
        answer = await server.request("GET", "/readyz")
        assert answer.status == 200
        assert answer.json() == {"status": "ready"}
        assert (await server.request("HEAD", "/readyz")).status == 200
        assert (await server.request("POST", "/readyz")).status == 404


async def test_not_ready_once_draining(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(shutdown_grace_s=5) as server, server.client("a") as a:
        await a.join("r")
        server.server.shutdown()
        assert server.server.phase == "draining"
        # the listeners are still open while the server drains: it answers, with 503
        # (asked before the server's task has even woken up to drain)
        answer = await server.request("GET", "/readyz")
        assert answer.status == 503
        assert answer.json() == {"status": "draining"}
        await server.server.wait_stopped()
        assert server.server.phase == "stopped"


async def test_not_ready_while_storage_is_down(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    async with open_test_server(store=store) as server:
        store.failing = True
        answer = await server.request("GET", "/readyz")
        assert answer.status == 503
        assert answer.json()["status"] == "unavailable"
        assert "failing" in answer.json()["storage"]
        assert (await server.request("GET", "/healthz")).status == 503
        store.failing = False
        assert (await server.request("GET", "/readyz")).status == 200


async def test_the_phase_moves_from_starting_to_stopped(
        autojump_clock: trio.testing.MockClock) -> None:
    server = Server(Config(auth_secret=TEST_SECRET, db="memory://", port=0),
                    store=MemoryStore())
    assert server.phase == "starting"
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(listen=False,
                                                           task_status=task_status))
        assert server.phase == "serving"
        server.shutdown()
        assert server.phase == "draining"
        await server.wait_stopped()
    assert server.phase == "stopped"


async def test_a_shutdown_before_start_never_reports_serving(
        autojump_clock: trio.testing.MockClock) -> None:
    server = Server(Config(auth_secret=TEST_SECRET, db="memory://", port=0),
                    store=MemoryStore())
    server.shutdown()
    assert server.phase == "draining"
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(listen=False,
                                                           task_status=task_status))
        assert server.phase == "draining"
        await server.wait_stopped()
    assert server.phase == "stopped"
