"""What a hostile or clumsy client must not be able to do: end a room, fail another
user's write, make the server send invalid JSON, claim another user's operation ids,
or reorder its own writes. In-process server, in-memory store, mock clock.

Values a stock JSON encoder cannot produce (lone surrogate escapes, ``1e400``) are sent
as raw Socket.IO text, the way a hostile client would.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import trio
import trio.testing

from collabtrio.client import Client, ConnectError
from collabtrio.rooms import room as room_module
from collabtrio.testing import TestServer, open_test_server

_raw_ids = itertools.count(5000)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def raw_call(client: Client, event: str, payload_json: str) -> Any:
    """Send ``[event, <payload_json>]`` as raw text with an ack id; return the ack."""
    ack_id = next(_raw_ids)
    await client.send_raw(f"42{ack_id}[{json.dumps(event)},{payload_json}]")
    with trio.fail_after(10):
        while True:
            for got_id, data in client.unmatched_acks:
                if got_id == ack_id:
                    return data
            await trio.sleep(0.01)


def _op(room: str, op_id: str, op: str, coll: str, eid: str, data: Any = None) -> dict[str, Any]:
    return {"room": room, "operationId": op_id, "op": op, "collection": coll, "id": eid,
            "data": data}


async def _room_still_serves(server: TestServer, member: Client, room: str) -> None:
    """The room answers, and a newcomer joins it and hears a member's cursor."""
    assert (await member.call("cursor", {"room": room, "cursor": {"x": 1}})) == {"ok": True}
    async with server.client("newcomer") as newcomer:
        joined = await newcomer.join(room)
        assert joined["ok"] is True
        assert (await member.call("cursor", {"room": room, "cursor": {"x": 2}})) == {"ok": True}
        got = await newcomer.next_event("cursor")
        assert got["cursor"] == {"x": 2}


POISON_JSON = [
    ('"\\ud800"', "lone high surrogate"),
    ('"a\\udfffb"', "lone low surrogate"),
    ('{"\\ud83d": 1}', "lone surrogate in a key"),
    ('{"x": 1e400}', "overflowing number"),
    ('{"x": -1e400}', "overflowing negative number"),
    ('{"x": NaN}', "NaN"),
    ('{"x": Infinity}', "Infinity"),
]


@pytest.mark.parametrize(("value", "what"), POISON_JSON, ids=[w for _, w in POISON_JSON])
@pytest.mark.parametrize("event", ["cursor", "selection"])
async def test_unstorable_presence_is_refused_and_the_room_lives(
    autojump_clock: trio.testing.MockClock, event: str, value: str, what: str
) -> None:
    """A read-role member's cursor or selection holding a lone surrogate or a
    non-finite number is refused with VALIDATION: the room, its members and later
    joiners are unaffected (it used to end the room for everyone)."""
    async with open_test_server() as server:
        async with server.client("reader", rooms={"doc": "read"}) as reader, \
                server.client("writer") as writer:
            await reader.join("doc")
            await writer.join("doc")
            ack = await raw_call(reader, event, f'{{"room":"doc","{event}":{value}}}')
            assert ack["ok"] is False
            assert ack["error"]["code"] == "VALIDATION"
            assert ack["error"]["retryable"] is False
            assert writer.pending_events() == [] or all(
                name != event for name, _ in writer.pending_events())
            await _room_still_serves(server, writer, "doc")
            # the poisoner is still connected and still a member
            assert (await reader.call("typing", {"room": "doc", "typing": True})) == {"ok": True}


@pytest.mark.parametrize(("value", "what"), POISON_JSON, ids=[w for _, w in POISON_JSON])
async def test_unstorable_op_and_field_values_are_refused(
    autojump_clock: trio.testing.MockClock, value: str, what: str
) -> None:
    async with open_test_server() as server, server.client("a") as a:
        await a.join("doc")
        assert (await a.call("op", _op("doc", "o1", "add", "c", "e", {"v": 1})))["ok"]
        for event, payload in [
            ("op", f'{{"room":"doc","operationId":"o2","op":"update","collection":"c",'
                   f'"id":"e","data":{{"v":{value}}}}}'),
            ("op", f'{{"room":"doc","operationId":"o3","op":"move","collection":"c",'
                   f'"id":"e","data":{{"position":1}},"timestamp":{value}}}'),
            ("field", f'{{"room":"doc","operationId":"o4","collection":"c","id":"e",'
                      f'"path":["v"],"value":{value}}}'),
            ("chat", f'{{"room":"doc","text":{value}}}'),
        ]:
            ack = await raw_call(a, event, payload)
            assert ack["ok"] is False, (event, ack)
            assert ack["error"]["code"] == "VALIDATION", (event, ack)
        # nothing was applied: the next op gets seq 2
        ack = await a.call("op", _op("doc", "o5", "update", "c", "e", {"w": 2}))
        assert ack["seq"] == 2


