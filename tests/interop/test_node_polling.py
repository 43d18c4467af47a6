"""The stock JavaScript ``socket.io-client`` (v4, in node) over HTTP long-polling.

A client left at its default options opens its session with long-polling and upgrades
it to a WebSocket; ``transports: ["polling"]`` and ``upgrade: false`` keep it on
long-polling. These tests drive ``node/client.mjs`` (see test_node_client.py) against
a real server: collaboration in every transport mode, events in order across the
upgrade, allowed origins (``--cors-origins``) and a token in ``Authorization: Bearer``.
Needs ``node`` and ``npm install`` in tests/interop/node, like test_node_client.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ServerProcess

from .conftest import clients, run
from .test_node_client import NODE, NODE_DIR, REQUIRED, SCRIPT, _missing, cli_token, run_node

pytestmark = [pytest.mark.interop, pytest.mark.node]

NO_UPGRADE_WAIT_MS = 1000
"""How long a client that must not upgrade is watched (an upgrade takes ~10 ms here)."""

FAST_PUBLISHER = ("--rate-limit-per-s", "100000", "--rate-limit-burst", "100000")
"""Server flags that let one client publish 1,000 events in about a second."""

MODES: dict[str, dict[str, Any]] = {
    "defaults": {"defaults": True},
    "polling": {"defaults": True, "options": {"transports": ["polling"]}},
    "no-upgrade": {"defaults": True, "options": {"upgrade": False}},
    "websocket": {},
}
"""connect-step fields for each way of connecting: socket.io-client's defaults (polling,
then upgrade), polling only, polling without upgrade, and WebSocket only."""

FINAL_TRANSPORT = {"defaults": "websocket", "polling": "polling", "no-upgrade": "polling",
                   "websocket": "websocket"}


@pytest.fixture(autouse=True)
def _node_available() -> None:
    why = _missing()
    if why is None:
        return
    if REQUIRED:
        pytest.fail(f"COLLABTRIO_REQUIRE_SERVICES=1 but {why}")
    pytest.skip(why)


class Scenario:
    """client.mjs steps, each result found again by the label it was added with."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.labels: list[str | None] = []

    def add(self, label: str | None = None, **step: Any) -> Scenario:
        self.steps.append(step)
        self.labels.append(label)
        return self

    def run(self, server: ServerProcess, **kwargs: Any) -> dict[str, Any]:
        results = run_node(server, self.steps, **kwargs)
        return {label: r for label, r in zip(self.labels, results, strict=False)
                if label is not None}


def _connect(client: str, mode: str, token: str | None = None,
             headers: dict[str, str] | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"action": "connect", "client": client, **MODES[mode]}
    step["options"] = dict(step.get("options", {}))
    if headers:
        step["options"]["extraHeaders"] = headers
    if token is not None:
        step["auth"] = {"token": token}
    return step


def _op(room: str, op_id: str, eid: str, data: Any) -> dict[str, Any]:
    return {"room": room, "operationId": op_id, "op": "add", "collection": "shapes",
            "id": eid, "data": data}


def _settle(scenario: Scenario, modes: dict[str, str]) -> None:
    """Wait for the clients that upgrade to do so, and long enough for the others to
    show they do not."""
    for client, mode in modes.items():
        if mode == "defaults":
            scenario.add(f"upgraded_{client}", action="waitUpgrade", client=client)
    if any(FINAL_TRANSPORT[m] == "polling" for m in modes.values()):
        scenario.add(action="sleep", ms=NO_UPGRADE_WAIT_MS)


# -- collaboration in every transport mode ------------------------------------------------


