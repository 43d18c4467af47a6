"""python-socketio's AsyncClient against a real ``collabtrio serve`` process.

PROTOCOL sections 1-4, 6 and 7 as a stock Python client sees them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import socketio

from tests.conftest import ServerProcess

from .conftest import (
    ConnectRefused,
    MemberProcess,
    clients,
    gather_with_timeout,
    new_client,
    run,
)

pytestmark = pytest.mark.interop

PRESENCE_USER_KEYS = {
    "socketId", "userId", "userName", "avatarUrl", "role", "joinedAt", "lastActivity",
    "cursor", "selection",
}


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _socket_ids(presence: dict[str, Any]) -> set[str]:
    return {u["socketId"] for u in presence["users"]}


def _error(ack: Any) -> dict[str, Any]:
    assert isinstance(ack, dict), ack
    assert ack.get("ok") is False, ack
    err = ack["error"]
    assert isinstance(err["message"], str), err
    assert err["message"], err
    assert isinstance(err["retryable"], bool), err
    return err  # type: ignore[no-any-return]


# -- connecting and authentication --------------------------------------------------------


def test_token_connects_and_sid_is_the_socket_id(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            assert alice.sio.connected
            assert isinstance(alice.sid, str)
            assert alice.sid
            ack = await alice.join("doc:sid")
            (me,) = ack["presence"]["users"]
            assert me["socketId"] == alice.sid
            assert me["userId"] == "alice"
            assert me["userName"] == "Alice"

    run(main())


def test_engineio_handshake_values(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            # python-engineio keeps the open packet's values (in seconds)
            assert alice.sio.eio.ping_interval == 25
            assert alice.sio.eio.ping_timeout == 20
            assert alice.sio.eio.transport() == "websocket"

    run(main())


def test_client_answers_pings_and_stays_connected(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--ping-interval-ms", "100", "--ping-timeout-ms", "1000")

    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            await asyncio.sleep(1.2)  # about ten ping/pong cycles
            assert not alice.disconnects
            assert (await alice.join("doc:ping"))["ok"] is True

    run(main())


async def _refused(server: ServerProcess, token: str | None = None, **kwargs: Any) -> Any:
    async with new_client(server) as client:
        with pytest.raises(ConnectRefused) as info:
            await client.connect(token, **kwargs)
        assert not client.sio.connected
        data = info.value.data
        assert isinstance(data, dict), data
        assert isinstance(data["message"], str)
        assert data["message"]
        assert isinstance(data["data"]["message"], str)
        assert data["data"]["message"]
        return data


def test_missing_token_is_auth_required(server: ServerProcess) -> None:
    async def main() -> None:
        data = await _refused(server)
        assert data["data"]["code"] == "AUTH_REQUIRED"
        data = await _refused(server, auth={"rooms": ["doc:1"]})
        assert data["data"]["code"] == "AUTH_REQUIRED"

    run(main())


def _bad_signature(server: ServerProcess) -> Any:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600},
                      "another-secret-that-is-long-enough-0123456789", algorithm="HS256")


def _garbage(server: ServerProcess) -> Any:
    return "not-a-jwt"


def _alg_none(server: ServerProcess) -> Any:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'alice'})}."


def _no_sub(server: ServerProcess) -> Any:
    return jwt.encode({"name": "Alice", "exp": int(time.time()) + 3600}, server.secret,
                      algorithm="HS256")


def _not_a_string(server: ServerProcess) -> Any:
    return 12345


def _truncated_signature(server: ServerProcess) -> Any:
    return server.token("alice")[:-4]


@pytest.mark.parametrize(
    "make_token",
    [_bad_signature, _garbage, _alg_none, _no_sub, _not_a_string, _truncated_signature],
)
def test_invalid_token(server: ServerProcess, make_token: Callable[[ServerProcess], Any]) -> None:
    async def main() -> None:
        data = await _refused(server, auth={"token": make_token(server)})
        assert data["data"]["code"] == "INVALID_TOKEN"

    run(main())


def test_expired_token(server: ServerProcess) -> None:
    token = server.token("alice", ttl_s=60, now=time.time() - 3600)

    async def main() -> None:
        data = await _refused(server, token)
        assert data["data"]["code"] == "TOKEN_EXPIRED"

    run(main())


@pytest.mark.parametrize("where", ["auth", "header", "query"])
def test_token_sources(server: ServerProcess, where: str) -> None:
    token = server.token("carol", name="Carol")
    kwargs: dict[str, Any] = {
        "auth": {"auth": {"token": token}},
        "header": {"headers": {"Authorization": f"Bearer {token}"}},
        "query": {"query": {"token": token}},
    }[where]

    async def main() -> None:
        async with new_client(server) as client:
            await client.connect(**kwargs)
            ack = await client.join("doc:sources")
            (me,) = ack["presence"]["users"]
            assert (me["userId"], me["userName"]) == ("carol", "Carol")

    run(main())


def test_token_source_order(server: ServerProcess) -> None:
    """auth.token first, then the Authorization header, then ?token= (PROTOCOL 2)."""
    good = server.token("alice")

    async def main() -> None:
        async with new_client(server) as client:  # a good auth.token wins over a bad header
            await client.connect(good, headers={"Authorization": "Bearer garbage"},
                                 query={"token": "garbage"})
        data = await _refused(server, "garbage", headers={"Authorization": f"Bearer {good}"})
        assert data["data"]["code"] == "INVALID_TOKEN"  # a bad auth.token is not skipped
        data = await _refused(server, headers={"Authorization": "Bearer garbage"},
                              query={"token": good})
        assert data["data"]["code"] == "INVALID_TOKEN"

    run(main())


def test_unknown_namespace_fails(server: ServerProcess) -> None:
    async def main() -> None:
        async with new_client(server) as client:
            with pytest.raises((ConnectRefused, socketio.exceptions.ConnectionError)):
                await client.connect(server.token("alice"), namespaces=["/nope"])
            assert not client.sio.connected
        async with clients(server, "alice") as (alice,):  # the server is fine
            assert (await alice.join("doc:ns"))["ok"] is True

    run(main())


# -- join, presence -----------------------------------------------------------------------


def test_join_ack_shape(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            ack = await alice.call("join", {"room": "doc:shape"})
            assert ack["ok"] is True
            assert ack["room"] == "doc:shape"
            assert ack["role"] == "write"  # the default role
            assert ack["seq"] == 0  # a new room
            assert isinstance(ack["state"], dict)
            assert isinstance(ack["chat"], list)
            assert ack["recovered"] is False
            presence = ack["presence"]
            assert presence["room"] == "doc:shape"
            assert presence["uniqueUsers"] == 1
            assert presence["connections"] == 1
            (me,) = presence["users"]
            assert set(me) >= PRESENCE_USER_KEYS
            assert me["role"] == "write"
            assert me["cursor"] is None
            assert me["selection"] is None
            assert isinstance(me["joinedAt"], int)
            assert isinstance(me["lastActivity"], int)
            # joining again is answered again, and does not add a second member
            again = await alice.call("join", {"room": "doc:shape"})
            assert again["ok"] is True
            assert again["presence"]["connections"] == 1

    run(main())


def test_presence_on_join_leave_and_abrupt_disconnect(server: ServerProcess) -> None:
    room = "doc:presence"

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            await alice.join(room)
            mark = len(alice.events)
            ack = await bob.join(room)
            assert _socket_ids(ack["presence"]) == {alice.sid, bob.sid}
            presence = await alice.wait_for(
                "presence", lambda p: p["room"] == room and p["connections"] == 2, start=mark)
            assert presence["uniqueUsers"] == 2
            assert _socket_ids(presence) == {alice.sid, bob.sid}
            users = {u["userId"]: u for u in presence["users"]}
            assert users["bob"]["userName"] == "Bob"

            mark = len(alice.events)
            assert (await bob.call("leave", {"room": room}))["ok"] is True
            presence = await alice.wait_for(
                "presence", lambda p: p["room"] == room and p["connections"] == 1, start=mark)
            assert _socket_ids(presence) == {alice.sid}
            # bob is not in the room any more
            err = _error(await bob.call("cursor", {"room": room, "cursor": 1}))
            assert err["code"] == "NOT_JOINED"

            # a member in another process, killed: no goodbye, and no ghost either
            member = MemberProcess(server, "dave", room)
            try:
                mark = len(alice.events)
                dave_sid = await member.joined()
                await alice.wait_for("presence", lambda p: dave_sid in _socket_ids(p), start=mark)
                mark = len(alice.events)
            finally:
                member.kill()
            presence = await alice.wait_for(
                "presence", lambda p: p["room"] == room and dave_sid not in _socket_ids(p),
                start=mark)
            assert presence["connections"] == 1
            assert _socket_ids(presence) == {alice.sid}

            # a graceful disconnect too
            await bob.join(room)
            mark = len(alice.events)
            bob_sid = bob.sid
            await bob.close()
            presence = await alice.wait_for(
                "presence", lambda p: p["room"] == room and bob_sid not in _socket_ids(p),
                start=mark)
            assert _socket_ids(presence) == {alice.sid}

        async with clients(server, "erin") as (erin,):  # a newcomer sees nobody left behind
            ack = await erin.join(room)
            assert _socket_ids(ack["presence"]) == {erin.sid}
            assert ack["presence"]["uniqueUsers"] == 1

    run(main())


def test_same_user_twice_counts_one_unique_user(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice", "alice") as (a1, a2):
            await a1.join("doc:twice")
            ack = await a2.join("doc:twice")
            assert ack["presence"]["connections"] == 2
            assert ack["presence"]["uniqueUsers"] == 1

    run(main())


# -- relays -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("cursor", {"cursor": {"x": 10, "y": 20}}),
        ("selection", {"selection": {"ids": ["a", "b"]}}),
        ("typing", {"typing": True}),
        ("broadcast", {"event": "progress", "data": {"pct": 42, "note": "héllo ✓"}}),
    ],
)
def test_relay_to_others_never_echoed(
    server: ServerProcess, event: str, payload: dict[str, Any]
) -> None:
    room = f"doc:relay-{event}"

    async def main() -> None:
        async with clients(server, "alice", "bob", "carol") as (alice, bob, carol):
            for c in (alice, bob):
                await c.join(room)
            await carol.join("doc:elsewhere")
            sent = {"room": room, **payload, "extra": "kept"}
            ack = await alice.call(event, sent)
            assert ack == {"ok": True}
            got = await bob.wait_for(event)
            assert got == {**sent, "socketId": alice.sid, "userId": "alice", "userName": "Alice"}
            # the echo would have been queued before alice's ack: none came
            assert alice.named(event) == []
            # bob's round trip proves carol's events (if any) were already sent
            assert (await carol.call("join", {"room": "doc:elsewhere"}))["ok"] is True
            assert carol.named(event) == []

    run(main())


def test_cursor_and_selection_show_in_presence(server: ServerProcess) -> None:
    room = "doc:cursor-presence"

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            await alice.join(room)
            await alice.call("cursor", {"room": room, "cursor": {"x": 1}})
            await alice.call("selection", {"room": room, "selection": ["n1"]})
            ack = await bob.join(room)
            users = {u["userId"]: u for u in ack["presence"]["users"]}
            assert users["alice"]["cursor"] == {"x": 1}
            assert users["alice"]["selection"] == ["n1"]

    run(main())


def test_binary_broadcast_round_trip(server: ServerProcess) -> None:
    room = "doc:binary"
    blob = bytes(range(256)) * 4

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            for c in (alice, bob):
                await c.join(room)
            data = {"update": blob, "parts": [b"\x00", b"second"], "n": 1}
            ack = await alice.call("broadcast", {"room": room, "event": "yjs", "data": data})
            assert ack == {"ok": True}
            got = await bob.wait_for("broadcast")
            assert isinstance(got["data"]["update"], bytes)
            assert got["data"] == data
            assert got["socketId"] == alice.sid

    run(main())


def test_every_ack_answered_once(server: ServerProcess) -> None:
    room = "doc:acks"

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            await alice.join(room)
            await bob.join(room)
            acks = await gather_with_timeout(*(
                alice.call("cursor", {"room": room, "cursor": i}) for i in range(50)
            ))
            assert acks == [{"ok": True}] * 50
            # relayed in order
            await bob.wait_for("cursor", lambda p: p["cursor"] == 49)
            assert [p["cursor"] for p in bob.named("cursor")] == list(range(50))

    run(main())


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("room", ["bad room!", "", "x" * 129, 5, None, "ünïcode", "a/b"])
def test_invalid_room(server: ServerProcess, room: Any) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            err = _error(await alice.call("join", {"room": room}))
            assert err["code"] == "INVALID_ROOM"
            assert err["retryable"] is False

    run(main())


def test_personal_rooms(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            err = _error(await alice.call("join", {"room": "user:bob"}))
            assert err["code"] == "FORBIDDEN"
            ack = await alice.call("join", {"room": "user:alice"})
            assert ack["ok"] is True

    run(main())


def test_event_before_join_is_not_joined(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            for event, extra in [("cursor", {"cursor": 1}), ("selection", {"selection": 1}),
                                 ("typing", {"typing": True}),
                                 ("broadcast", {"event": "e", "data": 1})]:
                err = _error(await alice.call(event, {"room": "doc:nope", **extra}))
                assert err["code"] == "NOT_JOINED", event
            err = _error(await alice.call("leave", {"room": "doc:nope"}))
            assert err["code"] == "NOT_JOINED"

    run(main())


def test_unknown_event(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            err = _error(await alice.call("no-such-event", {"room": "doc:1"}))
            assert err["code"] == "UNKNOWN_EVENT"
            assert (await alice.join("doc:1"))["ok"] is True

    run(main())


def test_validation_errors_carry_details(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            await alice.join("doc:v")
            err = _error(await alice.call("typing", {"room": "doc:v", "typing": "yes"}))
            assert err["code"] == "VALIDATION"
            assert err["retryable"] is False
            assert isinstance(err["details"], list)
            assert err["details"]
            assert err["details"][0]["loc"] == ["typing"]
            assert {"msg", "type"} <= set(err["details"][0])

            err = _error(await alice.call("join", "doc:v"))  # not an object
            assert err["code"] == "VALIDATION"
            assert isinstance(err["details"], list)

            err = _error(await alice.call("broadcast", {"room": "doc:v", "data": 1}))
            assert err["code"] == "VALIDATION"
            assert ["event"] in [d["loc"] for d in err["details"]]

            err = _error(await alice.call("join", {"room": "doc:v", "since": -1}))
            assert err["code"] == "VALIDATION"

    run(main())


def test_unacked_errors_become_operation_error(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            await alice.emit("cursor", {"room": "doc:nope", "cursor": 1})
            got = await alice.wait_for("operation-error")
            assert got["type"] == "NOT_JOINED"
            assert got["event"] == "cursor"
            assert got["retryable"] is False
            assert isinstance(got["message"], str)
            assert got["message"]

            await alice.emit("no-such-event", {})
            got = await alice.wait_for("operation-error", lambda p: p["type"] == "UNKNOWN_EVENT")
            assert got["event"] == "no-such-event"

            await alice.emit("join", {"room": "doc:v"})  # ok and unacked: no answer needed
            await alice.emit("typing", {"room": "doc:v", "typing": "no"})
            got = await alice.wait_for("operation-error", lambda p: p["type"] == "VALIDATION")
            assert got["event"] == "typing"
            assert got["details"]

            assert (await alice.join("doc:v"))["ok"] is True  # still usable

    run(main())


def test_oversize_event_is_too_large_and_connection_stays(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--max-event-bytes", "1000")
    room = "doc:big"

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            for c in (alice, bob):
                await c.join(room)
            err = _error(await alice.call(
                "broadcast", {"room": room, "event": "big", "data": "x" * 2000}))
            assert err["code"] == "TOO_LARGE"
            assert err["retryable"] is False
            # binary attachments count too
            err = _error(await alice.call(
                "broadcast", {"room": room, "event": "big", "data": b"\x01" * 2000}))
            assert err["code"] == "TOO_LARGE"
            # un-acked: an operation-error
            await alice.emit("broadcast", {"room": room, "event": "big", "data": "y" * 2000})
            got = await alice.wait_for("operation-error")
            assert got["type"] == "TOO_LARGE"
            assert got["event"] == "broadcast"
            # nothing was relayed, and the connection still works
            ack = await alice.call("broadcast", {"room": room, "event": "small", "data": "ok"})
            assert ack == {"ok": True}
            got = await bob.wait_for("broadcast")
            assert got["event"] == "small"
            assert [p["event"] for p in bob.named("broadcast")] == ["small"]
            assert not alice.disconnects

    run(main())


def test_rate_limit(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--rate-limit-per-s", "5", "--rate-limit-burst", "5")
    room = "doc:rate"

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            await alice.join(room)
            acks = await gather_with_timeout(*(
                alice.call("cursor", {"room": room, "cursor": i}) for i in range(20)
            ))
            limited = [a for a in acks if not a["ok"]]
            # CONNECT and join took two tokens of the burst of 5
            assert 0 < len(limited) <= 17, acks
            for a in limited:
                assert a["error"]["code"] == "RATE_LIMITED"
                assert a["error"]["retryable"] is True
            assert all(a == {"ok": True} for a in acks if a["ok"])
            # the bucket refills (5/s) and the connection is still usable
            await asyncio.sleep(0.5)
            assert (await alice.call("cursor", {"room": room, "cursor": "later"}))["ok"] is True
            # the limit is per connection: bob was not limited
            assert (await bob.join(room))["ok"] is True

    run(main())


def test_message_past_max_payload_closes_only_that_client(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--max-payload", "20000")
    room = "doc:payload"

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            for c in (alice, bob):
                await c.join(room)
            mark = len(bob.events)
            alice_sid = alice.sid
            await alice.emit("broadcast", {"room": room, "event": "huge", "data": "x" * 50000})
            await alice.wait_disconnect()
            # bob is told alice left, and keeps working
            presence = await bob.wait_for(
                "presence", lambda p: alice_sid not in _socket_ids(p), start=mark)
            assert _socket_ids(presence) == {bob.sid}
            assert not bob.disconnects
            assert (await bob.call("cursor", {"room": room, "cursor": 1}))["ok"] is True
            assert bob.named("broadcast") == []
        async with clients(server, "carol") as (carol,):  # new clients are welcome
            ack = await carol.join(room)
            assert ack["presence"]["connections"] == 1

    run(main())


# -- roles and connect-time rooms ---------------------------------------------------------


def test_token_rooms_claim_sets_the_role(server: ServerProcess) -> None:
    token = server.token("alice", name="Alice",
                         rooms={"doc:*": "read", "doc:mine": "admin", "team:*": "write",
                                "team:ro:*": "read"})

    async def main() -> None:
        async with new_client(server) as alice:
            await alice.connect(token)
            expected = {"doc:other": "read", "doc:mine": "admin", "team:x": "write",
                        "team:ro:1": "read", "misc": "write"}
            for room, role in expected.items():
                ack = await alice.join(room)
                assert ack["role"] == role, room
                (me,) = ack["presence"]["users"]
                assert me["role"] == role
            # read may still send presence and ephemeral broadcasts
            assert (await alice.call("cursor", {"room": "doc:other", "cursor": 1}))["ok"]
            ack = await alice.call("broadcast", {"room": "doc:other", "event": "e", "data": 1})
            assert ack["ok"] is True

    run(main())


def test_connect_time_rooms(server: ServerProcess) -> None:
    token = server.token("alice", name="Alice")

    async def main() -> None:
        async with new_client(server) as alice:
            await alice.connect(auth={"token": token,
                                      "rooms": ["doc:a", "doc:b", "bad room", "user:bob"]})
            joined = {}
            for room in ("doc:a", "doc:b"):
                joined[room] = await alice.wait_for("joined", lambda p, r=room: p["room"] == r)
            for room, payload in joined.items():
                assert payload["room"] == room
                assert payload["ok"] is True
                assert payload["role"] == "write"
                assert _socket_ids(payload["presence"]) == {alice.sid}
                assert payload["recovered"] is False
                assert "seq" in payload
            bad = await alice.wait_for("room-error", lambda p: p["room"] == "bad room")
            assert bad["ok"] is False
            assert bad["error"]["code"] == "INVALID_ROOM"
            forbidden = await alice.wait_for("room-error", lambda p: p["room"] == "user:bob")
            assert forbidden["error"]["code"] == "FORBIDDEN"
            assert alice.sio.connected
            # it is really in doc:a
            assert (await alice.call("cursor", {"room": "doc:a", "cursor": 1}))["ok"] is True

        async with new_client(server) as bob:  # ?room=a&room=b works the same
            await bob.connect(token=server.token("bob"), query={"room": ["doc:a", "doc:q"]})
            for room in ("doc:a", "doc:q"):
                await bob.wait_for("joined", lambda p, r=room: p["room"] == r)
            assert (await bob.call("cursor", {"room": "doc:q", "cursor": 1}))["ok"] is True

    run(main())


def test_anonymous_mode(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--anonymous")

    async def main() -> None:
        async with new_client(server) as anon:
            await anon.connect()
            ack = await anon.join("doc:anon")
            (me,) = ack["presence"]["users"]
            assert me["userId"]
            assert me["role"] == "write"
        # a token that is sent is still checked, and used
        data = await _refused(server, "garbage")
        assert data["data"]["code"] == "INVALID_TOKEN"
        async with new_client(server) as alice:
            await alice.connect(server.token("alice", name="Alice"))
            (me,) = (await alice.join("doc:anon"))["presence"]["users"]
            assert me["userId"] == "alice"

    run(main())


def test_refresh_token(server: ServerProcess) -> None:
    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            fresh = server.token("alice", ttl_s=7200)
            ack = await alice.call("refresh-token", {"token": fresh})
            assert ack["ok"] is True
            err = _error(await alice.call("refresh-token", {"token": server.token("bob")}))
            assert err["code"] == "FORBIDDEN"
            err = _error(await alice.call("refresh-token", {"token": "garbage"}))
            assert err["code"] == "INVALID_TOKEN"

    run(main())


def test_bad_client_does_not_disturb_others(server: ServerProcess) -> None:
    """A burst of bad input from one client: the others' room keeps working."""
    room = "doc:robust"

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            for c in (alice, bob):
                await c.join(room)
            bad: list[tuple[str, Any]] = [
                ("join", None), ("join", []), ("join", {"room": {"x": 1}}),
                ("broadcast", {"room": room, "event": "", "data": None}),
                ("typing", {"room": room}), ("leave", 1), ("refresh-token", {}),
            ]
            for event, payload in bad:
                with_ack = await alice.call(event, payload)
                assert isinstance(with_ack, dict), (event, with_ack)
            ack = await alice.call("broadcast", {"room": room, "event": "still", "data": 1})
            assert ack == {"ok": True}
            assert (await bob.wait_for("broadcast"))["event"] == "still"
            assert not bob.disconnects
            assert not alice.disconnects

    run(main())


