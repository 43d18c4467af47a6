"""Epochs: a room's document and its Yjs document each name their timeline, so a client
holding state from another timeline (a replaced document, restored storage) gets the
full state instead of a replay, and its old Yjs document is never merged back into the
new one (which would duplicate the content). Also the embedding API for Yjs
(``Server.yjs_json``, ``yjs_text``, ``replace_yjs``). In-process server, mock clock.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pycrdt
import pytest
import trio
import trio.testing

from collabtrio.client import Client
from collabtrio.errors import CollabError
from collabtrio.storage.memory import MemoryStore
from collabtrio.testing import open_test_server


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def _op(room: str, op_id: str, op: str, coll: str, eid: str, data: Any = None) -> dict[str, Any]:
    return {"room": room, "operationId": op_id, "op": op, "collection": coll, "id": eid,
            "data": data}


def _events(client: Client, name: str) -> list[Any]:
    return [data for event, data in client.pending_events() if event == name]


def text_update(text: str) -> tuple[pycrdt.Doc[Any], bytes]:
    """A fresh pycrdt document whose ``text`` holds ``text``, and its whole update."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.get("text", type=pycrdt.Text).insert(0, text)
    return doc, doc.get_update()


def text_of(*updates: bytes) -> str:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("text", type=pycrdt.Text))


# -- the document epoch -----------------------------------------------------------------


async def test_join_acks_carry_both_epochs_and_they_survive_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store) as server:
        async with server.client("alice") as alice:
            ack = await alice.join("doc")
            assert isinstance(ack["epoch"], str)
            assert isinstance(ack["yjsEpoch"], str)
            assert ack["epoch"] != ack["yjsEpoch"]
            sync = await alice.call("yjs-sync", {"room": "doc",
                                                 "stateVector": pycrdt.Doc().get_state()})
            assert sync["epoch"] == ack["yjsEpoch"]
        # a connect-time room's joined event carries them too
        async with server.client("bob", auth={"rooms": ["doc"]}) as bob:
            joined = await bob.next_event("joined")
            assert (joined["epoch"], joined["yjsEpoch"]) == (ack["epoch"], ack["yjsEpoch"])
    async with open_test_server(store=store) as server, server.client("carol") as carol:
        again = await carol.join("doc")
        assert (again["epoch"], again["yjsEpoch"]) == (ack["epoch"], ack["yjsEpoch"])


async def test_join_with_the_epoch_replays_and_with_another_gets_the_full_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        async with server.client("bob") as bob:
            first = await bob.join("doc")
            epoch = first["epoch"]
            for i in range(3):
                await bob.call("op", _op("doc", f"b{i}", "add", "c", str(i), {"i": i}))
            async with server.client("alice") as alice:
                ack = await alice.call("join", {"room": "doc", "since": 1, "epoch": epoch})
                assert ack["recovered"] is True
                assert ack["state"] is None
                assert [e["seq"] for e in _events(alice, "op")] == [2, 3]
            async with server.client("alice") as alice:
                ack = await alice.call("join", {"room": "doc", "since": 1,
                                                "epoch": "another-timeline"})
                assert ack["recovered"] is False
                assert ack["epoch"] == epoch
                assert sorted(ack["state"]["c"]) == ["0", "1", "2"]
                assert _events(alice, "op") == []
            async with server.client("alice") as alice:  # since alone: as before
                ack = await alice.call("join", {"room": "doc", "since": 2})
                assert ack["recovered"] is True
                for bad in ["", "x" * 65, "spaces are not allowed", 7]:
                    ack = await alice.call("join", {"room": "doc", "since": 2, "epoch": bad})
                    assert ack["error"]["code"] == "VALIDATION", bad


async def test_replace_renews_the_epoch_and_members_learn_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store) as server:
        async with server.client("boss", rooms={"doc": "admin"}) as boss, \
                server.client("bob") as bob:
            old = (await boss.join("doc"))["epoch"]
            await bob.join("doc")
            await bob.call("op", _op("doc", "b1", "add", "c", "1", {"v": 1}))
            ack = await boss.call("op", _op("doc", "r1", "replace", "*", "*",
                                            {"c": {"9": {"v": 9}}}))
            assert ack["ok"] is True
            new = ack["epoch"]
            assert isinstance(new, str)
            assert new != old
            event = await bob.next_event("op")
            while event["op"] != "replace":
                event = await bob.next_event("op")
            assert (event["seq"], event["epoch"]) == (ack["seq"], new)
            # a retry of the replace gets the first answer, epoch included
            assert (await boss.call("op", _op("doc", "r1", "replace", "*", "*", {})))[
                "epoch"] == new
            await bob.call("op", _op("doc", "b2", "add", "c", "2", {"v": 2}))
            # someone who saw seq 1 of the old timeline gets the full state
            async with server.client("alice") as alice:
                again = await alice.call("join", {"room": "doc", "since": 1, "epoch": old})
                assert again["recovered"] is False
                assert again["epoch"] == new
                assert again["state"] == {"c": {"9": {"v": 9}, "2": {"v": 2}}}
            # a member of the new timeline replays from it
            async with server.client("alice") as alice:
                again = await alice.call("join", {"room": "doc", "since": ack["seq"],
                                                  "epoch": new})
                assert again["recovered"] is True
                assert [e["id"] for e in _events(alice, "op")] == ["2"]
    snapshot = await store.load_room("doc", history_limit=10, chat_limit=0)
    assert snapshot.epoch == new  # stored by the replace's own commit