@pytest.mark.parametrize(("mode_a", "mode_b"), [
    ("defaults", "defaults"),
    ("polling", "polling"),
    ("polling", "websocket"),
    ("no-upgrade", "defaults"),
])
def test_two_clients_collaborate(server: ServerProcess, mode_a: str, mode_b: str) -> None:
    room = "doc:modes"
    blob_a = bytes(range(256)).hex()
    blob_b = bytes(range(255, -1, -1)).hex() * 3
    s = Scenario()
    s.add("con_a", **_connect("a", mode_a, cli_token(server, "alice", "--name", "Alice")))
    s.add("con_b", **_connect("b", mode_b, server.token("bob", name="Bøb 🚀")))
    s.add("join_a", action="call", client="a", event="join", data={"room": room})
    s.add("join_b", action="call", client="b", event="join", data={"room": room})
    s.add("presence", action="wait", client="a", event="presence", match={"connections": 2})
    _settle(s, {"a": mode_a, "b": mode_b})
    s.add("cur_ack_a", action="call", client="a", event="cursor",
          data={"room": room, "cursor": {"x": 1}})
    s.add("cur_at_b", action="wait", client="b", event="cursor")
    s.add("cur_ack_b", action="call", client="b", event="cursor",
          data={"room": room, "cursor": {"x": 2, "label": "é✓🚀"}})
    s.add("cur_at_a", action="wait", client="a", event="cursor")
    s.add("bin_ack_a", action="call", client="a", event="broadcast",
          data={"room": room, "event": "bin", "data": {"blob": {"$bytes": blob_a}, "n": 1}})
    s.add("bin_at_b", action="wait", client="b", event="broadcast")
    s.add("bin_ack_b", action="call", client="b", event="broadcast",
          data={"room": room, "event": "bin", "data": [{"$bytes": blob_b}, "text"]})
    s.add("bin_at_a", action="wait", client="a", event="broadcast")
    s.add("op_ack_b", action="call", client="b", event="op",
          data=_op(room, "op-b", "s1", {"x": 1, "name": "ü"}))
    s.add("op_at_a", action="wait", client="a", event="op")
    s.add("op_ack_a", action="call", client="a", event="op", data=_op(room, "op-a", "s2", {"n": 2}))
    s.add("op_at_b", action="wait", client="b", event="op")
    s.add("echo_a", action="events", client="a", event="broadcast")
    s.add("echo_b", action="events", client="b", event="cursor")
    s.add("transport_a", action="transport", client="a")
    s.add("transport_b", action="transport", client="b")
    r = s.run(server)

    assert r["con_a"]["ok"] is True, r["con_a"]
    assert r["con_b"]["ok"] is True, r["con_b"]
    sid_a, sid_b = r["con_a"]["id"], r["con_b"]["id"]
    assert r["join_a"]["ok"] is True
    assert r["join_a"]["role"] == "write"
    assert r["join_b"]["presence"]["connections"] == 2
    assert {u["socketId"] for u in r["presence"]["users"]} == {sid_a, sid_b}
    assert {u["userName"] for u in r["presence"]["users"]} == {"Alice", "Bøb 🚀"}
    for client, mode in (("a", mode_a), ("b", mode_b)):
        if mode == "defaults":
            assert r[f"upgraded_{client}"] == "websocket"
        assert r[f"transport_{client}"] == FINAL_TRANSPORT[mode], (client, mode)

    assert r["cur_ack_a"] == {"ok": True}
    assert r["cur_at_b"] == {"room": room, "cursor": {"x": 1}, "socketId": sid_a,
                             "userId": "alice", "userName": "Alice"}
    assert r["cur_ack_b"] == {"ok": True}
    assert r["cur_at_a"] == {"room": room, "cursor": {"x": 2, "label": "é✓🚀"},
                             "socketId": sid_b, "userId": "bob", "userName": "Bøb 🚀"}

    assert r["bin_ack_a"] == {"ok": True}
    assert r["bin_at_b"]["data"] == {"blob": {"$bytes": blob_a}, "n": 1}
    assert (r["bin_at_b"]["event"], r["bin_at_b"]["socketId"]) == ("bin", sid_a)
    assert r["bin_ack_b"] == {"ok": True}
    assert r["bin_at_a"]["data"] == [{"$bytes": blob_b}, "text"]
    assert r["bin_at_a"]["userId"] == "bob"

    assert r["op_ack_b"]["ok"] is True, r["op_ack_b"]
    assert r["op_ack_b"]["operationId"] == "op-b"
    assert r["op_ack_a"]["ok"] is True, r["op_ack_a"]
    assert r["op_ack_a"]["seq"] == r["op_ack_b"]["seq"] + 1
    op_a = r["op_at_a"]
    assert (op_a["operationId"], op_a["op"], op_a["collection"], op_a["id"]) == (
        "op-b", "add", "shapes", "s1")
    assert op_a["data"] == {"x": 1, "name": "ü"}
    assert (op_a["seq"], op_a["socketId"], op_a["userId"]) == (
        r["op_ack_b"]["seq"], sid_b, "bob")
    assert r["op_at_b"]["operationId"] == "op-a"
    assert r["op_at_b"]["data"] == {"n": 2}

    # nothing is echoed to its sender
    assert [e[1]["socketId"] for e in r["echo_a"]] == [sid_b]
    assert [e[1]["socketId"] for e in r["echo_b"]] == [sid_a]


