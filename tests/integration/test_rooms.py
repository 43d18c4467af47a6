"""Rooms, presence and relays through the real protocol stack, under a mock clock."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import pytest
import trio
import trio.testing

from collabtrio.client import ConnectError
from collabtrio.rooms.commands import Relay
from collabtrio.testing import TestServer, open_test_server


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_readme_example(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc:1")
            await bob.join("doc:1")
            await alice.emit("cursor", {"room": "doc:1", "cursor": {"x": 3}})
            event = await bob.next_event("cursor")
            assert event["cursor"] == {"x": 3}
            assert event["userId"] == "alice"


async def test_join_ack_and_presence_on_join_leave_disconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server, server.client("alice") as alice:
        ack = await alice.join("doc:1")
        assert ack["ok"] is True
        assert ack["room"] == "doc:1"
        assert ack["role"] == "write"
        assert ack["seq"] == 0
        assert ack["recovered"] is False
        assert ack["presence"]["connections"] == 1
        assert [u["userId"] for u in ack["presence"]["users"]] == ["alice"]
        alice.pending_events()

        async with server.client("bob", rooms={"doc:*": "read"}) as bob:
            bob_ack = await bob.join("doc:1")
            assert bob_ack["role"] == "read"
            presence = await alice.next_event("presence")
            assert presence["connections"] == 2
            assert presence["uniqueUsers"] == 2
            assert {u["userId"] for u in presence["users"]} == {"alice", "bob"}
            bob_entry = next(u for u in presence["users"] if u["userId"] == "bob")
            assert bob_entry["role"] == "read"
            assert bob_entry["socketId"] == bob.sid

            assert (await bob.call("leave", {"room": "doc:1"})) == {"ok": True, "room": "doc:1"}
            presence = await alice.next_event("presence")
            assert presence["connections"] == 1

            await bob.join("doc:1")
            assert (await alice.next_event("presence"))["connections"] == 2
        # bob's socket closed without a leave: he is removed all the same
        presence = await alice.next_event("presence")
        assert presence["connections"] == 1
        assert [u["userId"] for u in presence["users"]] == ["alice"]


async def test_same_user_twice_counts_one_unique_user(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as a1, server.client("alice") as a2:
            await a1.join("r")
            ack = await a2.join("r")
            assert ack["presence"]["uniqueUsers"] == 1
            assert ack["presence"]["connections"] == 2


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("cursor", {"cursor": {"x": 1, "y": 2}}),
        ("selection", {"selection": {"ids": ["a", "b"]}}),
        ("typing", {"typing": True}),
        ("broadcast", {"event": "progress", "data": {"pct": 50}}),
    ],
)
async def test_relays_reach_others_and_are_never_echoed(
    autojump_clock: trio.testing.MockClock, event: str, payload: dict[str, object]
) -> None:
    async with (
        open_test_server() as server, server.client("alice") as alice,
        server.client("bob") as bob,
        server.client("carol") as carol,
    ):
        for c in (alice, bob, carol):
            await c.join("doc:1")
        await trio.testing.wait_all_tasks_blocked()
        for c in (alice, bob, carol):
            c.pending_events()
        ack = await alice.call(event, {"room": "doc:1", **payload})
        assert ack == {"ok": True}
        for other in (bob, carol):
            got = await other.next_event(event)
            assert got == {"room": "doc:1", **payload, "socketId": alice.sid,
                           "userId": "alice", "userName": "alice"}
        await trio.testing.wait_all_tasks_blocked()
        assert [e for e, _ in alice.pending_events() if e == event] == []


async def _presence_during_a_join_storm(interval_ms: int) -> tuple[list[tuple[float, int]],
                                                                     list[int]]:
    """alice is in room r, alone for a while; then 20 clients join it, one every 10 ms.
    What alice hears (when, and how many connections each list shows) and what each
    joiner's ack listed."""
    async with open_test_server(presence_interval_ms=interval_ms) as server:
        async with server.client("alice") as alice, contextlib.AsyncExitStack() as stack:
            await alice.join("r")
            clients = [await stack.enter_async_context(server.client(f"u{i}"))
                       for i in range(20)]
            await trio.sleep(1)
            heard: list[tuple[float, int]] = []
            t0 = trio.current_time()

            async def listen() -> None:
                while not heard or heard[-1][1] != 21:
                    event = await alice.next_event("presence")
                    heard.append((trio.current_time() - t0, event["connections"]))

            acks = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                for client in clients:
                    acks.append((await client.join("r"))["presence"]["connections"])
                    await trio.sleep(0.01)
            # and nothing more is on its way
            await trio.sleep(1)
            assert [name for name, _ in alice.pending_events()] == []
            return heard, acks


