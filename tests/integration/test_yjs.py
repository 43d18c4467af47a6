"""Yjs over Socket.IO: one CRDT document per room, relayed, synced, stored before it is
acknowledged, compacted without loss, with awareness cleaned up when a member goes.

Clients build their updates with pycrdt, the way a Python Yjs client would.
In-process server, in-memory store (shared across restarts), mock clock.
"""

from __future__ import annotations

from typing import Any

import pycrdt
import pytest
import trio
import trio.testing

from collabtrio.client import Client
from collabtrio.protocol import yprotocol
from collabtrio.storage.memory import MemoryStore
from collabtrio.testing import open_test_server


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Editor:
    """A pycrdt document whose local edits are collected as updates to send."""

    def __init__(self) -> None:
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        self.text = self.doc.get("text", type=pycrdt.Text)
        self.outbox: list[bytes] = []
        self.doc.observe(lambda event: self.outbox.append(event.update))

    def type(self, at: int, chars: str) -> bytes:
        self.text.insert(at, chars)
        return self.outbox.pop()

    def receive(self, update: bytes) -> None:
        self.doc.apply_update(update)

    def __str__(self) -> str:
        return str(self.text)


def _received(client: Client, event: str) -> list[dict[str, Any]]:
    return [data for name, data in client.pending_events() if name == event]


async def _sync(client: Client, room: str, editor: Editor | None = None) -> Editor:
    editor = editor or Editor()
    ack = await client.call("yjs-sync", {"room": room, "stateVector": editor.doc.get_state()})
    assert ack["ok"] is True
    assert isinstance(ack["update"], bytes)
    editor.receive(ack["update"])
    return editor


async def test_updates_are_relayed_acked_and_synced(autojump_clock: trio.testing.MockClock
                                                    ) -> None:
    async with open_test_server() as server:
        async with server.client("alice") as alice, server.client("bob") as bob:
            await alice.join("doc")
            await bob.join("doc")
            mine, theirs = Editor(), Editor()
            ack = await alice.call("yjs-update", {"room": "doc",
                                                  "update": mine.type(0, "hello")})
            assert ack == {"ok": True}
            got = await bob.next_event("yjs-update")
            assert got["room"] == "doc"
            assert got["userId"] == "alice"
            assert got["socketId"] == alice.sid
            theirs.receive(got["update"])
            assert str(theirs) == "hello"
            # and back: bob's edit reaches alice
            await bob.call("yjs-update", {"room": "doc", "update": theirs.type(5, " world")})
            mine.receive((await alice.next_event("yjs-update"))["update"])
            assert str(mine) == str(theirs) == "hello world"
            assert _received(alice, "yjs-update") == []  # never echoed to the sender
            # a late joiner gets exactly what it is missing
            async with server.client("carol") as carol:
                await carol.join("doc")
                late = await _sync(carol, "doc")
                assert str(late) == "hello world"
                again = await carol.call("yjs-sync", {"room": "doc",
                                                      "stateVector": late.doc.get_state()})
                before = str(late)
                late.receive(again["update"])
                assert str(late) == before


async def test_acknowledged_updates_survive_a_restart_and_compaction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    editor = Editor()
    async with open_test_server(store=store, yjs_compact_updates=3) as server:
        async with server.client("alice") as alice:
            await alice.join("doc")
            for i in range(7):
                ack = await alice.call("yjs-update", {"room": "doc",
                                                      "update": editor.type(i, str(i))})
                assert ack == {"ok": True}
    state = await store.load_yjs("doc")
    assert state.snapshot is not None  # compacted at least once (and when the room closed)
    async with open_test_server(store=store) as server:
        async with server.client("bob") as bob:
            await bob.join("doc")
            assert str(await _sync(bob, "doc")) == "0123456"