def test_default_client_opens_on_polling_then_upgrades(server: ServerProcess) -> None:
    r = (Scenario()
         .add("con", action="connectTracked", client="a", auth={"token": server.token("alice")})
         .add("upgraded", action="waitUpgrade", client="a")
         .add("join", action="call", client="a", event="join", data={"room": "doc:up"})
         .run(server))
    assert r["con"]["ok"] is True, r["con"]
    assert r["con"]["openedWith"] == "polling"
    assert r["upgraded"] == "websocket"
    assert r["join"]["ok"] is True


def test_polling_only_client_never_upgrades(server: ServerProcess) -> None:
    """Watched for a second: a default client upgrades within milliseconds."""
    r = (Scenario()
         .add("con", action="connectTracked", client="a", auth={"token": server.token("alice")},
              options={"transports": ["polling"]})
         .add("before", action="transport", client="a")
         .add(action="sleep", ms=NO_UPGRADE_WAIT_MS)
         .add("join", action="call", client="a", event="join", data={"room": "doc:p"})
         .add("after", action="transport", client="a")
         .run(server))
    assert r["con"]["openedWith"] == "polling"
    assert (r["before"], r["after"]) == ("polling", "polling")
    assert r["join"]["ok"] is True


def test_large_messages_relay_intact_over_polling(server: ServerProcess) -> None:
    """Text past 64 KiB with multi-byte characters and a 300 kB binary attachment, both
    ways between two polling-only clients (POST bodies and held GET answers)."""
    room = "doc:large"
    text = "".join(chr(0x20 + i % 0x5F) for i in range(300_000)) + "é✓🚀\x1e"
    blob = bytes(i % 251 for i in range(300_000)).hex()
    r = (Scenario()
         .add(**_connect("a", "polling", server.token("alice")))
         .add(**_connect("b", "polling", server.token("bob")))
         .add(action="call", client="a", event="join", data={"room": room})
         .add(action="call", client="b", event="join", data={"room": room})
         .add("text_ack", action="call", client="a", event="broadcast",
              data={"room": room, "event": "text", "data": text})
         .add("blob_ack", action="call", client="b", event="broadcast",
              data={"room": room, "event": "blob", "data": {"$bytes": blob}})
         .add("text", action="wait", client="b", event="broadcast", match={"event": "text"})
         .add("blob", action="wait", client="a", event="broadcast", match={"event": "blob"})
         .add("ta", action="transport", client="a")
         .run(server, timeout_ms=10000))
    assert r["text_ack"] == {"ok": True}
    assert r["blob_ack"] == {"ok": True}
    assert r["text"]["data"] == text
    assert r["blob"]["data"] == {"$bytes": blob}
    assert r["ta"] == "polling"


