"""The HTTP API against a real ``collabtrio serve`` process, with stock clients as the
room members: a back end publishes over HTTP (curl's way: plain HTTP/1.1 and JSON) and
stock ``socket.io-client`` sockets (default transports) receive it; it disconnects a
user, whose socket.io-client sees ``io server disconnect`` and does not reconnect, and
whose y-websocket provider is closed with 4403 and does not reconnect either.

``node/api_member.mjs`` runs the members. Needs ``node`` and ``npm install`` in
tests/interop/node (skipped otherwise, failed under ``COLLABTRIO_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess

pytestmark = [pytest.mark.interop, pytest.mark.node]

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "api_member.mjs"
NODE = shutil.which("node")
REQUIRED = os.environ.get("COLLABTRIO_REQUIRE_SERVICES") == "1"
KEY = "interop-" + "k" * 32


@pytest.fixture(autouse=True)
def _node_available() -> None:
    why = None
    if NODE is None:
        why = "node is not on PATH"
    elif not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        why = f"{NODE_DIR}/node_modules is missing: run 'npm install' there"
    if why is None:
        return
    if REQUIRED:
        pytest.fail(f"COLLABTRIO_REQUIRE_SERVICES=1 but {why}")
    pytest.skip(why)


def api(server: ServerProcess, method: str, path: str, body: Any = None,
        key: str | None = KEY) -> tuple[int, dict[str, str], Any]:
    """One HTTP request to the server, as a back end would send it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if key is not None:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


class Members:
    """``api_member.mjs`` running: :meth:`ready` once joined, :meth:`results` at the end."""

    def __init__(self, server: ServerProcess, scenario: dict[str, Any]) -> None:
        assert NODE is not None
        scenario = {"url": server.url, "timeoutMs": 10000, **scenario}
        self.proc = subprocess.Popen([NODE, str(SCRIPT), json.dumps(scenario)], cwd=NODE_DIR,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if json.loads(line or "{}") != {"ready": True}:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"api_member.mjs did not get ready: {line}{out}\n{err}")

    def results(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=60)
        lines = out.strip().splitlines()
        found = json.loads(lines[-1]) if lines else {"error": "no output"}
        assert self.proc.returncode == 0, (found, err)
        assert "error" not in found, (found, err)
        return found


def test_a_back_end_publishes_to_stock_socketio_clients(
        server_factory: Any) -> None:
    server = server_factory("--api-key", f"billing:{KEY}")
    members = Members(server, {
        "members": [
            {"name": "alice", "token": server.token("alice"), "rooms": ["doc:1"]},
            {"name": "bob", "token": server.token("bob"), "rooms": ["doc:2"]},
            {"name": "carol", "token": server.token("carol"), "rooms": ["doc:3"]},
        ],
        "expectBroadcasts": {"alice": 2, "bob": 2}, "lingerMs": 500})
    members.ready()
    status, _, answer = api(server, "POST", "/api/rooms/doc:1/publish",
                            {"event": "invoice", "data": {"id": 7, "total": 12.5}})
    assert status == 200
    assert answer == {"ok": True, "room": "doc:1", "open": True,
                                        "delivered": 1}
    status, _, answer = api(server, "POST", "/api/publish", {
        "rooms": ["doc:1", "doc:2", "user:bob"], "event": "notice", "data": "hello"})
    assert status == 200
    assert answer["delivered"] == 3
    # without a key, or with another: refused, and nobody gets anything
    assert api(server, "POST", "/api/rooms/doc:3/publish", {"event": "x"}, key=None)[0] == 401
    assert api(server, "POST", "/api/rooms/doc:3/publish", {"event": "x"},
               key="k" * len(KEY))[0] == 401
    results = members.results()["results"]
    alice = [payload for name, payload in results["alice"]["events"] if name == "broadcast"]
    assert alice == [
        {"room": "doc:1", "event": "invoice", "data": {"id": 7, "total": 12.5},
         "userId": None, "userName": None, "socketId": None},
        {"room": "doc:1", "event": "notice", "data": "hello", "userId": None,
         "userName": None, "socketId": None},
    ]
    bob = [payload["room"] for name, payload in results["bob"]["events"]
           if name == "broadcast"]
    assert sorted(bob) == ["doc:2", "user:bob"]
    assert results["carol"]["events"] == []


def test_a_disconnected_user_does_not_reconnect(server_factory: Any) -> None:
    server = server_factory("--api-key", f"ops:{KEY}:admin")
    members = Members(server, {
        "members": [
            {"name": "mallory", "token": server.token("mallory"), "rooms": ["doc:1"]},
            {"name": "mallory2", "token": server.token("mallory"), "rooms": []},
            {"name": "bob", "token": server.token("bob"), "rooms": ["doc:1"]},
        ],
        "yws": {"token": server.token("mallory"), "room": "doc:1"},
        "expectDisconnect": ["mallory", "mallory2"], "expectYwsClose": True,
        "lingerMs": 2500})
    members.ready()
    status, _, answer = api(server, "POST", "/api/users/mallory/disconnect",
                            {"reason": "account suspended"})
    assert status == 200, answer
    assert answer == {"ok": True, "userId": "mallory", "disconnected": 3, "socketio": 2,
                      "yWebsocket": 1}
    found = members.results()
    results = found["results"]
    for name in ("mallory", "mallory2"):
        assert results[name]["disconnect"] == "io server disconnect"
        assert results[name]["events"] == [["disconnect-reason",
                                            {"reason": "account suspended"}]]
        assert results[name]["connects"] == 1  # no reconnection within 2.5 s
    assert results["bob"]["disconnect"] is None
    assert found["yws"]["closeCode"] == 4403
    assert found["yws"]["closeReason"] == "account suspended"
    assert found["yws"]["connects"] == 1
    status, _, stats = api(server, "GET", "/api/stats")
    assert status == 200
    assert stats["version"]
