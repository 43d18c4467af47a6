"""The stock JavaScript ``socket.io-client`` (v4, in node) against a real server.

``node/client.mjs`` runs a scripted scenario and prints JSON. Needs ``node`` on PATH and
``npm install`` in tests/interop/node; without them these tests skip, unless
``COLLABTRIO_REQUIRE_SERVICES=1``, where they fail instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, clean_env

from .conftest import clients, run

pytestmark = [pytest.mark.interop, pytest.mark.node]

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "client.mjs"
NODE = shutil.which("node")
REQUIRED = os.environ.get("COLLABTRIO_REQUIRE_SERVICES") == "1"


def _missing() -> str | None:
    if NODE is None:
        return "node is not on PATH"
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        return (f"{NODE_DIR}/node_modules is missing: run "
                f"'npm install --no-audit --no-fund' in {NODE_DIR}")
    return None


@pytest.fixture(autouse=True)
def _node_available() -> None:
    why = _missing()
    if why is None:
        return
    if REQUIRED:
        pytest.fail(f"COLLABTRIO_REQUIRE_SERVICES=1 but {why}")
    pytest.skip(why)


def run_node(server: ServerProcess, steps: list[dict[str, Any]], *,
             expect_ok: bool = True, timeout_ms: int = 5000) -> list[Any]:
    """Run ``steps`` in client.mjs against ``server``; return the step results."""
    scenario = {"url": server.url, "timeoutMs": timeout_ms, "steps": steps}
    assert NODE is not None
    proc = subprocess.run([NODE, str(SCRIPT)], input=json.dumps(scenario), capture_output=True,
                          text=True, timeout=60, cwd=NODE_DIR)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(f"client.mjs printed no JSON (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}")
    if expect_ok:
        assert proc.returncode == 0, (out, proc.stderr)
        assert "error" not in out, (out, proc.stderr)
    return out["results"]  # type: ignore[no-any-return]


def cli_token(server: ServerProcess, sub: str, *args: str) -> str:
    """A token minted by the real ``collabtrio token`` command."""
    exe = Path(sys.executable).with_name("collabtrio")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "collabtrio"]
    assert server.secret
    proc = subprocess.run([*cmd, "token", "--sub", sub, *args], capture_output=True, text=True,
                          timeout=30, env=clean_env({"COLLABTRIO_AUTH_SECRET": server.secret}))
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert token.count(".") == 2
    return token


def connect(client: str, token: str | None = None, **extra: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"action": "connect", "client": client, **extra}
    if token is not None:
        step["auth"] = {"token": token}
    return step


def test_two_node_clients_collaborate(server: ServerProcess) -> None:
    alice = cli_token(server, "alice", "--name", "Alice", "--room", "doc:*=write", "--ttl", "1h")
    bob = cli_token(server, "bob", "--name", "Bøb 🚀")
    room = "doc:node"
    blob = bytes(range(200)).hex()
    results = run_node(server, [
        connect("a", alice),
        connect("b", bob),
        {"action": "call", "client": "a", "event": "join", "data": {"room": room}},
        {"action": "call", "client": "b", "event": "join", "data": {"room": room}},
        {"action": "wait", "client": "a", "event": "presence", "match": {"connections": 2}},
        {"action": "call", "client": "a", "event": "cursor",
         "data": {"room": room, "cursor": {"x": 1, "y": 2}}},
        {"action": "wait", "client": "b", "event": "cursor"},
        {"action": "call", "client": "b", "event": "broadcast",
         "data": {"room": room, "event": "ping", "data": {"n": 1, "blob": {"$bytes": blob}}}},
        {"action": "wait", "client": "a", "event": "broadcast"},
        {"action": "events", "client": "a", "event": "cursor"},
        {"action": "events", "client": "b", "event": "broadcast"},
        {"action": "call", "client": "b", "event": "leave", "data": {"room": room}},
        {"action": "wait", "client": "a", "event": "presence", "match": {"connections": 1}},
    ])
    (con_a, con_b, join_a, join_b, presence, cursor_ack, cursor, bcast_ack, bcast,
     a_cursors, b_broadcasts, leave_ack, presence_after) = results
    assert con_a["ok"]
    assert con_b["ok"]
    sid_a, sid_b = con_a["id"], con_b["id"]
    assert join_a["ok"] is True
    assert join_a["role"] == "write"
    assert join_a["room"] == room
    assert join_a["recovered"] is False
    assert join_a["seq"] == 0
    assert join_b["presence"]["connections"] == 2
    assert {u["socketId"] for u in presence["users"]} == {sid_a, sid_b}
    assert presence["uniqueUsers"] == 2
    assert {u["userName"] for u in presence["users"]} == {"Alice", "Bøb 🚀"}
    assert cursor_ack == {"ok": True}
    assert cursor == {"room": room, "cursor": {"x": 1, "y": 2}, "socketId": sid_a,
                      "userId": "alice", "userName": "Alice"}
    assert bcast_ack == {"ok": True}
    assert bcast["data"] == {"n": 1, "blob": {"$bytes": blob}}  # a Buffer, not base64
    assert (bcast["socketId"], bcast["userId"], bcast["event"]) == (sid_b, "bob", "ping")
    assert a_cursors == []
    assert b_broadcasts == []
    assert leave_ack["ok"] is True
    assert [u["socketId"] for u in presence_after["users"]] == [sid_a]


def test_cli_token_room_roles(server: ServerProcess) -> None:
    token = cli_token(server, "alice", "--room", "doc:*=read", "--room", "doc:own=admin")
    results = run_node(server, [
        connect("a", token),
        {"action": "call", "client": "a", "event": "join", "data": {"room": "doc:x"}},
        {"action": "call", "client": "a", "event": "join", "data": {"room": "doc:own"}},
        {"action": "call", "client": "a", "event": "join", "data": {"room": "other"}},
    ])
    assert [r["role"] for r in results[1:]] == ["read", "admin", "write"]


def test_missing_token(server: ServerProcess) -> None:
    (result,) = run_node(server, [connect("a")])
    assert result["ok"] is False
    assert result["data"]["code"] == "AUTH_REQUIRED"
    assert result["message"]  # err.message


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."])
def test_invalid_token(server: ServerProcess, token: str) -> None:
    (result,) = run_node(server, [connect("a", token)])
    assert result["ok"] is False
    assert result["data"]["code"] == "INVALID_TOKEN"


def test_wrong_secret(server: ServerProcess) -> None:
    from collabtrio.auth import mint_token

    token = mint_token("some-other-secret-0123456789abcdef0123", sub="alice")
    (result,) = run_node(server, [connect("a", token)])
    assert result["data"]["code"] == "INVALID_TOKEN"


def test_expired_token(server: ServerProcess) -> None:
    token = server.token("alice", ttl_s=60, now=time.time() - 600)
    (result,) = run_node(server, [connect("a", token)])
    assert result["ok"] is False
    assert result["data"]["code"] == "TOKEN_EXPIRED"


def test_invalid_room_and_not_joined(server: ServerProcess) -> None:
    results = run_node(server, [
        connect("a", server.token("alice")),
        {"action": "call", "client": "a", "event": "join", "data": {"room": "no spaces"}},
        {"action": "call", "client": "a", "event": "join", "data": {"room": "user:bob"}},
        {"action": "call", "client": "a", "event": "cursor", "data": {"room": "doc:1"}},
        {"action": "emit", "client": "a", "event": "cursor", "data": {"room": "doc:1"}},
        {"action": "wait", "client": "a", "event": "operation-error"},
        {"action": "call", "client": "a", "event": "join", "data": {"room": "doc:1"}},
    ])
    _, invalid, forbidden, not_joined, _, op_error, ok = results
    assert invalid["ok"] is False
    assert invalid["error"]["code"] == "INVALID_ROOM"
    assert forbidden["error"]["code"] == "FORBIDDEN"
    assert not_joined["error"]["code"] == "NOT_JOINED"
    assert op_error["type"] == "NOT_JOINED"
    assert op_error["event"] == "cursor"
    assert ok["ok"] is True


def test_connect_time_rooms(server: ServerProcess) -> None:
    results = run_node(server, [
        {"action": "connect", "client": "a",
         "auth": {"token": server.token("alice"), "rooms": ["doc:a", "bad room"]}},
        {"action": "wait", "client": "a", "event": "joined"},
        {"action": "wait", "client": "a", "event": "room-error"},
        {"action": "call", "client": "a", "event": "cursor", "data": {"room": "doc:a"}},
    ])
    _, joined, room_error, ack = results
    assert joined["room"] == "doc:a"
    assert joined["ok"] is True
    assert room_error == {"room": "bad room", "ok": False, "error": room_error["error"]}
    assert room_error["error"]["code"] == "INVALID_ROOM"
    assert ack == {"ok": True}


def test_oversized_event_is_too_large(server_factory: Any) -> None:
    server = server_factory("--max-event-bytes", "1000")
    room = "doc:big"
    results = run_node(server, [
        connect("a", server.token("alice")),
        connect("b", server.token("bob")),
        {"action": "call", "client": "a", "event": "join", "data": {"room": room}},
        {"action": "call", "client": "b", "event": "join", "data": {"room": room}},
        {"action": "call", "client": "a", "event": "broadcast",
         "data": {"room": room, "event": "big", "data": "x" * 2000}},
        {"action": "call", "client": "a", "event": "broadcast",
         "data": {"room": room, "event": "big", "data": {"$bytes": "ab" * 2000}}},
        {"action": "call", "client": "a", "event": "broadcast",
         "data": {"room": room, "event": "small", "data": "ok"}},
        {"action": "wait", "client": "b", "event": "broadcast"},
        {"action": "events", "client": "b", "event": "broadcast"},
    ])
    too_large, too_large_bin, ok, _, seen = results[4:]
    assert too_large["ok"] is False
    assert too_large["error"]["code"] == "TOO_LARGE"
    assert too_large_bin["error"]["code"] == "TOO_LARGE"
    assert ok == {"ok": True}
    assert [e[1]["event"] for e in seen] == ["small"]


def test_message_past_max_payload_closes_only_that_client(server_factory: Any) -> None:
    server = server_factory("--max-payload", "20000")
    room = "doc:payload"
    results = run_node(server, [
        connect("a", server.token("alice")),
        connect("b", server.token("bob")),
        {"action": "call", "client": "a", "event": "join", "data": {"room": room}},
        {"action": "call", "client": "b", "event": "join", "data": {"room": room}},
        {"action": "emit", "client": "a", "event": "broadcast",
         "data": {"room": room, "event": "huge", "data": "x" * 50000}},
        {"action": "waitDisconnect", "client": "a"},
        {"action": "wait", "client": "b", "event": "presence", "match": {"connections": 1}},
        {"action": "call", "client": "b", "event": "cursor", "data": {"room": room, "cursor": 1}},
    ])
    assert results[5] == "transport close"
    assert results[7] == {"ok": True}


def test_nan_from_a_python_client_does_not_reach_js_clients(server: ServerProcess) -> None:
    """Python's json writes NaN; JSON.parse cannot read it, so relaying it as-is would
    make every JS client in the room drop its connection ("parse error")."""
    room = "doc:nan"
    node_results: list[Any] = []

    def node() -> None:
        node_results.extend(run_node(server, [
            connect("js", server.token("js")),
            {"action": "call", "client": "js", "event": "join", "data": {"room": room}},
            {"action": "wait", "client": "js", "event": "broadcast", "match": {"event": "after"}},
            {"action": "events", "client": "js", "event": "cursor"},
        ], timeout_ms=10000))

    async def python_side() -> None:
        async with clients(server, "py") as (py,):
            await py.join(room)
            thread = threading.Thread(target=node)
            thread.start()
            try:
                await py.wait_for("presence", lambda p: p["connections"] == 2, timeout=10)
                await py.emit("cursor", {"room": room, "cursor": float("nan")})
                err = await py.wait_for("operation-error")
                assert err["type"] == "VALIDATION"
                ack = await py.call("broadcast", {"room": room, "event": "after", "data": 1})
                assert ack == {"ok": True}
            finally:
                await asyncio.to_thread(thread.join, 30)

    run(python_side())
    _, join, after, cursors = node_results
    assert join["ok"] is True
    assert after["userId"] == "py"
    assert cursors == []


def test_large_messages_relay_intact(server: ServerProcess) -> None:
    room = "doc:large"
    text = "".join(chr(0x20 + i % 0x5F) for i in range(300_000)) + "é✓🚀"
    blob = bytes(i % 251 for i in range(300_000)).hex()
    results = run_node(server, [
        connect("a", server.token("alice")),
        connect("b", server.token("bob")),
        {"action": "call", "client": "a", "event": "join", "data": {"room": room}},
        {"action": "call", "client": "b", "event": "join", "data": {"room": room}},
        {"action": "call", "client": "a", "event": "broadcast",
         "data": {"room": room, "event": "text", "data": text}},
        {"action": "call", "client": "a", "event": "broadcast",
         "data": {"room": room, "event": "blob", "data": {"$bytes": blob}}},
        {"action": "wait", "client": "b", "event": "broadcast", "match": {"event": "text"}},
        {"action": "wait", "client": "b", "event": "broadcast", "match": {"event": "blob"}},
    ])
    assert results[4] == {"ok": True}
    assert results[5] == {"ok": True}
    assert results[6]["data"] == text
    assert results[7]["data"] == {"$bytes": blob}