def test_polling_client_answers_pings_and_stays_connected(
        server_factory: Callable[..., ServerProcess]) -> None:
    """Pings every 100 ms release the held GET; the pongs go back in POSTs."""
    server = server_factory("--ping-interval-ms", "100", "--ping-timeout-ms", "1000")
    r = (Scenario()
         .add("con", **_connect("a", "polling", server.token("alice")))
         .add(action="sleep", ms=1200)  # about ten ping/pong cycles
         .add("join", action="call", client="a", event="join", data={"room": "doc:ping"})
         .add("transport", action="transport", client="a")
         .run(server))
    assert r["con"]["ok"] is True
    assert r["join"]["ok"] is True
    assert r["transport"] == "polling"


def test_killed_polling_client_leaves_the_room_promptly(server: ServerProcess) -> None:
    """A polling client whose process dies while its GET is held closes that GET's
    connection: the server ends the session then, long before pingInterval + pingTimeout
    (45 s; what it takes when the client dies between two requests)."""
    room = "doc:killed"
    scenario = {"url": server.url, "timeoutMs": 5000, "steps": [
        _connect("a", "polling", server.token("alice")),
        {"action": "call", "client": "a", "event": "join", "data": {"room": room}},
        {"action": "sleep", "ms": 30000},
    ]}
    assert NODE is not None

    async def main() -> None:
        async with clients(server, "bob") as (bob,):
            await bob.join(room)
            proc = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
                [NODE, str(SCRIPT), json.dumps(scenario)], cwd=NODE_DIR,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                both = await bob.wait_for("presence", lambda p: p["connections"] == 2)
                assert {u["userId"] for u in both["users"]} == {"alice", "bob"}
                start = len(bob.events)
                await asyncio.sleep(0.3)  # idle: its next GET is held by now
            finally:
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
            alone = await bob.wait_for("presence", lambda p: p["connections"] == 1,
                                       timeout=3, start=start)
            assert [u["userId"] for u in alone["users"]] == ["bob"]

    run(main())


# -- events in order across the upgrade ----------------------------------------------------


def _numbers(collected: list[Any]) -> list[int]:
    return [payload["data"]["n"] for payload, _ in collected]


def _transports(collected: list[Any]) -> list[str]:
    """The transports the events arrived on, each run of one transport once."""
    runs: list[str] = []
    for _, transport in collected:
        if not runs or runs[-1] != transport:
            runs.append(transport)
    return runs


@pytest.mark.parametrize(("batch", "every", "release_after"), [(5, 5, 100), (10, 2, 20)],
                         ids=["steady", "burst"])
def test_events_in_order_across_an_upgrade_mid_stream(
        server_factory: Callable[..., ServerProcess], batch: int, every: int,
        release_after: int) -> None:
    """The subscriber joins on long-polling, 1,000 events start flowing, and its upgrade
    happens in the middle of them: the WebSocket the probe uses opens (releaseUpgrade)
    once ``release_after`` events arrived over polling. Every event arrives, in order,
    once. At the burst pace (~5 events a millisecond) a backlog waits for a poll when
    the upgrade lands (a poll carries at most 16 packets), and moves to the WebSocket."""
    server = server_factory(*FAST_PUBLISHER)
    room = "doc:order"
    count = 1000
    r = (Scenario()
         .add(**_connect("pub", "websocket", server.token("pub")))
         .add("pub_join", action="call", client="pub", event="join", data={"room": room})
         .add("con", action="connectTracked", client="sub", holdUpgrade=True,
              auth={"token": server.token("sub")})
         .add("before_join", action="transport", client="sub")
         .add("join", action="call", client="sub", event="join", data={"room": room})
         .add("after_join", action="transport", client="sub")
         .add(action="publish", client="pub", room=room, count=count, batch=batch, every=every)
         .add("first", action="collect", client="sub", event="broadcast",
              count=release_after)
         .add("mid", action="transport", client="sub")
         .add(action="releaseUpgrade", client="sub")
         .add("upgraded", action="waitUpgrade", client="sub")
         .add("sent_at_upgrade", action="sentSoFar", client="pub")
         .add("published", action="published", client="pub")
         .add("all", action="collect", client="sub", event="broadcast", count=count)
         .add(action="sleep", ms=200)
         .add("extra", action="events", client="sub", event="broadcast")
         .run(server, timeout_ms=10000))
    assert r["pub_join"]["ok"] is True
    assert r["con"]["openedWith"] == "polling"
    assert (r["before_join"], r["after_join"], r["mid"]) == ("polling",) * 3
    assert r["join"]["ok"] is True
    assert r["upgraded"] == "websocket"
    assert r["sent_at_upgrade"] < count, "the upgrade came after the last event was sent"
    assert r["published"] == {"sent": count, "ok": count, "errors": []}
    assert _numbers(r["all"]) == list(range(count))
    assert len(r["extra"]) == count  # nothing twice
    assert _transports(r["all"]) == ["polling", "websocket"]
    on_polling = sum(1 for _, t in r["all"] if t == "polling")
    assert release_after <= on_polling < count