def test_too_many_attachments_closes_only_that_client(server: ServerProcess) -> None:
    room = "doc:attach"

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            for c in (alice, bob):
                await c.join(room)
            ten = [bytes([i]) for i in range(10)]
            ack = await alice.call("broadcast", {"room": room, "event": "ten", "data": ten})
            assert ack == {"ok": True}
            assert (await bob.wait_for("broadcast"))["data"] == ten
            await alice.emit("broadcast", {"room": room, "event": "eleven",
                                           "data": [*ten, b"\x0b"]})
            await alice.wait_disconnect()
            assert not bob.disconnects
            assert (await bob.call("cursor", {"room": room, "cursor": 1}))["ok"] is True
            assert [p["event"] for p in bob.named("broadcast")] == ["ten"]

    run(main())


def test_token_expiry_while_connected(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--token-refresh-grace-s", "1")

    async def main() -> None:
        async with new_client(server) as lazy, new_client(server) as keen:
            now = time.time()  # the same exp for both
            await lazy.connect(server.token("lazy", ttl_s=2, now=now))
            await keen.connect(server.token("keen", ttl_s=2, now=now))
            await lazy.join("doc:exp")
            for c in (lazy, keen):
                told = await c.wait_for("error", timeout=5)
                assert told["code"] == "TOKEN_EXPIRED"
            ack = await keen.call("refresh-token", {"token": server.token("keen")})
            assert ack["ok"] is True
            await lazy.wait_disconnect(timeout=5)
            await asyncio.sleep(0.5)
            assert keen.sio.connected
            assert not keen.disconnects
            assert (await keen.join("doc:exp"))["presence"]["connections"] == 1

    run(main())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_json_number_in_an_acked_event_is_answered(server: ServerProcess, value: float) -> None:
    """python-socketio writes NaN/Infinity (Python's json allows them). The server refuses
    them (JavaScript clients could not parse a relay), but the event carried an ack id,
    and every acked event must be answered (PROTOCOL 1): the call must not time out."""

    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            await alice.join("doc:nan")
            ack = await alice.call("cursor", {"room": "doc:nan", "cursor": value}, timeout=2)
            err = _error(ack)
            assert err["code"] == "VALIDATION"

    run(main())


def test_large_messages_relay_intact(server: ServerProcess) -> None:
    """Big text and binary events (under the 512 KiB event limit) arrive byte for byte."""
    room = "doc:large"
    text = "".join(chr(0x20 + i % 0x5F) for i in range(300_000)) + "é✓🚀"
    blob = bytes(i % 251 for i in range(400_000))

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, bob):
            for c in (alice, bob):
                await c.join(room)
            ack = await alice.call("broadcast", {"room": room, "event": "text", "data": text})
            assert ack == {"ok": True}
            ack = await alice.call("broadcast", {"room": room, "event": "blob", "data": blob})
            assert ack == {"ok": True}
            got_text = await bob.wait_for("broadcast", lambda p: p["event"] == "text")
            got_blob = await bob.wait_for("broadcast", lambda p: p["event"] == "blob")
            assert got_text["data"] == text
            assert got_blob["data"] == blob

    run(main())