async def test_an_event_name_with_a_lone_surrogate_is_refused_not_fatal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The error reply of an unknown event echoes its name: a name that cannot be
    encoded used to end the connection with an unhandled exception."""
    async with open_test_server() as server, server.client("a") as a:
        await a.join("doc")
        ack_id = next(_raw_ids)
        await a.send_raw(f'42{ack_id}["ev\\ud800il",{{"room":"doc"}}]')
        await a.send_raw('42["ev\\udc00il",{"room":"doc"}]')  # un-acked
        await trio.sleep(1)
        [ack] = [d for i, d in a.unmatched_acks if i == ack_id]
        assert ack["error"]["code"] == "VALIDATION"
        assert (await a.call("cursor", {"room": "doc", "cursor": 1})) == {"ok": True}
        errors = [d for name, d in a.pending_events() if name == "operation-error"]
        assert [e["type"] for e in errors] == ["VALIDATION"]


async def test_a_token_whose_claims_are_not_valid_unicode_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A signed token whose name holds a lone surrogate would end every room its
    holder joins when presence is encoded: it is refused at CONNECT."""
    async with open_test_server() as server:
        with pytest.raises(ConnectError) as info:
            async with server.connect(token=server.token("eve", name="Eve \ud800")):
                pass
        assert info.value.code == "INVALID_TOKEN"
        assert "surrogate" in str(info.value)
        async with server.client("ok") as ok:
            assert (await ok.join("doc"))["ok"] is True