def test_events_from_a_client_in_order_across_its_upgrade(
        server_factory: Callable[..., ServerProcess]) -> None:
    """The other way: the client that upgrades mid-stream is the publisher (its last
    POSTs and its first WebSocket frames); a websocket subscriber gets all 1,000 events
    in order, once, and every ack is an ok."""
    server = server_factory(*FAST_PUBLISHER)
    room = "doc:order-up"
    count = 1000
    r = (Scenario()
         .add(**_connect("sub", "websocket", server.token("sub")))
         .add(action="call", client="sub", event="join", data={"room": room})
         .add("con", action="connectTracked", client="pub", holdUpgrade=True,
              auth={"token": server.token("pub")})
         .add(action="call", client="pub", event="join", data={"room": room})
         .add(action="publish", client="pub", room=room, count=count, batch=5, every=2)
         .add("first", action="collect", client="sub", event="broadcast", count=150)
         .add("mid", action="transport", client="pub")
         .add(action="releaseUpgrade", client="pub")
         .add("upgraded", action="waitUpgrade", client="pub")
         .add("sent_at_upgrade", action="sentSoFar", client="pub")
         .add("published", action="published", client="pub")
         .add("all", action="collect", client="sub", event="broadcast", count=count)
         .add(action="sleep", ms=200)
         .add("extra", action="events", client="sub", event="broadcast")
         .run(server, timeout_ms=10000))
    assert r["con"]["openedWith"] == "polling"
    assert r["mid"] == "polling"
    assert r["upgraded"] == "websocket"
    assert r["sent_at_upgrade"] < count, "the upgrade came after the last event was sent"
    assert r["published"] == {"sent": count, "ok": count, "errors": []}
    assert _numbers(r["all"]) == list(range(count))
    assert len(r["extra"]) == count


def test_events_in_order_when_a_default_client_joins_mid_stream(
        server_factory: Callable[..., ServerProcess]) -> None:
    """Stock timing: 1,000 events are flowing when a client with default options
    connects, joins and receives the rest: every event sent after its join ack arrives,
    in order, once. (Here its upgrade usually completes before the connect does; the
    test above holds it back to make it land mid-stream.)"""
    server = server_factory(*FAST_PUBLISHER)
    room = "doc:order2"
    count = 1000
    r = (Scenario()
         .add(**_connect("pub", "websocket", server.token("pub")))
         .add(action="call", client="pub", event="join", data={"room": room})
         .add(action="publish", client="pub", room=room, count=count, batch=2, every=2)
         .add(action="sleep", ms=150)
         .add("con", action="connectTracked", client="sub", auth={"token": server.token("sub")})
         .add("join", action="call", client="sub", event="join", data={"room": room})
         .add("sent_at_join", action="sentSoFar", client="pub")
         .add("upgraded", action="waitUpgrade", client="sub")
         .add("published", action="published", client="pub")
         .add("got", action="collect", client="sub", event="broadcast",
              until={"data": {"n": count - 1}})
         .add(action="sleep", ms=200)
         .add("extra", action="events", client="sub", event="broadcast")
         .run(server, timeout_ms=10000))
    assert r["con"]["openedWith"] == "polling"
    assert r["join"]["ok"] is True
    assert r["upgraded"] == "websocket"
    assert r["published"] == {"sent": count, "ok": count, "errors": []}
    got = _numbers(r["got"])
    assert got, "no event arrived"
    assert got == list(range(got[0], count))
    assert got[0] <= r["sent_at_join"] < count - 100, (got[0], r["sent_at_join"])
    assert len(r["extra"]) == len(got)
    assert _transports(r["got"]) in (["polling", "websocket"], ["websocket"])


