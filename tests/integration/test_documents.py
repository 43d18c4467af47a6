"""Documents: operations, debounced fields, chat, history and replay, idempotency,
storage failures. In-process server, in-memory store, mock clock."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.testing

from collabtrio.client import Client
from collabtrio.storage.memory import MemoryStore, forget
from collabtrio.testing import open_test_server


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def _op(room: str, op_id: str, op: str, coll: str, eid: str, data: Any = None) -> dict[str, Any]:
    return {"room": room, "operationId": op_id, "op": op, "collection": coll, "id": eid,
            "data": data}


async def _settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def _events(client: Client, name: str) -> list[Any]:
    return [data for event, data in client.pending_events() if event == name]


async def test_operations_are_persisted_broadcast_and_acked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store) as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            ack = await alice.call("op", _op("doc", "o1", "add", "shapes", "s1", {"x": 1}))
            assert ack["ok"] is True
            assert ack["seq"] == 1
            assert ack["operationId"] == "o1"
            got = await bob.next_event("op")
            assert got["seq"] == 1
            assert got["op"] == "add"
            assert got["data"] == {"x": 1}
            assert got["userId"] == "alice"
            assert got["socketId"] == alice.sid

            ack = await alice.call("op", _op("doc", "o2", "update", "shapes", "s1",
                                             {"y": 2, "x": None}))
            assert ack["seq"] == 2
            ack = await alice.call("op", _op("doc", "o3", "duplicate", "shapes", "s1",
                                             {"newId": "s2"}))
            assert ack["seq"] == 3
            ack = await alice.call("op", _op("doc", "o4", "remove", "shapes", "s1"))
            assert ack["seq"] == 4
            await _settle()
            assert [e["seq"] for e in _events(bob, "op")] == [2, 3, 4]
            assert _events(alice, "op") == []  # the sender gets the ack, not the event

            # a newcomer gets the state in its join ack
            async with server.client("carol") as carol:
                joined = await carol.join("doc")
                assert joined["seq"] == 4
                assert joined["state"] == {"shapes": {"s2": {"y": 2}}}
                assert joined["recovered"] is False
    snapshot = await store.load_room("doc", history_limit=10, chat_limit=10)
    assert snapshot.seq == 4
    assert snapshot.entities == {"shapes": {"s2": {"y": 2}}}


async def test_refused_operations_take_no_seq(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("reader",
                                                                   rooms={"doc": "read"}) as r:
            await alice.join("doc")
            await r.join("doc")

            async def code(payload: dict[str, Any], client: Client = alice) -> str:
                ack = await client.call("op", payload)
                assert ack["ok"] is False
                return str(ack["error"]["code"])

            assert (await alice.call("op", _op("doc", "a", "add", "c", "1", {})))["seq"] == 1
            assert await code(_op("doc", "b", "add", "c", "1", {})) == "DUPLICATE"
            assert await code(_op("doc", "c", "update", "c", "404", {})) == "NOT_FOUND"
            assert await code(_op("doc", "d", "remove", "c", "404")) == "NOT_FOUND"
            assert await code(_op("doc", "e", "update", "c", "1", [1, 2])) == "VALIDATION"
            assert await code(_op("doc", "f", "explode", "c", "1")) == "VALIDATION"
            assert await code(_op("doc", "g", "add", "c", "2", {}), r) == "FORBIDDEN"
            assert await code(_op("doc", "h", "replace", "*", "*", {})) == "FORBIDDEN"
            assert await code({"room": "doc", "op": "add"}) == "VALIDATION"  # no operationId
            assert (await alice.call("op", _op("doc", "i", "add", "c", "2", {})))["seq"] == 2


async def test_replace_needs_admin_and_replaces_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("boss", rooms={"doc": "admin"}) as boss:
            await boss.join("doc")
            await boss.call("op", _op("doc", "1", "add", "a", "x", {"v": 1}))
            ack = await boss.call("op", _op("doc", "2", "replace", "*", "*",
                                            {"b": {"y": {"v": 2}}}))
            assert ack["ok"] is True
            async with server.client("other") as other:
                assert (await other.join("doc"))["state"] == {"b": {"y": {"v": 2}}}


async def test_gapless_seq_under_concurrent_writers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        names = [f"w{i}" for i in range(5)]
        acks: dict[str, list[int]] = {}
        seen: dict[str, list[int]] = {}
        async with server.client("watcher") as watcher:
            await watcher.join("doc")

            async def writer(name: str) -> None:
                async with server.client(name) as c:
                    await c.join("doc")
                    acks[name] = []
                    async with trio.open_nursery() as nursery:
                        for i in range(20):
                            async def one(i: int = i) -> None:
                                ack = await c.call("op", _op("doc", f"{name}-{i}", "add",
                                                             "items", f"{name}-{i}", {"i": i}))
                                acks[name].append(ack["seq"])
                            nursery.start_soon(one)

            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(writer, name)
            await _settle()
            seen["watcher"] = [e["seq"] for e in _events(watcher, "op")]
        all_seqs = sorted(s for seqs in acks.values() for s in seqs)
        assert all_seqs == list(range(1, 101))
        assert seen["watcher"] == list(range(1, 101))  # in order, no gap


async def test_move_is_relayed_at_once_and_stored_on_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            await alice.call("op", _op("doc", "a", "add", "n", "1", {"position": [0, 0]}))
            await _settle()
            bob.pending_events()
            ack = await alice.call("op", _op("doc", "m1", "move", "n", "1",
                                             {"position": [5, 5]}))
            assert ack["ok"] is True
            assert ack["operationId"] == "m1"
            assert ack["seq"] is None
            got = await bob.next_event("op")
            assert got["seq"] is None
            assert got["data"] == {"position": [5, 5]}
            ack = await alice.call("op", _op("doc", "m2", "move", "n", "1",
                                             {"position": [9, 9], "commit": True}))
            assert ack["seq"] == 2
            await _settle()
            moves = _events(bob, "op")
            assert [m["seq"] for m in moves] == [None, 2]  # relayed, then stored with a seq
            # without an ack, a relayed move is confirmed like any other operation
            await alice.emit("op", _op("doc", "m3", "move", "n", "1", {"position": [1, 1]}))
            confirmed = await alice.next_event("operation-confirmed")
            assert confirmed["operationId"] == "m3"
            assert confirmed["seq"] is None
            async with server.client("carol") as carol:
                state = (await carol.join("doc"))["state"]
                assert state["n"]["1"]["position"] == [9, 9]


async def test_field_writes_are_coalesced_and_all_confirmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            await alice.call("op", _op("doc", "a", "add", "vars", "v", {"value": 0}))
            await _settle()
            bob.pending_events()
            commits_before = server.server.commits.transactions  # type: ignore[union-attr]
            start = trio.current_time()
            confirmed: list[dict[str, Any]] = []

            async def write(i: int) -> None:
                await trio.sleep(i * 0.0004)  # 50 writes within 20 ms
                ack = await alice.call("field", {"room": "doc", "operationId": f"f{i}",
                                                 "collection": "vars", "id": "v",
                                                 "path": ["value"], "value": i})
                confirmed.append(ack)

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(write, i)
            assert len(confirmed) == 50
            assert all(a["ok"] for a in confirmed)
            assert {a["operationId"] for a in confirmed} == {f"f{i}" for i in range(50)}
            # the trailing window: flushed 25 ms after the last write, not before
            assert trio.current_time() - start == pytest.approx(0.0196 + 0.025, abs=0.002)
            await _settle()
            fields = _events(bob, "field")
            assert 1 <= len(fields) <= 3
            assert fields[-1]["value"] == 49
            assert fields[-1]["path"] == ["value"]
            transactions = server.server.commits.transactions - commits_before  # type: ignore[union-attr]
            assert transactions <= 3
            async with server.client("carol") as carol:
                assert (await carol.join("doc"))["state"]["vars"]["v"] == {"value": 49}


async def test_field_is_never_held_longer_than_the_max(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(field_debounce_ms=25, field_max_hold_ms=250) as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            await alice.call("op", _op("doc", "a", "add", "vars", "v", {}))
            await _settle()
            bob.pending_events()
            start = trio.current_time()
            arrivals: list[float] = []

            async def watch() -> None:
                while True:
                    await bob.next_event("field", timeout=5)
                    arrivals.append(trio.current_time() - start)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                for i in range(100):  # a steady stream: one write every 10 ms for 1 s
                    await alice.emit("field", {"room": "doc", "operationId": f"f{i}",
                                               "collection": "vars", "id": "v",
                                               "path": ["x"], "value": i})
                    await trio.sleep(0.01)
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
            # the trailing window never closes, so the hold limit flushes every 250 ms
            assert arrivals[0] == pytest.approx(0.25, abs=0.01)
            gaps = [b - a for a, b in itertools.pairwise(arrivals)]
            assert all(g <= 0.26 for g in gaps)
            assert 4 <= len(arrivals) <= 6


async def test_field_winner_reaches_the_losing_sender_but_not_the_winner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            await alice.call("op", _op("doc", "a", "add", "vars", "v", {}))
            await _settle()
            for c in (alice, bob):
                c.pending_events()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(alice.call, "field", {
                    "room": "doc", "operationId": "fa", "collection": "vars", "id": "v",
                    "path": ["k"], "value": "alice"})
                await trio.sleep(0.005)
                nursery.start_soon(bob.call, "field", {
                    "room": "doc", "operationId": "fb", "collection": "vars", "id": "v",
                    "path": ["k"], "value": "bob"})
            await _settle()
            assert [f["value"] for f in _events(alice, "field")] == ["bob"]
            assert _events(bob, "field") == []


async def test_field_on_a_missing_entity_is_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server, server.client("alice") as alice:
        await alice.join("doc")
        ack = await alice.call("field", {"room": "doc", "operationId": "f", "collection": "x",
                                         "id": "nope", "path": ["a"], "value": 1})
        assert ack["error"]["code"] == "NOT_FOUND"


async def test_replay_since_and_full_state_when_too_old(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(history_limit=5) as server:
        async with server.client("bob") as bob:
            await bob.join("doc")
            async with server.client("alice") as alice:
                first = await alice.join("doc")
                assert first["seq"] == 0
            for i in range(3):
                await bob.call("op", _op("doc", f"b{i}", "add", "c", str(i), {"i": i}))
            async with server.client("alice") as alice:
                ack = await alice.call("join", {"room": "doc", "since": 0})
                # the missed events arrived before the ack, in order
                replayed = [d for e, d in alice.pending_events() if e == "op"]
                assert [e["seq"] for e in replayed] == [1, 2, 3]
                assert ack["recovered"] is True
                assert ack["seq"] == 3
                assert ack["state"] is None
            for i in range(3, 10):
                await bob.call("op", _op("doc", f"b{i}", "add", "c", str(i), {"i": i}))
            async with server.client("alice") as alice:
                ack = await alice.call("join", {"room": "doc", "since": 3})
                assert ack["recovered"] is False  # seqs 4 and 5 are gone from history
                assert len(ack["state"]["c"]) == 10
                assert [d for e, d in alice.pending_events() if e == "op"] == []
                ack = await alice.call("join", {"room": "doc", "since": 10})
                assert ack["recovered"] is True


async def test_repeated_operation_id_is_applied_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            first = await alice.call("op", _op("doc", "same", "add", "c", "1", {"n": 1}))
            again = await alice.call("op", _op("doc", "same", "add", "c", "1", {"n": 1}))
            assert again == first
            # same id, different content: still the first answer, nothing applied
            other = await alice.call("op", _op("doc", "same", "add", "c", "2", {}))
            assert other == first
            await _settle()
            assert len(_events(bob, "op")) == 1
            assert (await alice.call("op", _op("doc", "next", "add", "c", "3", {})))["seq"] == 2


async def test_idempotency_survives_a_restart(autojump_clock: trio.testing.MockClock) -> None:
    url = "memory://restart-idempotency"
    try:
        async with open_test_server(store=MemoryStore(url)) as server:
            async with server.client("alice") as alice:
                await alice.join("doc")
                first = await alice.call("op", _op("doc", "op-1", "add", "c", "1", {}))
        async with open_test_server(store=MemoryStore(url)) as server:
            async with server.client("alice") as alice:
                joined = await alice.join("doc")
                assert joined["seq"] == 1
                again = await alice.call("op", _op("doc", "op-1", "add", "c", "1", {}))
                assert again == first
                assert (await alice.call("op", _op("doc", "op-2", "add", "c", "2", {})))[
                    "seq"] == 2
    finally:
        forget(url)


async def test_chat_reaches_everyone_and_has_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(chat_history_limit=3) as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("room")
            await bob.join("room")
            for i in range(5):
                ack = await alice.call("chat", {"room": "room", "text": f"hello {i}",
                                                "clientId": f"c{i}"})
                assert ack["ok"] is True
                assert ack["seq"] == i + 1
            await _settle()
            for c in (alice, bob):  # the sender too
                texts = [m["text"] for m in _events(c, "chat")]
                assert texts == [f"hello {i}" for i in range(5)]
            async with server.client("carol") as carol:
                joined = await carol.join("room")
                assert [m["text"] for m in joined["chat"]] == ["hello 2", "hello 3", "hello 4"]
                page = await carol.call("chat-history", {"room": "room", "before": 3,
                                                         "limit": 10})
                assert [m["text"] for m in page["messages"]] == ["hello 0", "hello 1"]
                assert page["messages"][0]["userId"] == "alice"


async def test_un_acked_operations_get_the_origin_servers_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store) as server:
        async with server.client("alice") as alice, server.client("r", rooms={"doc": "read"}) as r:
            await alice.join("doc")
            await r.join("doc")
            await alice.emit("op", _op("doc", "x1", "add", "c", "1", {}))
            confirmed = await alice.next_event("operation-confirmed")
            assert confirmed["operationId"] == "x1"
            assert confirmed["seq"] == 1
            await r.emit("op", _op("doc", "x2", "add", "c", "2", {}))
            forbidden = await r.next_event("operation-forbidden")
            assert forbidden["operationId"] == "x2"
            await alice.emit("op", _op("doc", "x3", "add", "c", "1", {}))
            error = await alice.next_event("operation-error")
            assert error["type"] == "DUPLICATE"
            store.fail_next(1)
            await alice.emit("op", _op("doc", "x4", "add", "c", "4", {}))
            failed = await alice.next_event("operation-failed")
            assert failed["operationId"] == "x4"
            assert failed["retryable"] is True


async def test_storage_failure_fails_the_batch_and_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store) as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            store.fail_next(1)
            ack = await alice.call("op", _op("doc", "o1", "add", "c", "1", {}))
            assert ack["ok"] is False
            assert ack["error"]["code"] == "STORAGE_UNAVAILABLE"
            assert ack["error"]["retryable"] is True
            await _settle()
            assert _events(bob, "op") == []  # nothing was broadcast
            # the retry with the same id is applied now, at seq 1: no gap
            ack = await alice.call("op", _op("doc", "o1", "add", "c", "1", {}))
            assert ack["ok"] is True
            assert ack["seq"] == 1


async def test_closing_room_flushes_pending_fields(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store, field_debounce_ms=1000,
                                field_max_hold_ms=5000) as server:
        async with server.client("alice") as alice:
            await alice.join("doc")
            await alice.call("op", _op("doc", "a", "add", "vars", "v", {}))
            await alice.emit("field", {"room": "doc", "operationId": "f1", "collection": "vars",
                                       "id": "v", "path": ["k"], "value": "kept"})
            await _settle()
    # the server (and the room) was cancelled before the field's deadline
    snapshot = await store.load_room("doc", history_limit=10, chat_limit=0)
    assert snapshot.entities["vars"]["v"] == {"k": "kept"}
    assert snapshot.seq == 2


async def test_stored_grant_changes_role_without_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store, grants_poll_s=2, default_role="read") as server:
        async with server.client("alice") as alice:
            assert (await alice.join("doc"))["role"] == "read"
            ack = await alice.call("op", _op("doc", "1", "add", "c", "1", {}))
            assert ack["error"]["code"] == "FORBIDDEN"
            await store.set_grant("doc", "alice", "write")
            changed = await alice.next_event("role-changed", timeout=5)
            assert changed == {"room": "doc", "role": "write"}
            ack = await alice.call("op", _op("doc", "2", "add", "c", "1", {}))
            assert ack["ok"] is True
        async with server.client("alice") as alice:
            assert (await alice.join("doc"))["role"] == "write"


class _CountingStore(MemoryStore):
    """A memory store that counts grant lookups."""

    lookups = 0

    async def grants_for(self, user_id: str) -> dict[str, Any]:
        self.lookups += 1
        return await super().grants_for(user_id)


async def test_no_grant_lookup_per_connect_while_none_is_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While no grant is stored, a connect does not look its user's grants up. A grant
    written by another process (straight into the store, as `collabtrio grant` does)
    reaches a connection made before the watcher saw it, within grants_poll_s, and
    later connects look it up."""
    store = _CountingStore()
    start = trio.current_time()
    async with open_test_server(store=store, grants_poll_s=2, default_role="read") as server:
        await trio.sleep(0.1)  # the watcher's first poll found no grant
        async with server.client("alice") as alice:
            assert (await alice.join("doc"))["role"] == "read"
        assert store.lookups == 0
        await store.set_grant("doc", "bob", "write")
        async with server.client("bob") as bob:  # before the watcher's next poll
            assert (await bob.join("doc"))["role"] == "read"
            changed = await bob.next_event("role-changed", timeout=5)
            assert changed == {"room": "doc", "role": "write"}
            assert trio.current_time() - start <= 2.1
        lookups = store.lookups
        async with server.client("bob") as bob:
            assert (await bob.join("doc"))["role"] == "write"
        assert store.lookups == lookups + 1


