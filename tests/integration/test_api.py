"""The HTTP API (/api/) against the in-process server: keys and scopes, publishing,
server-side operations, reads, disconnecting a user, backpressure, limits, the
OpenAPI document, and the same operations from Python (the embedding API).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from collabtrio.client import Client, Disconnected
from collabtrio.errors import CollabError, ErrorCode
from collabtrio.http.api import ROUTES
from collabtrio.rooms.commands import ServerCall, SetRole
from collabtrio.storage.memory import MemoryStore
from collabtrio.testing import TestServer, open_test_server

SECRET = "s3cret-" + "a" * 25
READER = "r3ader-" + "b" * 25
PUBLISHER = "publ1sh-" + "c" * 24
ADMIN = "adm1n-" + "d" * 26
KEYS = (f"svc:{SECRET},reader:{READER}:read,publisher:{PUBLISHER}:publish,"
        f"ops:{ADMIN}:admin")


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def api_server(**overrides: Any) -> Any:
    return open_test_server(api_keys=KEYS, **overrides)


async def quiet(client: Client, name: str, seconds: float = 0.5) -> None:
    """Nothing called ``name`` reaches ``client`` within ``seconds``."""
    with trio.move_on_after(seconds):
        event = await client.next_event(name, timeout=seconds * 2)
        pytest.fail(f"unexpected {name}: {event!r}")


def add_op(op_id: str, entity: str = "s1", **data: Any) -> dict[str, Any]:
    return {"operationId": op_id, "op": "add", "collection": "shapes", "id": entity,
            "data": data or {"x": 1}}


# -- keys and scopes ------------------------------------------------------------------------

async def test_with_no_key_configured_every_api_route_is_closed(autojump_clock: Any) -> None:
    async with open_test_server() as server:
        for method, path in [("GET", "/api/stats"), ("GET", "/api/openapi.json"),
                             ("POST", "/api/rooms/doc:1/publish"), ("GET", "/api/nowhere")]:
            body = {"event": "x"} if method == "POST" else None
            answer = await server.request(method, path, key=SECRET, json=body)
            assert answer.status == 401, (method, path)
            error = answer.json()["error"]
            assert error["code"] == "AUTH_REQUIRED"
            assert "--api-key" in error["message"]
            assert "COLLABTRIO_API_KEYS" in error["message"]
            assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_a_request_needs_a_key_in_use(autojump_clock: Any) -> None:
    async with api_server() as server:
        missing = await server.request("GET", "/api/stats")
        assert missing.status == 401
        assert missing.json()["error"]["code"] == "AUTH_REQUIRED"
        basic = await server.request("GET", "/api/stats",
                                     headers={"authorization": f"Basic {SECRET}"})
        assert basic.status == 401
        wrong = []
        for key in ["x" * len(SECRET),            # same length
                    SECRET[:-1],                   # a prefix of a real key
                    SECRET + "a",                  # a real key and more
                    SECRET.upper(),
                    "svc",                         # a key's name is not its secret
                    f"svc:{SECRET}"]:
            answer = await server.request("GET", "/api/stats", key=key)
            assert answer.status == 401, key
            wrong.append(answer.json())
        # every wrong key gets the same answer: nothing tells which names exist
        assert all(body == wrong[0] for body in wrong)
        assert wrong[0]["error"]["code"] == "INVALID_TOKEN"
        assert "svc" not in wrong[0]["error"]["message"]
        ok = await server.request("GET", "/api/stats", key=SECRET)
        assert ok.status == 200
        # the scheme is case-insensitive, as HTTP says
        lower = await server.request("GET", "/api/stats",
                                     headers={"authorization": f"bearer {SECRET}"})
        assert lower.status == 200


async def test_scopes(autojump_clock: Any) -> None:
    async with api_server() as server:
        publish = {"event": "e", "data": 1}
        cases = [
            (READER, "GET", "/api/stats", None, 200),
            (READER, "GET", "/api/rooms", None, 200),
            (READER, "GET", "/api/rooms/doc:1", None, 200),
            (READER, "POST", "/api/rooms/doc:1/publish", publish, 403),
            (READER, "POST", "/api/rooms/doc:1/ops", add_op("o1"), 403),
            (READER, "POST", "/api/users/alice/disconnect", {}, 403),
            (PUBLISHER, "GET", "/api/stats", None, 403),
            (PUBLISHER, "POST", "/api/rooms/doc:1/publish", publish, 200),
            (PUBLISHER, "POST", "/api/publish", {"rooms": ["doc:1"], **publish}, 200),
            (PUBLISHER, "POST", "/api/rooms/doc:1/ops", add_op("o1"), 200),
            (PUBLISHER, "POST", "/api/rooms/doc:1/ops",
             {"operationId": "r1", "op": "replace", "collection": "*", "id": "*",
              "data": {}}, 403),
            (PUBLISHER, "POST", "/api/users/alice/disconnect", {}, 403),
            (ADMIN, "GET", "/api/stats", None, 200),
            (ADMIN, "POST", "/api/rooms/doc:1/publish", publish, 200),
            (ADMIN, "POST", "/api/rooms/doc:1/ops",
             {"operationId": "r1", "op": "replace", "collection": "*", "id": "*",
              "data": {}}, 200),
            (ADMIN, "POST", "/api/users/alice/disconnect", {}, 200),
            (READER, "GET", "/api/openapi.json", None, 200),
            (PUBLISHER, "GET", "/api/openapi.json", None, 200),
        ]
        for key, method, path, body, status in cases:
            answer = await server.request(method, path, key=key, json=body)
            assert answer.status == status, (key[:6], method, path, answer.body)
            if status == 403:
                assert answer.json()["error"]["code"] == "FORBIDDEN"


# -- publishing -----------------------------------------------------------------------------

async def test_publish_reaches_the_members_and_nobody_else(autojump_clock: Any) -> None:
    async with api_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob, \
                server.client("carol") as carol:
            await alice.join("doc:1")
            await bob.join("doc:1")
            await carol.join("doc:2")
            data = {"progress": 0.5, "items": [1, "two", None], "nested": {"ok": True}}
            answer = await server.request("POST", "/api/rooms/doc:1/publish", key=PUBLISHER,
                                          json={"event": "export", "data": data})
            assert answer.status == 200
            assert answer.json() == {"ok": True, "room": "doc:1", "open": True, "delivered": 2}
            expected = {"room": "doc:1", "event": "export", "data": data, "userId": None,
                        "userName": None, "socketId": None}
            assert await alice.next_event("broadcast") == expected
            assert await bob.next_event("broadcast") == expected
            await quiet(carol, "broadcast")


async def test_publish_to_a_room_that_is_not_open_reaches_nobody(autojump_clock: Any) -> None:
    async with api_server() as server:
        answer = await server.request("POST", "/api/rooms/nobody-here/publish", key=SECRET,
                                      json={"event": "e"})
        assert answer.status == 200
        assert answer.json() == {"ok": True, "room": "nobody-here", "open": False,
                                 "delivered": 0}
        assert server.server.registry.get("nobody-here") is None  # not opened


async def test_publish_to_several_rooms_and_a_user(autojump_clock: Any) -> None:
    async with api_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob, \
                server.client("dave") as dave1, server.client("dave") as dave2, \
                server.client("erin") as erin:
            await alice.join("doc:1")
            await bob.join("doc:2")
            await erin.join("doc:3")
            answer = await server.request("POST", "/api/publish", key=PUBLISHER, json={
                "rooms": ["doc:1", "doc:2", "closed", "user:dave", "doc:1"],
                "event": "notice", "data": {"n": 1}})
            assert answer.status == 200, answer.body
            assert answer.json() == {"ok": True, "delivered": 4, "rooms": [
                {"room": "doc:1", "open": True, "delivered": 1},
                {"room": "doc:2", "open": True, "delivered": 1},
                {"room": "closed", "open": False, "delivered": 0},
                {"room": "user:dave", "open": True, "delivered": 2},
            ]}
            for client, room in [(alice, "doc:1"), (bob, "doc:2"), (dave1, "user:dave"),
                                 (dave2, "user:dave")]:
                event = await client.next_event("broadcast")
                assert event == {"room": room, "event": "notice", "data": {"n": 1},
                                 "userId": None, "userName": None, "socketId": None}
            await quiet(alice, "broadcast")  # a room named twice is published to once
            await quiet(erin, "broadcast")


async def test_publish_to_a_user_by_its_own_route(autojump_clock: Any) -> None:
    async with api_server() as server:
        async with server.client("dave@example.com") as dave, server.client("erin") as erin:
            answer = await server.request(
                "POST", "/api/rooms/user:dave%40example.com/publish", key=PUBLISHER,
                json={"event": "ping", "data": None})
            assert answer.json() == {"ok": True, "room": "user:dave@example.com",
                                     "open": True, "delivered": 1}
            event = await dave.next_event("broadcast")
            assert event["room"] == "user:dave@example.com"
            assert event["event"] == "ping"
            await quiet(erin, "broadcast")
            nobody = await server.request("POST", "/api/rooms/user:zed/publish",
                                          key=PUBLISHER, json={"event": "ping"})
            assert nobody.json() == {"ok": True, "room": "user:zed", "open": False,
                                     "delivered": 0}


async def test_publish_is_validated(autojump_clock: Any) -> None:
    async with api_server(api_max_rooms=3) as server:
        cases = [
            ("/api/rooms/doc:1/publish", {"data": 1}, "VALIDATION"),
            ("/api/rooms/doc:1/publish", {"event": ""}, "VALIDATION"),
            ("/api/rooms/doc:1/publish", {"event": 5}, "VALIDATION"),
            ("/api/rooms/bad%20room/publish", {"event": "e"}, "INVALID_ROOM"),
            ("/api/publish", {"rooms": [], "event": "e"}, "VALIDATION"),
            ("/api/publish", {"rooms": ["a", "b", "c", "d"], "event": "e"}, "VALIDATION"),
            ("/api/publish", {"rooms": ["a", "no/slash"], "event": "e"}, "INVALID_ROOM"),
        ]
        for path, body, code in cases:
            answer = await server.request("POST", path, key=PUBLISHER, json=body)
            assert answer.status == 400, (path, body)
            assert answer.json()["error"]["code"] == code, (path, body, answer.body)
        missing = await server.request("POST", "/api/rooms/doc:1/publish", key=PUBLISHER,
                                       json={"data": 1})
        assert missing.json()["error"]["details"][0]["loc"] == ["event"]
        for raw in [b"{not json", b"[1, 2]", b'{"event": "e", "data": NaN}',
                    b'{"event": "\\ud800"}']:
            answer = await server.request("POST", "/api/rooms/doc:1/publish", key=PUBLISHER,
                                          body=raw)
            assert answer.status == 400, raw
            assert answer.json()["error"]["code"] == "VALIDATION"


# -- server-side operations -------------------------------------------------------------------

async def test_an_op_is_validated_with_details(autojump_clock: Any) -> None:
    async with api_server() as server:
        answer = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                      json={"op": "add", "collection": "c", "id": "1"})
        assert answer.status == 400
        error = answer.json()["error"]
        assert error["code"] == "VALIDATION"
        assert error["retryable"] is False
        assert {"loc": ["operationId"], "msg": "Field required",
                "type": "missing"} in error["details"]
        bad_kind = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                        json={**add_op("o1"), "op": "explode"})
        assert bad_kind.status == 400
        assert bad_kind.json()["error"]["details"][0]["loc"] == ["op"]
        deep: Any = 1
        for _ in range(70):
            deep = [deep]
        too_deep = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                        json=add_op("o2", v=deep))
        assert too_deep.status == 400
        assert too_deep.json()["error"]["code"] == "VALIDATION"
        nul = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                   json=add_op("o3", v="a\x00b"))
        assert nul.status == 400
        assert nul.json()["error"]["code"] == "VALIDATION"
        bad_room = await server.request("POST", "/api/rooms/a%20b/ops", key=PUBLISHER,
                                        json=add_op("o4"))
        assert bad_room.status == 400
        assert bad_room.json()["error"]["code"] == "INVALID_ROOM"
        # nothing was applied
        state = await server.request("GET", "/api/rooms/doc:1", key=READER)
        assert state.json()["seq"] == 0
        assert state.json()["state"] == {}


async def test_an_op_is_broadcast_persisted_and_idempotent(autojump_clock: Any) -> None:
    store = MemoryStore()
    async with api_server(store=store) as server:
        async with server.client("alice") as alice:
            await alice.join("doc:1")
            first = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                         json=add_op("o1", x=10))
            assert first.status == 200, first.body
            result = first.json()
            assert result["ok"] is True
            assert result["seq"] == 1
            assert result["operationId"] == "o1"
            assert isinstance(result["serverTimestamp"], int)
            event = await alice.next_event("op")
            assert event["seq"] == 1
            assert event["op"] == "add"
            assert event["data"] == {"x": 10}
            assert event["userId"] == "publisher"
            assert event["userName"] == "publisher"
            assert event["socketId"] == "server"
            # the same operationId again: the first answer, applied once (an add would
            # otherwise be DUPLICATE)
            again = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                         json=add_op("o1", x=99))
            assert again.status == 200
            assert again.json() == result
            await quiet(alice, "op")
            # another key's ids never collide with this one's
            other = await server.request("POST", "/api/rooms/doc:1/ops", key=SECRET,
                                         json=add_op("o1", entity="s2"))
            assert other.json()["seq"] == 2
            update = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER, json={
                "operationId": "o2", "op": "update", "collection": "shapes", "id": "s1",
                "data": {"y": 5}})
            assert update.json()["seq"] == 3
            missing = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER, json={
                "operationId": "o3", "op": "remove", "collection": "shapes", "id": "zz"})
            assert missing.status == 404
            assert missing.json()["error"]["code"] == "NOT_FOUND"
            duplicate = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                             json=add_op("o4"))
            assert duplicate.status == 409
            assert duplicate.json()["error"]["code"] == "DUPLICATE"
    # a restart on the same storage: the document, and the operation's first answer
    async with api_server(store=store) as server:
        state = await server.request("GET", "/api/rooms/doc:1", key=READER)
        assert state.json()["state"] == {"shapes": {"s1": {"x": 10, "y": 5},
                                                    "s2": {"x": 1}}}
        assert state.json()["seq"] == 3
        assert state.json()["open"] is False
        again = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                     json=add_op("o1", x=99))
        assert again.json() == result
        state = await server.request("GET", "/api/rooms/doc:1", key=READER)
        assert state.json()["seq"] == 3


async def test_an_op_on_unreachable_storage_is_retryable(autojump_clock: Any) -> None:
    store = MemoryStore()
    async with api_server(store=store) as server:
        ok = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                  json=add_op("o1"))
        assert ok.status == 200
        store.fail_next(1)
        failed = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                      json=add_op("o2", entity="s2"))
        assert failed.status == 503
        assert failed.json()["error"]["code"] == "STORAGE_UNAVAILABLE"
        assert failed.json()["error"]["retryable"] is True
        assert failed.headers["retry-after"] == "1"
        retried = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                       json=add_op("o2", entity="s2"))
        assert retried.status == 200
        assert retried.json()["seq"] == 2


class GatedStore(MemoryStore):
    """A memory store whose commits wait for ``gate`` while ``hold`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.gate = trio.Event()

    async def commit(self, changes: Any) -> None:
        if self.hold:
            await self.gate.wait()
        await super().commit(changes)


async def test_a_full_room_answers_503_with_retry_after(autojump_clock: Any) -> None:
    store = GatedStore()
    async with api_server(store=store, room_inbox_size=1, api_retry_after_s=3) as server:
        first = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                     json=add_op("o0"))
        assert first.status == 200  # the room is open and loaded
        store.hold = True
        answers: dict[str, Any] = {}

        async def send(op_id: str) -> None:
            answers[op_id] = await server.request("POST", "/api/rooms/doc:1/ops",
                                                  key=PUBLISHER,
                                                  json=add_op(op_id, entity=op_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "o1")  # its commit waits at the gate
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, "o2")  # queued behind it: the queue is full
            await trio.testing.wait_all_tasks_blocked()
            await send("o3")
            refused = answers["o3"]
            assert refused.status == 503
            assert refused.headers["retry-after"] == "3"
            error = refused.json()["error"]
            assert error["code"] == "RATE_LIMITED"
            assert error["retryable"] is True
            # a publish to the same room passes: its mailbox is not full
            published = await server.request("POST", "/api/rooms/doc:1/publish",
                                             key=PUBLISHER, json={"event": "e"})
            assert published.status == 200
            store.gate.set()
        assert answers["o1"].status == 200
        assert answers["o2"].status == 200
        assert {answers["o1"].json()["seq"], answers["o2"].json()["seq"]} == {2, 3}
        after = await server.request("POST", "/api/rooms/doc:1/ops", key=PUBLISHER,
                                     json=add_op("o3", entity="o3"))
        assert after.status == 200
        assert after.json()["seq"] == 4


async def test_a_full_mailbox_refuses_a_publish_as_a_whole(autojump_clock: Any) -> None:
    async with api_server(room_inbox_size=2) as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc:1")
            await bob.join("doc:2")
            room = server.server.registry.get("doc:2")
            assert room is not None
            # fill doc:2's mailbox with no-ops, with no checkpoint before the publish
            for _ in range(2):
                room.mailbox.put_nowait(SetRole(ServerCall(), None, "write"))
            with pytest.raises(CollabError) as refused:
                await server.server.publish(["doc:1", "doc:2"], "e", 1)
            assert refused.value.code is ErrorCode.RATE_LIMITED
            assert refused.value.retryable
            await quiet(alice, "broadcast")  # all or nothing: doc:1 got nothing either
            result = await server.server.publish(["doc:1", "doc:2"], "e", 2)
            assert result["delivered"] == 2
            assert (await alice.next_event("broadcast"))["data"] == 2


# -- reads ------------------------------------------------------------------------------------

async def test_stats(autojump_clock: Any) -> None:
    async with api_server() as server:
        async with server.client("alice") as alice, server.client("alice"), \
                server.client("bob") as bob:
            await alice.join("doc:1")
            await alice.join("doc:2")
            await bob.join("doc:1")
            await trio.sleep(7)
            answer = await server.request("GET", "/api/stats", key=READER)
            assert answer.status == 200
            stats = answer.json()
            assert stats["connections"] == {"socketio": 3, "websocket": 3, "polling": 0,
                                            "handshaking": 0, "yWebsocket": 0,
                                            "acceptedTotal": 3}
            assert stats["rooms"] == {"open": 2, "members": 3, "openedTotal": 2}
            assert stats["users"] == 2
            assert stats["uptimeS"] >= 7
            assert stats["version"]
            assert stats["storage"]["backend"] == "memory"
            assert stats["storage"]["reachable"] is True
            assert stats["storage"]["transactions"] >= 0
            assert server.server.stats()["rooms"] == stats["rooms"]


async def test_rooms_are_listed_in_pages(autojump_clock: Any) -> None:
    async with api_server(api_max_rooms=3) as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            for room in ["b", "a", "e", "c", "d", "x:1"]:
                await alice.join(room)
            await bob.join("c")
            seen: list[dict[str, Any]] = []
            cursor = None
            pages = 0
            while True:
                path = "/api/rooms?limit=2" + (f"&cursor={cursor}" if cursor else "")
                page = (await server.request("GET", path, key=READER)).json()
                seen += page["rooms"]
                pages += 1
                cursor = page["nextCursor"]
                if cursor is None:
                    break
            assert pages == 3
            assert [r["room"] for r in seen] == ["a", "b", "c", "d", "e", "x:1"]
            c = next(r for r in seen if r["room"] == "c")
            assert c["connections"] == 2
            assert c["uniqueUsers"] == 2
            assert c["seq"] == 0
            default = (await server.request("GET", "/api/rooms", key=READER)).json()
            assert len(default["rooms"]) == 3
            assert default["nextCursor"] == "c"
            prefixed = (await server.request("GET", "/api/rooms?prefix=x%3A",
                                             key=READER)).json()
            assert [r["room"] for r in prefixed["rooms"]] == ["x:1"]
            for bad in ["limit=0", "limit=4", "limit=many"]:
                answer = await server.request("GET", f"/api/rooms?{bad}", key=READER)
                assert answer.status == 400, bad
                assert answer.json()["error"]["code"] == "VALIDATION"


async def test_room_state_open_and_stored(autojump_clock: Any) -> None:
    store = MemoryStore()
    async with api_server(store=store, room_idle_s=5) as server:
        async with server.client("alice") as alice:
            join = await alice.join("doc:1")
            await alice.call("op", {"room": "doc:1", **add_op("o1", x=3)})
            answer = await server.request("GET", "/api/rooms/doc:1", key=READER)
            state = answer.json()
            assert state["open"] is True
            assert state["seq"] == 1
            assert state["epoch"] == join["epoch"]
            assert state["state"] == {"shapes": {"s1": {"x": 3}}}
            assert state["connections"] == 1
            assert state["uniqueUsers"] == 1
            assert state["members"][0]["userId"] == "alice"
            assert state["members"][0]["socketId"] == alice.sid
        await trio.sleep(6)  # the room closes when idle
        assert server.server.registry.get("doc:1") is None
        stored = (await server.request("GET", "/api/rooms/doc:1", key=READER)).json()
        assert stored == {"room": "doc:1", "open": False, "seq": 1, "epoch": join["epoch"],
                          "state": {"shapes": {"s1": {"x": 3}}}, "members": [],
                          "uniqueUsers": 0, "connections": 0}
        assert server.server.registry.get("doc:1") is None  # read without opening it
        empty = (await server.request("GET", "/api/rooms/never-used", key=READER)).json()
        assert empty["seq"] == 0
        assert empty["state"] == {}
        assert empty["open"] is False
        bad = await server.request("GET", "/api/rooms/bad%20id", key=READER)
        assert bad.status == 400
        assert bad.json()["error"]["code"] == "INVALID_ROOM"


# -- disconnecting a user ----------------------------------------------------------------------

async def test_disconnect_a_user(autojump_clock: Any) -> None:
    async with api_server() as server:
        async with server.client("alice") as a1, server.client("alice") as a2, \
                server.client("bob") as bob:
            await a1.join("doc:1")
            await bob.join("doc:1")
            answer = await server.request("POST", "/api/users/alice/disconnect", key=ADMIN,
                                          json={"reason": "account suspended"})
            assert answer.status == 200
            assert answer.json() == {"ok": True, "userId": "alice", "disconnected": 2,
                                     "socketio": 2, "yWebsocket": 0}
            for client in (a1, a2):
                assert await client.next_event("disconnect-reason") == {
                    "reason": "account suspended"}
                with pytest.raises(Disconnected):
                    await client.next_event("never")
                assert client.disconnect_reason == "io server disconnect"
            presence = await bob.next_event("presence")
            assert [u["userId"] for u in presence["users"]] == ["bob"]
            assert (await bob.call("broadcast", {"room": "doc:1", "event": "e"}))["ok"]
            again = await server.request("POST", "/api/users/alice/disconnect", key=ADMIN)
            assert again.json()["disconnected"] == 0  # an empty body: the default reason


# -- routes, methods, limits, the document -------------------------------------------------------

async def test_unknown_routes_and_methods(autojump_clock: Any) -> None:
    async with api_server() as server:
        for path in ["/api/nothing", "/api/rooms/doc:1/nothing", "/api/rooms/a/b/c",
                     "/api/users/alice", "/api/"]:
            answer = await server.request("GET", path, key=SECRET)
            assert answer.status == 404, path
            assert answer.json()["error"]["code"] == "NOT_FOUND"
        wrong = await server.request("DELETE", "/api/stats", key=SECRET)
        assert wrong.status == 405
        assert wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
        assert wrong.headers["allow"] == "GET, HEAD"
        post = await server.request("GET", "/api/rooms/doc:1/publish", key=SECRET)
        assert post.status == 405
        assert post.headers["allow"] == "POST"
        head = await server.request("HEAD", "/api/stats", key=SECRET)
        assert head.status == 200
        assert head.body == b""
        assert (await server.request("GET", "/apifoo", key=SECRET)).status == 404


async def test_a_body_past_the_limit_is_413(autojump_clock: Any) -> None:
    async with api_server(api_max_body_bytes=200, max_payload=1000) as server:
        small = await server.request("POST", "/api/rooms/doc:1/publish", key=PUBLISHER,
                                     json={"event": "e", "data": "x" * 100})
        assert small.status == 200
        big = await server.request("POST", "/api/rooms/doc:1/publish", key=PUBLISHER,
                                   json={"event": "e", "data": "x" * 300})
        assert big.status == 413
        assert big.json()["error"]["code"] == "TOO_LARGE"
        # past the front door's own limit (max_payload) the answer is its plain 413
        huge = await server.request("POST", "/api/rooms/doc:1/publish", key=PUBLISHER,
                                    json={"event": "e", "data": "x" * 2000})
        assert huge.status == 413


async def test_the_openapi_document_lists_every_route(autojump_clock: Any) -> None:
    async with api_server() as server:
        answer = await server.request("GET", "/api/openapi.json", key=READER)
        assert answer.status == 200
        doc = json.loads(answer.body)
        assert doc["openapi"] == "3.1.0"
        listed = {(method.upper(), path) for path, item in doc["paths"].items()
                  for method in item}
        assert listed == {(route.method, route.path) for route in ROUTES}
        assert len(listed) == 8
        schemas = doc["components"]["schemas"]

        def refs(node: Any) -> list[str]:
            if isinstance(node, dict):
                found = [node["$ref"]] if "$ref" in node else []
                return found + [r for value in node.values() for r in refs(value)]
            if isinstance(node, list):
                return [r for value in node for r in refs(value)]
            return []

        for ref in refs(doc):
            assert ref.startswith("#/components/schemas/")
            assert ref.rsplit("/", 1)[1] in schemas, ref
        ops = doc["paths"]["/api/rooms/{room}/ops"]["post"]
        body_ref = ops["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = schemas[body_ref.rsplit("/", 1)[1]]
        assert set(body["required"]) == {"operationId", "op", "collection", "id"}
        assert ops["parameters"][0]["name"] == "room"
        assert ops["x-collabtrio-scope"] == "publish"
        rooms = doc["paths"]["/api/rooms"]["get"]
        assert {p["name"] for p in rooms["parameters"]} == {"limit", "cursor", "prefix"}
        assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


# -- the same from Python ----------------------------------------------------------------------

async def test_the_embedding_api(autojump_clock: Any) -> None:
    async with open_test_server() as test:  # no API key: Python needs none
        server = test.server
        async with test.client("alice") as alice, test.client("bob") as bob:
            await alice.join("doc:1")
            assert await server.publish("doc:1", "hello", {"a": 1}) == {
                "ok": True, "room": "doc:1", "open": True, "delivered": 1}
            assert (await alice.next_event("broadcast"))["data"] == {"a": 1}
            many = await server.publish(["doc:1", "user:bob", "closed"], "hi", b"\x00\x01")
            assert many["delivered"] == 2
            assert (await bob.next_event("broadcast"))["data"] == b"\x00\x01"
            result = await server.apply_op("doc:1", operation_id="p1", op="add",
                                           collection="c", id="1", data={"v": 1},
                                           user_id="billing")
            assert result["seq"] == 1
            event = await alice.next_event("op")
            assert event["userId"] == "billing"
            assert event["userName"] == "billing"
            assert await server.apply_op("doc:1", operation_id="p1", op="add",
                                         collection="c", id="1", user_id="billing") == result
            with pytest.raises(CollabError) as invalid:
                await server.apply_op("doc:1", operation_id="", op="add", collection="c",
                                      id="2")
            assert invalid.value.code is ErrorCode.VALIDATION
            assert invalid.value.details
            state = await server.room_state("doc:1")
            assert state["seq"] == 1
            assert state["state"] == {"c": {"1": {"v": 1}}}
            state["state"]["c"]["1"]["v"] = 2  # a copy: the room's document is untouched
            assert (await server.room_state("doc:1"))["state"] == {"c": {"1": {"v": 1}}}
            stats = server.stats()
            assert stats["connections"]["socketio"] == 2
            assert stats["rooms"]["open"] == 1
            assert server.list_rooms()["rooms"][0]["room"] == "doc:1"
            with pytest.raises(CollabError) as too_big:
                await server.publish("doc:1", "e", "x" * (test.config.max_event_bytes + 1))
            assert too_big.value.code is ErrorCode.TOO_LARGE
            with pytest.raises(CollabError):
                await server.publish("doc:1", "e", float("nan"))
            assert server.disconnect_user("bob", "bye")["disconnected"] == 1
            assert (await bob.next_event("disconnect-reason")) == {"reason": "bye"}
        # the HTTP API stays closed without a key
        assert (await test.request("GET", "/api/stats", key="anything")).status == 401


async def test_publish_to_a_room_closing_reaches_nobody(autojump_clock: Any) -> None:
    async with open_test_server(room_idle_s=1) as test:
        async with test.client("alice") as alice:
            await alice.join("doc:1")
            await alice.call("leave", {"room": "doc:1"})
        await trio.sleep(2)
        result = await test.server.publish("doc:1", "e", 1)
        assert result == {"ok": True, "room": "doc:1", "open": False, "delivered": 0}


async def test_harness_request_helper(autojump_clock: Any) -> None:
    async with api_server() as server:
        assert isinstance(server, TestServer)
        health = await server.request("GET", "/healthz")
        assert health.status == 200
        assert health.json() == {"status": "ok"}