def _restore(backup: Path, db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, db)


async def test_a_restored_backup_brings_its_epoch_back(tmp_path: Path) -> None:
    """Copy the SQLite file, go on (a replace starts a new timeline, more writes),
    restore the copy: a client of the newer timeline gets the restored full state.
    (Real clock: SQLite works on threads, which a jumping mock clock would outrun.)"""
    db = tmp_path / "collab.db"
    url = f"sqlite:///{db}"
    async with open_test_server(db=url) as server:
        async with server.client("boss", rooms={"doc": "admin"}) as boss:
            backup_epoch = (await boss.join("doc"))["epoch"]
            await boss.call("op", _op("doc", "o1", "add", "c", "kept", {"v": 1}))
    backup = tmp_path / "backup.db"
    shutil.copy(db, backup)  # the server is stopped: its WAL was checkpointed
    async with open_test_server(db=url) as server:
        async with server.client("boss", rooms={"doc": "admin"}) as boss:
            assert (await boss.join("doc"))["epoch"] == backup_epoch
            ack = await boss.call("op", _op("doc", "r", "replace", "*", "*",
                                            {"c": {"new": {"v": 2}}}))
            newer_epoch = ack["epoch"]
            for i in range(3):
                last = await boss.call("op", _op("doc", f"n{i}", "add", "c", f"n{i}", {}))
    _restore(backup, db)
    async with open_test_server(db=url) as server:
        async with server.client("boss", rooms={"doc": "admin"}) as boss:
            assert (await boss.join("doc"))["epoch"] == backup_epoch
            # the restored timeline moves past the client's seq again
            for i in range(5):
                assert (await boss.call("op", _op("doc", f"x{i}", "add", "c", f"x{i}", {})))[
                    "ok"]
        async with server.client("client") as client:
            ack = await client.call("join", {"room": "doc", "since": last["seq"],
                                             "epoch": newer_epoch})
            assert ack["epoch"] == backup_epoch
            assert ack["recovered"] is False
            assert sorted(ack["state"]["c"]) == ["kept", "x0", "x1", "x2", "x3", "x4"]
            assert _events(client, "op") == []


# -- the Yjs epoch, and the duplicate content it prevents --------------------------------


async def test_a_reseeded_document_does_not_take_the_old_one_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The server's Yjs document is re-seeded from its text ("hello") in a fresh pycrdt
    document while a client keeps its old document: merged, the two give the content
    twice. The client's old-timeline update is refused and the text stays "hello"."""
    async with open_test_server() as server, server.client("alice") as alice:
        joined = await alice.join("doc")
        old_epoch = joined["yjsEpoch"]
        client_doc, first = text_update("hello")
        assert (await alice.call("yjs-update", {"room": "doc", "update": first}))["ok"]
        assert await server.server.yjs_text("doc", "text") == "hello"
        # an admin re-seeds the document from its text
        _, reseeded = text_update(await server.server.yjs_text("doc", "text"))
        # the failure this prevents: the old document merged into the re-seeded one
        assert text_of(reseeded, client_doc.get_update()) == "hellohello"
        new_epoch = await server.server.replace_yjs("doc", reseeded)
        assert new_epoch != old_epoch
        reset = await alice.next_event("yjs-reset")
        assert reset == {"room": "doc", "epoch": new_epoch}
        # the client, not yet resynced, sends its whole old document back
        stale = client_doc.get_update()
        for payload in ({"room": "doc", "update": stale, "epoch": old_epoch},
                        {"room": "doc", "update": stale}):
            ack = await alice.call("yjs-update", payload)
            assert ack["error"]["code"] == "EPOCH_MISMATCH"
            assert ack["error"]["retryable"] is False
        ack = await alice.call("yjs-sync", {"room": "doc", "stateVector": b"\x00",
                                            "epoch": old_epoch})
        assert ack["error"]["code"] == "EPOCH_MISMATCH"
        assert await server.server.yjs_text("doc", "text") == "hello"
        # it drops its document and syncs again: it is on the new timeline
        ack = await alice.call("yjs-sync", {"room": "doc",
                                            "stateVector": pycrdt.Doc().get_state()})
        assert ack["epoch"] == new_epoch
        fresh: pycrdt.Doc[Any] = pycrdt.Doc()
        fresh.apply_update(ack["update"])
        text = fresh.get("text", type=pycrdt.Text)
        assert str(text) == "hello"
        before = fresh.get_state()
        text += " world"
        assert (await alice.call("yjs-update", {"room": "doc",
                                                "update": fresh.get_update(before)}))["ok"]
        assert await server.server.yjs_text("doc", "text") == "hello world"
        # a new connection's membership starts at the current epoch
        async with server.client("bob") as bob:
            assert (await bob.join("doc"))["yjsEpoch"] == new_epoch