async def test_idle_room_waits_for_pending_writes_then_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store, room_idle_s=1, field_debounce_ms=3000,
                                field_max_hold_ms=3000) as server:
        async with server.client("alice") as alice:
            await alice.join("doc")
            await alice.call("op", _op("doc", "a", "add", "vars", "v", {}))
            await alice.emit("field", {"room": "doc", "operationId": "f1", "collection": "vars",
                                       "id": "v", "path": ["k"], "value": 1})
            await alice.call("leave", {"room": "doc"})
            left = trio.current_time()
            room = server.server.registry.get("doc")
            assert room is not None
            while server.server.registry.get("doc") is room:
                await trio.sleep(0.05)
            # closed only once the field (held 3 s) was written, not at the 1 s idle mark
            assert trio.current_time() - left >= 2.9
    snapshot = await store.load_room("doc", history_limit=10, chat_limit=0)
    assert snapshot.entities["vars"]["v"] == {"k": 1}


@pytest.mark.parametrize(
    "data",
    [{"blob": b"\x00\x01"}, {"text": "a\x00b"}, {"\x00": 1}],
    ids=["bytes", "nul-in-value", "nul-in-key"],
)
async def test_values_no_database_can_store_are_refused(
    autojump_clock: trio.testing.MockClock, data: dict[str, Any]
) -> None:
    async with open_test_server() as server, server.client("alice") as alice:
        await alice.join("doc")
        ack = await alice.call("op", _op("doc", "o", "add", "c", "1", data))
        assert ack["error"]["code"] == "VALIDATION"
        ack = await alice.call("chat", {"room": "doc", "text": "nul \x00 here"})
        assert ack["error"]["code"] == "VALIDATION"
        assert (await alice.call("op", _op("doc", "p", "add", "c", "1", {})))["seq"] == 1