async def test_an_update_waiting_for_its_dependencies_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An update that arrives before the one it builds on is parked by the document (and
    left out of get_update), but stored: once its dependency arrives, after a restart
    and a compaction, the text is whole."""
    store = MemoryStore()
    source = Editor()
    first = source.type(0, "abc")
    second = source.type(3, "def")
    async with open_test_server(store=store) as server, server.client("a") as a:
        await a.join("doc")
        assert await a.call("yjs-update", {"room": "doc", "update": second}) == {"ok": True}
        assert str(await _sync(a, "doc")) == ""
    async with open_test_server(store=store) as server, server.client("a") as a:
        await a.join("doc")
        assert await a.call("yjs-update", {"room": "doc", "update": first}) == {"ok": True}
        assert str(await _sync(a, "doc")) == "abcdef"


async def test_refusals(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(max_document_bytes=200) as server:
        async with server.client("reader", rooms={"doc": "read"}) as reader, \
                server.client("writer") as writer:
            await reader.join("doc")
            await writer.join("doc")
            editor = Editor()
            ack = await reader.call("yjs-update", {"room": "doc",
                                                   "update": editor.type(0, "x")})
            assert ack["error"]["code"] == "FORBIDDEN"
            assert str(await _sync(reader, "doc")) == ""  # reading is allowed
            ack = await writer.call("yjs-update", {"room": "doc", "update": b"\xff\x00\x13"})
            assert ack["error"]["code"] == "VALIDATION"
            ack = await writer.call("yjs-update", {"room": "doc", "update": "base64?"})
            assert ack["error"]["code"] == "VALIDATION"  # binary only, never a string
            ack = await writer.call("yjs-sync", {"room": "doc", "stateVector": b"\xff\xff\xff"})
            assert ack["error"]["code"] == "VALIDATION"
            ack = await writer.call("yjs-update", {"room": "doc",
                                                   "update": Editor().type(0, "y" * 300)})
            assert ack["error"]["code"] == "TOO_LARGE"
            ack = await writer.call("yjs-update", {"room": "other", "update": b"\x00\x00"})
            assert ack["error"]["code"] == "NOT_JOINED"
            # the document is as it was, and the room carries on
            assert (await writer.call("yjs-update", {"room": "doc",
                                                     "update": Editor().type(0, "ok")}))["ok"]
            assert str(await _sync(reader, "doc")) == "ok"


async def test_a_failed_commit_is_not_acknowledged_and_is_stored_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    editor = Editor()
    async with open_test_server(store=store) as server, server.client("a") as a:
        await a.join("doc")
        await a.call("yjs-update", {"room": "doc", "update": editor.type(0, "x")})  # loaded
        store.fail_next()
        ack = await a.call("yjs-update", {"room": "doc", "update": editor.type(1, "y")})
        assert ack["error"]["code"] == "STORAGE_UNAVAILABLE"
        assert ack["error"]["retryable"] is True
        assert (await a.call("yjs-update", {"room": "doc",
                                            "update": editor.type(2, "z")}))["ok"]
    async with open_test_server(store=store) as server, server.client("b") as b:
        await b.join("doc")
        assert str(await _sync(b, "doc")) == "xyz"


async def test_awareness_is_relayed_and_removed_when_its_owner_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("watcher") as watcher:
            await watcher.join("doc")
            async with server.client("a", rooms={"doc": "read"}) as a:
                await a.join("doc")
                update = yprotocol.encode_awareness([
                    yprotocol.AwarenessEntry(41, 3, '{"user":{"name":"A"}}'),
                    yprotocol.AwarenessEntry(42, 1, '{"cursor":7}')])
                assert await a.call("yjs-awareness", {"room": "doc", "update": update}) == \
                    {"ok": True}  # read members may send awareness
                got = await watcher.next_event("yjs-awareness")
                assert got["update"] == update
                assert got["userId"] == "a"
                ack = await a.call("yjs-awareness", {"room": "doc", "update": b"\x05"})
                assert ack["error"]["code"] == "VALIDATION"
                # a joiner learns the current states before its join ack
                async with server.client("late") as late:
                    await late.join("doc")
                    [states] = _received(late, "yjs-awareness")
                    entries = yprotocol.decode_awareness(states["update"])
                    assert {(e.client_id, e.clock) for e in entries} == {(41, 3), (42, 1)}
            # a dropped: the others are told its clients are gone (null at the same clock)
            gone = await watcher.next_event("yjs-awareness")
            entries = yprotocol.decode_awareness(gone["update"])
            assert [(e.client_id, e.clock, e.state) for e in entries] == [
                (41, 3, "null"), (42, 1, "null")]