def test_unicode_names_and_payloads(server: ServerProcess) -> None:
    room = "doc:unicode"
    name = "Zoë 🚀 \u2028 «ß»"

    async def main() -> None:
        async with new_client(server) as zoe, clients(server, "bob") as (bob,):
            await zoe.connect(server.token("zoë", name=name))
            await bob.join(room)
            ack = await zoe.join(room)
            assert {u["userName"] for u in ack["presence"]["users"]} == {name, "Bob"}
            await zoe.call("cursor", {"room": room, "cursor": {"label": "→ ü 🎉"}})
            got = await bob.wait_for("cursor")
            assert got["userName"] == name
            assert got["userId"] == "zoë"
            assert got["cursor"] == {"label": "→ ü 🎉"}

    run(main())


def test_room_limits(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--max-rooms-per-connection", "2", "--max-room-members", "2")

    async def main() -> None:
        async with clients(server, "alice", "bob", "carol") as (alice, bob, carol):
            await alice.join("doc:1")
            await alice.join("doc:2")
            err = _error(await alice.call("join", {"room": "doc:3"}))
            assert err["code"] == "FORBIDDEN"  # rooms per connection
            assert (await alice.join("doc:2"))["ok"] is True  # re-joining is not a new room
            await alice.call("leave", {"room": "doc:2"})
            assert (await alice.join("doc:3"))["ok"] is True

            await bob.join("doc:1")
            err = _error(await carol.call("join", {"room": "doc:1"}))
            assert err["code"] == "ROOM_FULL"
            await bob.call("leave", {"room": "doc:1"})
            assert (await carol.join("doc:1"))["presence"]["connections"] == 2

    run(main())


def test_max_connections(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--max-connections", "2")

    async def main() -> None:
        async with clients(server, "alice", "bob") as (alice, _bob):
            async with new_client(server) as carol:
                # refused at the WebSocket upgrade (503), before any Socket.IO packet
                with pytest.raises((ConnectRefused, socketio.exceptions.ConnectionError)):
                    await carol.connect(server.token("carol"))
                assert not carol.sio.connected
            assert (await alice.join("doc:1"))["ok"] is True
        async with clients(server, "dave") as (dave,):  # room again once the others left
            assert (await dave.join("doc:1"))["ok"] is True

    run(main())