async def test_field_event_names_the_winning_operation_even_after_a_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            await alice.call("op", _op("doc", "a", "add", "vars", "v", {}))

            def write(op_id: str, value: str) -> dict[str, Any]:
                return {"room": "doc", "operationId": op_id, "collection": "vars", "id": "v",
                        "path": ["k"], "value": value}

            await alice.emit("field", write("f1", "a"))
            await bob.emit("field", write("f2", "b"))
            await alice.emit("field", write("f1", "a"))  # a retry of the losing write
            event = await alice.next_event("field")
            assert event["value"] == "b"
            assert event["operationId"] == "f2"
            assert event["userId"] == "bob"
            confirmations = [await alice.next_event("operation-confirmed") for _ in range(2)]
            assert {c["operationId"] for c in confirmations} == {"f1"}


async def test_a_field_write_is_applied_before_a_later_operation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            await alice.call("op", _op("doc", "a", "add", "notes", "n", {"title": "v0"}))
            await alice.emit("field", {"room": "doc", "operationId": "f", "collection": "notes",
                                       "id": "n", "path": ["title"], "value": "v1"})
            await trio.sleep(0.002)
            ack = await alice.call("op", _op("doc", "u", "update", "notes", "n",
                                             {"title": "v2"}))
            await _settle()
            events = [(e, d["seq"]) for e, d in bob.pending_events() if e in ("op", "field")]
            assert events[-2:] == [("field", 2), ("op", 3)]
            assert ack["seq"] == 3
            async with server.client("carol") as carol:
                assert (await carol.join("doc"))["state"]["notes"]["n"] == {"title": "v2"}