async def test_a_failing_room_tells_its_members_and_can_be_joined_again(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever makes a room fail (here a bug injected into presence encoding), its
    members are told with room-error (INTERNAL, retryable) and dropped cleanly, so a
    client can join again and find a fresh room with the stored document."""
    async with open_test_server() as server:
        async with server.client("a") as a, server.client("b") as b:
            await a.join("doc")
            assert (await a.call("op", _op("doc", "o1", "add", "c", "e", {"v": 1})))["ok"]
            await b.join("doc")
            real = room_module.presence_json
            calls = itertools.count()

            def broken(*args: Any, **kwargs: Any) -> Any:
                if next(calls) == 0:
                    raise RuntimeError("injected presence bug")
                return real(*args, **kwargs)

            monkeypatch.setattr(room_module, "presence_json", broken)
            # a leave makes the room broadcast presence, which now fails once
            await b.call("leave", {"room": "doc"})
            told = await a.next_event("room-error")
            assert told["room"] == "doc"
            assert told["ok"] is False
            assert told["error"]["code"] == "INTERNAL"
            assert told["error"]["retryable"] is True
            # a knows it is out, and joining again works, with the document intact
            ack = await a.call("cursor", {"room": "doc", "cursor": 1})
            assert ack["error"]["code"] == "NOT_JOINED"
            joined = await a.join("doc")
            assert joined["ok"] is True
            assert joined["state"] == {"c": {"e": {"v": 1}}}


async def test_another_users_operation_id_is_not_theirs_to_claim(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Operation ids are broadcast to the room: user 2 reusing user 1's id must get
    its own operation applied, not user 1's result (idempotency is per sender)."""
    async with open_test_server() as server:
        async with server.client("u1") as u1, server.client("u2") as u2:
            await u1.join("doc")
            await u2.join("doc")
            first = await u1.call("op", _op("doc", "op-1", "add", "c", "a", {"by": 1}))
            assert first["seq"] == 1
            second = await u2.call("op", _op("doc", "op-1", "add", "c", "b", {"by": 2}))
            assert second["ok"] is True
            assert second["seq"] == 2
            # a retry by the same user still gets the first result, applied once
            again = await u1.call("op", _op("doc", "op-1", "add", "c", "a", {"by": 1}))
            assert again == first
            # the same for field writes and chat client ids
            f1 = await u1.call("field", {"room": "doc", "operationId": "f-1", "collection": "c",
                                         "id": "a", "path": ["x"], "value": 1})
            f2 = await u2.call("field", {"room": "doc", "operationId": "f-1", "collection": "c",
                                         "id": "b", "path": ["x"], "value": 2})
            assert f1["seq"] != f2["seq"]
            c1 = await u1.call("chat", {"room": "doc", "text": "one", "clientId": "m-1"})
            c2 = await u2.call("chat", {"room": "doc", "text": "two", "clientId": "m-1"})
            assert c1["seq"] != c2["seq"]
            async with server.client("u3") as u3:
                joined = await u3.join("doc")
                assert joined["state"]["c"] == {"a": {"by": 1, "x": 1}, "b": {"by": 2, "x": 2}}
                assert [m["text"] for m in joined["chat"]] == ["one", "two"]


async def test_user_ids_that_share_a_prefix_never_share_chat_client_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Keys are length-prefixed: user "a:b" with clientId "c" and user "a" with
    clientId "b:c" are two messages."""
    async with open_test_server() as server:
        async with server.client("a:b") as ab, server.client("a") as a:
            await ab.join("doc")
            await a.join("doc")
            one = await ab.call("chat", {"room": "doc", "text": "one", "clientId": "c"})
            two = await a.call("chat", {"room": "doc", "text": "two", "clientId": "b:c"})
            assert one["seq"] == 1
            assert two["seq"] == 2


OP_AFTER_FIELD = [
    ("update", {"label": "op"}, {"label": "op"}),
    ("move", {"position": 3, "commit": True}, {"label": "field", "position": 3}),
    ("remove", None, None),
    ("duplicate", {"newId": "copy"}, {"label": "field"}),
]


@pytest.mark.parametrize(("kind", "data", "expected"), OP_AFTER_FIELD,
                         ids=[k for k, _, _ in OP_AFTER_FIELD])
async def test_a_field_write_is_applied_before_an_op_sent_after_it(
    autojump_clock: trio.testing.MockClock, kind: str, data: Any, expected: Any
) -> None:
    """docs/protocol.md: an op flushes the pending field writes of every entity it
    touches first, so a field write is never applied after an op sent later."""
    async with open_test_server() as server, server.client("a") as a:
        await a.join("doc")
        await a.call("op", _op("doc", "o0", "add", "items", "a", {"label": "start"}))
        async with trio.open_nursery() as nursery:
            acks: dict[str, Any] = {}

            async def send(name: str, event: str, payload: dict[str, Any]) -> None:
                acks[name] = await a.call(event, payload)

            nursery.start_soon(send, "field", "field", {
                "room": "doc", "operationId": "f1", "collection": "items", "id": "a",
                "path": ["label"], "value": "field"})
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, "op", "op", _op("doc", "o1", kind, "items", "a", data))
        assert acks["field"]["ok"] is True
        assert acks["op"]["ok"] is True
        assert acks["field"]["seq"] < acks["op"]["seq"]
        async with server.client("b") as b:
            state = (await b.join("doc"))["state"]
        items = (state or {}).get("items", {})
        if kind == "duplicate":
            assert items["a"] == {"label": "field"}
            assert items["copy"] == expected
        else:
            assert items.get("a") == expected


async def test_a_field_write_to_a_duplicates_new_id_stays_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The write was sent before the duplicate that creates its entity: it must fail
    NOT_FOUND, not land on the copy (it used to, in 25 of 26 randomized runs)."""
    async with open_test_server() as server, server.client("a") as a:
        await a.join("doc")
        async with trio.open_nursery() as nursery:
            acks: dict[str, Any] = {}

            async def send(name: str, event: str, payload: dict[str, Any]) -> None:
                acks[name] = await a.call(event, payload)

            nursery.start_soon(send, "add", "op", _op("doc", "o1", "add", "items", "a",
                                                      {"label": "orig"}))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, "field", "field", {
                "room": "doc", "operationId": "f1", "collection": "items", "id": "x",
                "path": ["label"], "value": "early"})
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, "dup", "op", _op("doc", "o2", "duplicate", "items", "a",
                                                      {"newId": "x"}))
        assert acks["add"]["ok"] is True
        assert acks["dup"]["ok"] is True
        assert acks["field"]["ok"] is False
        assert acks["field"]["error"]["code"] == "NOT_FOUND"
        async with server.client("b") as b:
            state = (await b.join("doc"))["state"]
        assert state["items"]["x"] == {"label": "orig"}


async def test_cursor_and_selection_sizes_are_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_presence_bytes=100) as server:
        async with server.client("a") as a, server.client("b") as b:
            await a.join("doc")
            await b.join("doc")
            for event in ("cursor", "selection"):
                ack = await a.call(event, {"room": "doc", event: "x" * 200})
                assert ack["error"]["code"] == "TOO_LARGE"
                assert "max_presence_bytes" in ack["error"]["message"]
                assert (await a.call(event, {"room": "doc", event: "x" * 50}))["ok"] is True
            # broadcast data is not kept in presence: only the event size bounds it
            ack = await a.call("broadcast", {"room": "doc", "event": "e", "data": "x" * 200})
            assert ack["ok"] is True
            async with server.client("c") as c:
                users = (await c.join("doc"))["presence"]["users"]
                [mine] = [u for u in users if u["userId"] == "a"]
                assert mine["cursor"] == "x" * 50