def test_polling_publisher_events_in_order(
        server_factory: Callable[..., ServerProcess]) -> None:
    """A polling-only client emits 1,000 acked events as fast as it can (the client
    batches what it writes while a POST is out): a websocket and a polling subscriber
    get them all, in order, once; every ack is an ok."""
    server = server_factory(*FAST_PUBLISHER)
    room = "doc:pollpub"
    count = 1000
    r = (Scenario()
         .add(**_connect("pub", "polling", server.token("pub")))
         .add(**_connect("ws", "websocket", server.token("ws")))
         .add(**_connect("poll", "polling", server.token("poll")))
         .add(action="call", client="pub", event="join", data={"room": room})
         .add(action="call", client="ws", event="join", data={"room": room})
         .add(action="call", client="poll", event="join", data={"room": room})
         .add(action="publish", client="pub", room=room, count=count, batch=50)
         .add("published", action="published", client="pub")
         .add("ws", action="collect", client="ws", event="broadcast", count=count)
         .add("poll", action="collect", client="poll", event="broadcast", count=count)
         .add(action="sleep", ms=200)
         .add("ws_all", action="events", client="ws", event="broadcast")
         .add("poll_all", action="events", client="poll", event="broadcast")
         .run(server, timeout_ms=10000))
    assert r["published"] == {"sent": count, "ok": count, "errors": []}
    assert _numbers(r["ws"]) == list(range(count))
    assert _numbers(r["poll"]) == list(range(count))
    assert (len(r["ws_all"]), len(r["poll_all"])) == (count, count)


def test_post_past_max_payload_closes_only_that_client(
        server_factory: Callable[..., ServerProcess]) -> None:
    """A POST body past maxPayload is refused (HTTP 413): that client's transport
    fails and its session ends; the room carries on."""
    server = server_factory("--max-payload", "20000")
    room = "doc:payload"
    r = (Scenario()
         .add(**_connect("a", "polling", server.token("alice")))
         .add(**_connect("b", "websocket", server.token("bob")))
         .add(action="call", client="a", event="join", data={"room": room})
         .add(action="call", client="b", event="join", data={"room": room})
         .add(action="emit", client="a", event="broadcast",
              data={"room": room, "event": "huge", "data": "x" * 50000})
         .add("reason", action="waitDisconnect", client="a")
         .add("presence", action="wait", client="b", event="presence", match={"connections": 1})
         .add("ack", action="call", client="b", event="cursor", data={"room": room, "cursor": 1})
         .add("seen", action="events", client="b", event="broadcast")
         .run(server))
    assert r["reason"] == "transport error"
    assert [u["userId"] for u in r["presence"]["users"]] == ["bob"]
    assert r["ack"] == {"ok": True}
    assert r["seen"] == []


# -- allowed origins -----------------------------------------------------------------------

APP = "https://app.example"
EVIL = "https://evil.example"


@pytest.fixture
def cors_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--cors-origins", APP)


@pytest.mark.parametrize("mode", ["defaults", "polling", "websocket"])
def test_origin_not_allowed_cannot_connect(cors_server: ServerProcess, mode: str) -> None:
    r = (Scenario()
         .add("con", **_connect("a", mode, cors_server.token("alice"), {"origin": EVIL}))
         .run(cors_server))
    assert r["con"]["ok"] is False, r["con"]
    expected = "websocket error" if mode == "websocket" else "xhr poll error"
    assert r["con"]["message"] == expected