async def test_deeply_nested_data_is_refused_and_the_room_lives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deep: Any = 1
    for _ in range(600):
        deep = {"a": deep}
    async with open_test_server() as server, server.client("alice") as alice:
        await alice.join("doc")
        ack = await alice.call("op", _op("doc", "deep", "add", "c", "1", deep))
        assert ack["error"]["code"] == "VALIDATION"
        assert (await alice.call("op", _op("doc", "ok", "add", "c", "1", {"a": 1})))["seq"] == 1
        assert server.server.registry.get("doc") is not None


async def test_a_large_state_can_still_be_joined(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(outbox_max_bytes=64 * 1024, rate_limit_burst=1000,
                                rate_limit_per_s=1000) as server:
        async with server.client("alice") as alice:
            await alice.join("doc")
            for i in range(40):
                await alice.call("op", _op("doc", f"o{i}", "add", "c", str(i),
                                           {"pad": "x" * 4000}))
            async with server.client("bob") as bob:
                full = await bob.join("doc")  # ~160 KB of state, over the 64 KiB outbox
                assert len(full["state"]["c"]) == 40
                replay = await bob.call("join", {"room": "doc", "since": 0})
                assert replay["recovered"] is True
                assert len([1 for e, _ in bob.pending_events() if e == "op"]) == 40


class _SlowStore(MemoryStore):
    """A memory store whose commits take ``delay`` seconds (trio time)."""

    delay = 0.0
    land_then_fail = False

    async def commit(self, changes: Any) -> None:
        await trio.sleep(self.delay)
        await super().commit(changes)
        if self.land_then_fail:
            self.land_then_fail = False
            from collabtrio.storage.base import StorageUnavailable

            raise StorageUnavailable("connection lost after COMMIT")


async def test_a_room_does_not_close_while_its_commit_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = _SlowStore()
    async with open_test_server(store=store, room_idle_s=1) as server:
        async with server.client("alice") as alice:
            await alice.join("doc")
            await alice.call("op", _op("doc", "a", "add", "n", "1", {"v": 0}))
            store.delay = 3
            await alice.emit("op", _op("doc", "b", "update", "n", "1", {"v": 1}))
            await trio.sleep(0.01)
            room = server.server.registry.get("doc")
            await alice.call("leave", {"room": "doc"})
        await trio.sleep(1.5)  # past the idle time, the commit still running
        assert server.server.registry.get("doc") is room  # not closed under it
        async with server.client("bob") as bob:
            joined = await bob.join("doc")
            if joined["seq"] == 1:  # joined before the commit landed: it arrives live
                assert (await bob.next_event("op", timeout=5))["seq"] == 2
            async with server.client("carol") as carol:
                later = await carol.join("doc")
                assert later["seq"] == 2
                assert later["state"]["n"]["1"] == {"v": 1}


async def test_a_commit_that_landed_despite_an_error_is_found_without_new_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = _SlowStore()
    async with open_test_server(store=store) as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            store.land_then_fail = True
            ack = await alice.call("chat", {"room": "doc", "text": "hello", "clientId": "c1"})
            assert ack["error"]["code"] == "STORAGE_UNAVAILABLE"
            # nobody writes; the room finds the stored message and broadcasts it
            got = await bob.next_event("chat", timeout=5)
            assert got["seq"] == 1
            assert got["text"] == "hello"
            # the sender's retry with the same clientId gets the first answer, no copy
            again = await alice.call("chat", {"room": "doc", "text": "hello", "clientId": "c1"})
            assert again["seq"] == 1
            await _settle()
            assert [m["seq"] for m in _events(bob, "chat")] == []
            snapshot = await store.load_room("doc", history_limit=10, chat_limit=10)
            assert [m.seq for m in snapshot.chat] == [1]


async def test_a_field_retry_is_answered_even_when_an_op_flushed_it_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = _SlowStore()
    async with open_test_server(store=store) as server, server.client("alice") as alice:
        await alice.join("doc")
        await alice.call("op", _op("doc", "a", "add", "n", "1", {}))
        store.delay = 1  # the keeper is busy: the next commands form one batch
        await alice.emit("op", _op("doc", "b", "add", "n", "2", {}))
        await trio.sleep(0.01)
        field = {"room": "doc", "operationId": "f1", "collection": "n", "id": "1",
                 "path": ["k"], "value": 1}
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def call(event: str, payload: dict[str, Any]) -> None:
                results.append(await alice.call(event, payload))

            nursery.start_soon(call, "field", field)
            await trio.sleep(0.001)
            nursery.start_soon(call, "op", _op("doc", "u", "update", "n", "1", {"z": 1}))
            await trio.sleep(0.001)
            nursery.start_soon(call, "field", field)  # a retry of f1
        assert len(results) == 3
        assert all(r["ok"] for r in results)
        f1 = [r for r in results if r["operationId"] == "f1"]
        assert f1[0]["seq"] == f1[1]["seq"]


async def test_a_stalled_room_refuses_more_writes_after_a_short_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = _SlowStore()
    async with open_test_server(store=store, room_inbox_size=4) as server:
        async with server.client("alice") as alice:
            await alice.join("doc")
            store.delay = 30  # storage stalls
            for i in range(8):
                await alice.emit("op", _op("doc", f"o{i}", "add", "n", str(i), {}))
            start = trio.current_time()
            busy = await alice.next_event("operation-error", timeout=10)
            assert busy["type"] == "RATE_LIMITED"
            assert busy["retryable"] is True
            assert trio.current_time() - start <= 1.5  # refused after the short wait
            # the connection still reads: relays and pings go on
            assert (await alice.call("cursor", {"room": "doc", "cursor": 1})) == {"ok": True}