async def test_the_document_size_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(max_document_bytes=300) as server, server.client("a") as a:
        await a.join("doc")
        assert (await a.call("op", _op("doc", "o1", "add", "c", "e1", {"t": "x" * 100})))["ok"]
        ack = await a.call("op", _op("doc", "o2", "add", "c", "e2", {"t": "x" * 250}))
        assert ack["error"]["code"] == "TOO_LARGE"
        assert "max_document_bytes" in ack["error"]["message"]
        ack = await a.call("field", {"room": "doc", "operationId": "f1", "collection": "c",
                                     "id": "e1", "path": ["more"], "value": "y" * 250})
        assert ack["error"]["code"] == "TOO_LARGE"
        ack = await a.call("op", _op("doc", "o3", "duplicate", "c", "e1", {"newId": "e3"}))
        assert ack["ok"] is True  # ~110 bytes twice still fits
        ack = await a.call("op", _op("doc", "o4", "duplicate", "c", "e1", {"newId": "e4"}))
        assert ack["error"]["code"] == "TOO_LARGE"
        # shrinking and removing are always allowed, and free room again
        assert (await a.call("op", _op("doc", "o5", "remove", "c", "e3")))["ok"]
        assert (await a.call("op", _op("doc", "o6", "duplicate", "c", "e1",
                                       {"newId": "e4"})))["ok"]
        async with server.client("admin", rooms={"doc": "admin"}) as admin:
            await admin.join("doc")
            ack = await admin.call("op", _op("doc", "o7", "replace", "*", "*",
                                             {"c": {"big": {"t": "z" * 400}}}))
            assert ack["error"]["code"] == "TOO_LARGE"
            ack = await admin.call("op", _op("doc", "o8", "replace", "*", "*",
                                             {"c": {"small": {"t": "z"}}}))
            assert ack["ok"] is True
            assert (await a.call("op", _op("doc", "o9", "add", "c", "e5",
                                           {"t": "x" * 200})))["ok"]


async def test_connect_time_rooms_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    """One CONNECT asking for 100k rooms used to block every client for over a second."""
    async with open_test_server(max_rooms_per_connection=5) as server:
        with pytest.raises(ConnectError) as info:
            async with server.connect(token=server.token("a"),
                                      auth={"rooms": [f"r{i}" for i in range(20_000)]}):
                pass
        assert info.value.code == "VALIDATION"
        async with server.connect(token=server.token("a"),
                                  auth={"rooms": [f"r{i}" for i in range(5)]}) as ok:
            for _ in range(5):
                assert (await ok.next_event("joined"))["ok"] is True


async def test_a_refreshed_token_that_lowers_a_role_applies_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("a", rooms={"doc": "write"}) as a:
            assert (await a.join("doc"))["role"] == "write"
            token = server.token("a", rooms={"doc": "read"})
            assert (await a.call("refresh-token", {"token": token}))["ok"] is True
            changed = await a.next_event("role-changed")
            assert changed == {"room": "doc", "role": "read"}
            ack = await a.call("op", _op("doc", "o1", "add", "c", "e", {}))
            assert ack["error"]["code"] == "FORBIDDEN"
            # and back up again
            token = server.token("a", rooms={"doc": "write"})
            await a.call("refresh-token", {"token": token})
            assert (await a.next_event("role-changed"))["role"] == "write"
            assert (await a.call("op", _op("doc", "o2", "add", "c", "e", {})))["ok"] is True


async def test_smaller_validation_gaps(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server:
        async with server.client("a", rooms={"doc": "admin"}) as a:
            await a.join("doc")
            # the six characters backslash-u-0-0-0-0 are text, not a NUL
            ack = await a.call("chat", {"room": "doc", "text": "see \\u0000 here"})
            assert ack["ok"] is True
            ack = await a.call("chat", {"room": "doc", "text": "a real \x00 NUL"})
            assert ack["error"]["code"] == "VALIDATION"
            ack = await a.call("chat", {"room": "doc", "text": "\\\x00"})
            assert ack["error"]["code"] == "VALIDATION"
            # numbers past what storage holds are VALIDATION, not INTERNAL
            ack = await a.call("chat-history", {"room": "doc", "before": 10**30})
            assert ack["error"]["code"] == "VALIDATION"
            ack = await a.call("join", {"room": "doc", "since": 10**30})
            assert ack["error"]["code"] == "VALIDATION"
            ack = await a.call("op", {**_op("doc", "t", "add", "c", "e", {}),
                                      "timestamp": 2**60})
            assert ack["error"]["code"] == "VALIDATION"
            # replace enforces the same key lengths as op
            for bad in ({"": {"e": {}}}, {"c" * 257: {"e": {}}}, {"c": {"e" * 257: {}}},
                        {"c": {"": {}}}):
                ack = await a.call("op", _op("doc", "r", "replace", "*", "*", bad))
                assert ack["error"]["code"] == "VALIDATION", bad