@pytest.mark.parametrize("mode", ["defaults", "polling"])
def test_allowed_origin_works_over_polling_and_after_upgrade(
        cors_server: ServerProcess, mode: str) -> None:
    room = "doc:cors"
    s = Scenario()
    s.add("con", action="connectTracked", client="a", auth={"token": cors_server.token("alice")},
          options={**MODES[mode].get("options", {}), "extraHeaders": {"origin": APP}})
    s.add(**_connect("b", "websocket", cors_server.token("bob"), {"origin": APP}))
    s.add("join", action="call", client="a", event="join", data={"room": room})
    s.add(action="call", client="b", event="join", data={"room": room})
    s.add("cursor_ack", action="call", client="a", event="cursor",
          data={"room": room, "cursor": 1})
    s.add("cursor", action="wait", client="b", event="cursor")
    _settle(s, {"a": mode})
    s.add("op_ack", action="call", client="a", event="op", data=_op(room, "o1", "s1", {"v": 1}))
    s.add(action="call", client="b", event="broadcast",
          data={"room": room, "event": "hi", "data": {"$bytes": "00ff"}})
    s.add("bcast", action="wait", client="a", event="broadcast")
    s.add("transport", action="transport", client="a")
    r = s.run(cors_server)
    assert r["con"]["ok"] is True, r["con"]
    assert r["con"]["openedWith"] == "polling"
    assert r["join"]["ok"] is True
    assert r["cursor_ack"] == {"ok": True}
    assert r["cursor"]["cursor"] == 1
    assert r["op_ack"]["ok"] is True, r["op_ack"]
    assert r["bcast"]["data"] == {"$bytes": "00ff"}
    assert r["transport"] == FINAL_TRANSPORT[mode]


def test_without_cors_origins_only_the_servers_own_origin_connects(
        server: ServerProcess) -> None:
    own = f"http://127.0.0.1:{server.port}"
    r = (Scenario()
         .add("own", action="connectTracked", client="a", auth={"token": server.token("alice")},
              options={"extraHeaders": {"origin": own}})
         .add("upgraded", action="waitUpgrade", client="a")
         .add("join", action="call", client="a", event="join", data={"room": "doc:own"})
         .add("other", **_connect("b", "defaults", server.token("bob"), {"origin": APP}))
         .add("other_port", **_connect("c", "defaults", server.token("carol"),
                                       {"origin": f"http://127.0.0.1:{server.port + 1}"}))
         .run(server))
    assert r["own"]["ok"] is True, r["own"]
    assert r["upgraded"] == "websocket"
    assert r["join"]["ok"] is True
    assert r["other"]["ok"] is False
    assert r["other_port"]["ok"] is False


# -- a token in the Authorization header ---------------------------------------------------


@pytest.mark.parametrize("mode", ["defaults", "polling"])
def test_bearer_token_on_the_polling_handshake(server: ServerProcess, mode: str) -> None:
    token = cli_token(server, "alice", "--name", "Alice", "--room", "doc:*=admin")
    s = Scenario()
    s.add("con", **_connect("a", mode, headers={"authorization": f"Bearer {token}"}))
    _settle(s, {"a": mode})
    s.add("join", action="call", client="a", event="join", data={"room": "doc:bearer"})
    s.add("transport", action="transport", client="a")
    r = s.run(server)
    assert r["con"]["ok"] is True, r["con"]
    assert r["join"]["ok"] is True
    assert r["join"]["role"] == "admin"
    (me,) = r["join"]["presence"]["users"]
    assert (me["userId"], me["userName"], me["socketId"]) == ("alice", "Alice", r["con"]["id"])
    assert r["transport"] == FINAL_TRANSPORT[mode]


@pytest.mark.parametrize(("header", "code"), [
    (None, "AUTH_REQUIRED"),
    ("Bearer not-a-token", "INVALID_TOKEN"),
])
def test_bad_or_missing_bearer_token_is_refused(server: ServerProcess, header: str | None,
                                                code: str) -> None:
    headers = {"authorization": header} if header else None
    r = Scenario().add("con", **_connect("a", "defaults", headers=headers)).run(server)
    assert r["con"]["ok"] is False
    assert r["con"]["data"]["code"] == code