async def test_the_reset_is_stored_atomically_and_survives_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store) as server, server.client("a") as a:
        await a.join("doc")
        for word in ("one ", "two "):
            _, update = text_update(word)
            await a.call("yjs-update", {"room": "doc", "update": update})
        _, seeded = text_update("seed")
        epoch = await server.server.replace_yjs("doc", seeded)
    state = await store.load_yjs("doc")
    assert (state.log, state.epoch) == ([], epoch)
    assert state.snapshot is not None
    assert text_of(state.snapshot) == "seed"
    async with open_test_server(store=store) as server, server.client("b") as b:
        assert (await b.join("doc"))["yjsEpoch"] == epoch
        assert await server.server.yjs_text("doc", "text") == "seed"
        # a delete: an empty document, yet another epoch
        gone = await server.server.replace_yjs("doc")
        assert gone != epoch
        assert (await b.next_event("yjs-reset"))["epoch"] == gone
        assert await server.server.yjs_json("doc") == {}
        with pytest.raises(CollabError) as info:
            await server.server.replace_yjs("doc", b"\xff\xff\xff")
        assert info.value.code == "VALIDATION"
        with pytest.raises(CollabError) as info:
            await server.server.yjs_json("no such room!")
        assert info.value.code == "INVALID_ROOM"


async def test_a_failed_reset_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    async with open_test_server(store=store) as server, server.client("a") as a:
        epoch = (await a.join("doc"))["yjsEpoch"]
        _, update = text_update("kept")
        await a.call("yjs-update", {"room": "doc", "update": update})
        store.fail_next()
        with pytest.raises(CollabError) as info:
            await server.server.replace_yjs("doc", text_update("lost")[1])
        assert info.value.code == "STORAGE_UNAVAILABLE"
        assert await server.server.yjs_text("doc", "text") == "kept"
        ack = await a.call("yjs-sync", {"room": "doc", "stateVector": b"\x00"})
        assert ack["epoch"] == epoch
        assert _events(a, "yjs-reset") == []


# -- the embedding API --------------------------------------------------------------------


def _rich_document() -> bytes:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc["title"] = pycrdt.Text("Plan")
    doc["items"] = pycrdt.Array(["a", 2, pycrdt.Map({"done": True})])
    doc["meta"] = pycrdt.Map({"owner": "alice", "tags": pycrdt.Array(["x"]),
                              "note": pycrdt.Text("n")})
    doc["body"] = pycrdt.XmlFragment([pycrdt.XmlElement("p", {"class": "c"},
                                                        [pycrdt.XmlText("hi")])])
    return doc.get_update()


RICH_JSON = {
    "title": "Plan",
    "items": ["a", 2, {"done": True}],
    "meta": {"owner": "alice", "tags": ["x"], "note": "n"},
    "body": '<p class="c">hi</p>',
}


async def test_yjs_json_and_text_of_an_open_and_a_closed_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with open_test_server(store=store, room_idle_s=5) as server:
        api = server.server
        async with server.client("a") as a:
            await a.join("doc")
            assert await api.yjs_json("doc") == {}
            assert await api.yjs_text("doc", "title") == ""
            await a.call("yjs-update", {"room": "doc", "update": _rich_document()})
            # the room is open (a member is in it)
            assert await api.yjs_json("doc") == RICH_JSON
            assert await api.yjs_text("doc", "title") == "Plan"
            assert await api.yjs_text("doc", "missing") == ""
            # reading changed nothing: a client still syncs the same document
            ack = await a.call("yjs-sync", {"room": "doc",
                                            "stateVector": pycrdt.Doc().get_state()})
            assert text_of(ack["update"]) == ""  # no root called "text"
        await trio.sleep(10)
        assert api.registry.get("doc") is None  # closed
        assert await api.yjs_json("doc") == RICH_JSON  # opened again to read it
        assert await api.yjs_text("doc", "title") == "Plan"
        await trio.sleep(10)
        assert api.registry.get("doc") is None  # and it closes again
        # a room nobody ever used
        assert await api.yjs_json("never-used") == {}