async def test_presence_goes_out_at_once_then_at_most_once_per_interval_in_a_join_storm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A join storm costs each member a few presence lists, not one per join: the first
    change goes out at once, the later ones at most once per presence_interval_ms, and
    the last list shows everyone. Each joiner's own ack lists the room as it joined."""
    heard, acks = await _presence_during_a_join_storm(50)
    assert acks == list(range(2, 22))
    assert heard[0] == (0.0, 2)  # at once: the first join after a quiet spell
    assert heard[-1][1] == 21
    # a list to c members waits 50 ms x max(1, c / 10) after the one before: counted
    # with the room as it is when the list goes, so a room that grew waits longer
    for (t, _), (t_next, c_next) in itertools.pairwise(heard):
        assert t_next - t >= 0.05 * max(1, c_next / 10) - 1e-9, heard
    # 20 joins over 200 ms: one list at once, then a few
    assert len(heard) <= 5, heard
    # with the interval off, every join is a list of its own
    heard, acks = await _presence_during_a_join_storm(0)
    assert acks == list(range(2, 22))
    assert [count for _, count in heard] == list(range(2, 22))


async def test_cursor_is_kept_in_presence_for_later_joiners(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc:1")
            await alice.call("cursor", {"room": "doc:1", "cursor": {"line": 7}})
            ack = await bob.join("doc:1")
            entry = next(u for u in ack["presence"]["users"] if u["userId"] == "alice")
            assert entry["cursor"] == {"line": 7}


async def test_binary_broadcast_round_trip(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("r")
            await bob.join("r")
            blob = bytes(range(256)) * 4
            await alice.emit("broadcast", {"room": "r", "event": "blob", "data": {"b": blob}})
            got = await bob.next_event("broadcast")
            assert got["data"]["b"] == blob


async def test_errors_for_bad_requests(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server, server.client("alice") as alice:
        async def code(event: str, payload: object) -> str:
            ack = await alice.call(event, payload)
            assert ack["ok"] is False
            return str(ack["error"]["code"])

        assert await code("join", {"room": "bad room!"}) == "INVALID_ROOM"
        assert await code("join", {"room": "x" * 129}) == "INVALID_ROOM"
        assert await code("join", {"room": "user:bob"}) == "FORBIDDEN"
        assert await code("cursor", {"room": "doc:1", "cursor": {}}) == "NOT_JOINED"
        assert await code("leave", {"room": "doc:1"}) == "NOT_JOINED"
        assert await code("nope", {}) == "UNKNOWN_EVENT"
        assert await code("join", "doc:1") == "VALIDATION"
        assert await code("typing", {"room": "doc:1", "typing": "yes"}) == "VALIDATION"
        ack = await alice.call("join", {"room": "r", "since": "zero"})
        assert ack["error"]["code"] == "VALIDATION"
        assert ack["error"]["details"][0]["loc"] == ["since"]
        # and the connection still works
        assert (await alice.join("doc:1"))["ok"] is True
        assert server.server.registry.get("bad room!") is None


async def test_unacked_error_becomes_operation_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server, server.client("alice") as alice:
        await alice.emit("cursor", {"room": "nowhere", "cursor": 1})
        err = await alice.next_event("operation-error")
        assert err["type"] == "NOT_JOINED"
        assert err["event"] == "cursor"


async def test_own_personal_room_is_allowed(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server, server.client("alice") as alice:
        assert (await alice.join("user:alice"))["ok"] is True
        assert server.server.registry.users["alice"]


async def test_connect_time_rooms(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server:
        token = server.token("alice")
        async with server.connect(
            token=token, auth={"rooms": ["a", "bad room"]}, query={"room": ["b"]}
        ) as alice:
            joined = {}
            errors = []
            for _ in range(3):
                event, data = await alice.next_event()
                while event == "presence":
                    event, data = await alice.next_event()
                if event == "joined":
                    joined[data["room"]] = data
                else:
                    assert event == "room-error"
                    errors.append(data)
            assert set(joined) == {"a", "b"}
            assert joined["a"]["ok"] is True
            assert errors[0]["room"] == "bad room"
            assert errors[0]["error"]["code"] == "INVALID_ROOM"
            # the connection stays up
            assert (await alice.call("cursor", {"room": "a", "cursor": 1})) == {"ok": True}


async def test_auth_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server:
        with pytest.raises(ConnectError) as info:
            async with server.connect():
                pass
        assert info.value.code == "AUTH_REQUIRED"
        with pytest.raises(ConnectError) as info:
            async with server.connect(token="not.a.token"):
                pass
        assert info.value.code == "INVALID_TOKEN"
        expired = server.token("alice", ttl_s=10)
        await trio.sleep(11)
        with pytest.raises(ConnectError) as info:
            async with server.connect(token=expired):
                pass
        assert info.value.code == "TOKEN_EXPIRED"
        # token in the Authorization header, then in the query
        async with server.connect(headers={"Authorization": f"Bearer {server.token('h')}"}) as c:
            assert c.sid
        async with server.connect(query={"token": server.token("q")}) as c:
            assert c.sid


async def test_anonymous_mode(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(anonymous=True) as server:
        async with server.connect() as anon:
            ack = await anon.join("r")
            user = ack["presence"]["users"][0]
            assert user["userId"].startswith("anon-")
            assert user["role"] == "write"
        # a token that is sent is still checked
        with pytest.raises(ConnectError) as info:
            async with server.connect(token="garbage"):
                pass
        assert info.value.code == "INVALID_TOKEN"


async def test_room_full_and_rooms_per_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_room_members=2, max_rooms_per_connection=2) as server:
        async with (
            server.client("a") as a,
            server.client("b") as b,
            server.client("c") as c,
        ):
            await a.join("r")
            await b.join("r")
            ack = await c.call("join", {"room": "r"})
            assert ack["error"]["code"] == "ROOM_FULL"
            await a.join("r2")
            ack = await a.call("join", {"room": "r3"})
            assert ack["ok"] is False
            assert ack["error"]["code"] == "FORBIDDEN"
            # joining a room one is already in does not count twice
            assert (await a.join("r2"))["ok"] is True


async def test_idle_room_closes_after_exactly_room_idle_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(room_idle_s=30) as server, server.client("alice") as alice:
        registry = server.server.registry
        await alice.join("doc:1")
        room = registry.get("doc:1")
        assert room is not None
        await trio.sleep(100)  # members keep a room open however long
        assert registry.get("doc:1") is room
        await alice.call("leave", {"room": "doc:1"})
        left_at = trio.current_time()
        await trio.sleep(29.999)
        assert registry.get("doc:1") is room
        await trio.sleep(0.002)
        assert registry.get("doc:1") is None
        assert room.closed
        assert trio.current_time() - left_at == pytest.approx(30.001)
        # a later join opens a fresh room
        await alice.join("doc:1")
        assert registry.get("doc:1") is not room


async def test_rejoin_within_idle_window_keeps_the_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(room_idle_s=30) as server, server.client("alice") as alice:
        registry = server.server.registry
        await alice.join("doc:1")
        room = registry.get("doc:1")
        await alice.call("leave", {"room": "doc:1"})
        await trio.sleep(20)
        await alice.join("doc:1")
        await trio.sleep(40)
        assert registry.get("doc:1") is room


def _app_client(server: TestServer, sid: str) -> Any:
    """The application's Client behind the connection with socket id ``sid``."""
    session = next(s for s in server.server.connections if s.sid == sid)
    namespace = session.namespace
    assert namespace is not None
    return namespace.client  # type: ignore[attr-defined]


async def test_a_relay_is_applied_at_once_only_when_the_room_has_nothing_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay to an idle room is applied in the sender's task (no scheduler pass
    before the broadcast), but never ahead of a command already queued: then it waits
    its turn in the mailbox, and the members see them in order."""
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob, \
                server.client("carol") as carol:
            for c in (alice, bob, carol):
                await c.join("doc")
            await trio.testing.wait_all_tasks_blocked()
            bob.pending_events()
            room = server.server.registry.get("doc")
            assert room is not None
            assert room.mailbox.reader_waiting
            a, c = _app_client(server, alice.sid), _app_client(server, carol.sid)
            # idle room: applied before relay_now returns, nothing is left queued
            assert room.relay_now(Relay(a, None, "cursor", {"room": "doc", "cursor": 1}, True))
            assert len(room.mailbox) == 0
            # something queued (carol's cursor): alice's relay must not overtake it
            room.mailbox.put_nowait(Relay(c, None, "cursor", {"room": "doc", "cursor": 9}, True))
            relay = Relay(a, None, "cursor", {"room": "doc", "cursor": 2}, True)
            assert not room.relay_now(relay)
            room.mailbox.put_nowait(relay)
            seen = []
            while len(seen) < 3:
                data = await bob.next_event("cursor")
                seen.append((data["userId"], data["cursor"]))
            assert seen == [("alice", 1), ("carol", 9), ("alice", 2)]
            # and the room's task served the queue: idle again
            await trio.testing.wait_all_tasks_blocked()
            assert room.mailbox.reader_waiting
