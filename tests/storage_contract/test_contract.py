"""The storage contract (``collabtrio/storage/base.py``), run against every backend.

Every test taking ``store`` (or ``store_url``) runs once per backend: sqlite, postgres
and memory (see ``conftest.py``). A few backend-specific tests follow at the end.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
import trio.testing

from collabtrio.storage import (
    ChatMessage,
    EntityWrite,
    HistoryEntry,
    OperationRecord,
    RoomChanges,
    RoomEpochs,
    SeqConflict,
    StorageError,
    StorageUnavailable,
    Store,
    UnstorableValue,
    YjsChanges,
    YjsState,
    open_store,
)
from collabtrio.storage.migrations import LATEST_VERSION

LIMIT = 100


def hist(seq: int, event: str = "op", **extra: Any) -> HistoryEntry:
    return HistoryEntry(seq=seq, event=event, payload={"seq": seq, **extra},
                        created_at=1000.0 + seq)


def chat(seq: int, text: str = "", client_id: str | None = None) -> ChatMessage:
    return ChatMessage(seq=seq, user_id=f"u{seq % 3}", user_name=f"User {seq % 3}",
                       text=text or f"message {seq}", client_id=client_id,
                       created_at=2000.0 + seq / 8)


def set_(collection: str, eid: str, **data: Any) -> EntityWrite:
    return EntityWrite(collection, eid, data)


def delete(collection: str, eid: str) -> EntityWrite:
    return EntityWrite(collection, eid, None)


async def load(store: Store, room: str, history_limit: int = LIMIT, chat_limit: int = LIMIT) -> Any:
    return await store.load_room(room, history_limit=history_limit, chat_limit=chat_limit)


async def test_ping_and_schema_version(store: Store) -> None:
    await store.ping()
    assert await store.schema_version() == LATEST_VERSION


async def test_unknown_room_is_an_empty_snapshot(store: Store) -> None:
    snap = await load(store, "nobody-here")
    assert snap.seq == 0
    assert snap.entities == {}
    assert snap.history == []
    assert snap.operations == {}
    assert snap.chat == []
    assert await store.chat_page("nobody-here", before=None, limit=10) == []


async def test_empty_commit_is_a_no_op(store: Store) -> None:
    await store.commit([])
    assert (await load(store, "r")).seq == 0


async def test_commit_and_reload(store: Store) -> None:
    await store.commit([RoomChanges(
        "room-1", seq=3, history_limit=LIMIT, base_seq=0,
        entities=[set_("cards", "a", title="A", n=1), set_("cards", "b", title="B"),
                  set_("lists", "x", name="X")],
        history=[hist(1), hist(2, "field"), hist(3, "chat")],
        operations=[OperationRecord("op-1", 1, {"ok": True, "ids": ["a", "b"]})],
        chat=[chat(3, "hello", client_id="c-1")],
    )])
    snap = await load(store, "room-1")
    assert snap.seq == 3
    assert snap.entities == {"cards": {"a": {"title": "A", "n": 1}, "b": {"title": "B"}},
                             "lists": {"x": {"name": "X"}}}
    assert snap.history == [hist(1), hist(2, "field"), hist(3, "chat")]
    assert snap.operations == {"op-1": OperationRecord("op-1", 1, {"ok": True, "ids": ["a", "b"]})}
    assert snap.chat == [chat(3, "hello", client_id="c-1")]

    # update one, delete one, add one: only those rows change
    await store.commit([RoomChanges(
        "room-1", seq=5, history_limit=LIMIT, base_seq=3,
        entities=[set_("cards", "a", title="A2"), delete("cards", "b"),
                  set_("cards", "c", title="C"), delete("cards", "never-existed")],
        history=[hist(5), hist(4)],  # inserted in any order, loaded ascending
        operations=[OperationRecord("op-2", 5, {"ok": False})],
    )])
    snap = await load(store, "room-1")
    assert snap.seq == 5
    assert snap.entities == {"cards": {"a": {"title": "A2"}, "c": {"title": "C"}},
                             "lists": {"x": {"name": "X"}}}
    assert [h.seq for h in snap.history] == [1, 2, 3, 4, 5]
    assert set(snap.operations) == {"op-1", "op-2"}
    assert snap.chat == [chat(3, "hello", client_id="c-1")]
    # other rooms are not touched
    assert (await load(store, "room-2")).seq == 0


async def test_a_collection_whose_entities_are_all_deleted_disappears(store: Store) -> None:
    await store.commit([RoomChanges("r", 1, LIMIT, base_seq=0, entities=[set_("c", "1", v=1)])])
    await store.commit([RoomChanges("r", 2, LIMIT, base_seq=1, entities=[delete("c", "1")])])
    assert (await load(store, "r")).entities == {}


async def test_the_later_write_to_the_same_entity_wins(store: Store) -> None:
    await store.commit([RoomChanges("r", 1, LIMIT, base_seq=0, entities=[
        set_("c", "1", v=1), set_("c", "1", v=2),        # set, set
        set_("c", "2", v=1), delete("c", "2"),            # set, delete
        delete("c", "3"), set_("c", "3", v=3),            # delete, set
    ])])
    assert (await load(store, "r")).entities == {"c": {"1": {"v": 2}, "3": {"v": 3}}}


async def test_replace_all_deletes_every_entity_first(store: Store) -> None:
    await store.commit([RoomChanges("r", 1, LIMIT, base_seq=0, entities=[
        set_("a", "1", v=1), set_("a", "2", v=2), set_("b", "1", v=3)])])
    await store.commit([RoomChanges("r", 2, LIMIT, base_seq=1, replace_all=True, entities=[
        set_("a", "2", v=20), set_("c", "9", v=9), delete("a", "1")])])
    assert (await load(store, "r")).entities == {"a": {"2": {"v": 20}}, "c": {"9": {"v": 9}}}
    await store.commit([RoomChanges("r", 3, LIMIT, base_seq=2, replace_all=True)])
    snap = await load(store, "r")
    assert snap.entities == {}
    assert snap.seq == 3


async def test_history_and_operations_are_trimmed_to_history_limit(store: Store) -> None:
    for seq in range(1, 11):
        await store.commit([RoomChanges(
            "r", seq, history_limit=4, base_seq=seq - 1, history=[hist(seq)],
            operations=[OperationRecord(f"op-{seq}", seq, {"n": seq})],
        )])
    snap = await load(store, "r", history_limit=100)
    # rows with seq <= 10 - 4 are gone, from history and operations alike
    assert [h.seq for h in snap.history] == [7, 8, 9, 10]
    assert sorted(snap.operations) == ["op-10", "op-7", "op-8", "op-9"]
    # a bigger seq jump trims more; the limit applies per room
    await store.commit([
        RoomChanges("r", 20, history_limit=4, base_seq=10, history=[hist(20)]),
        RoomChanges("other", 3, history_limit=4, base_seq=0,
                    history=[hist(1), hist(2), hist(3)]),
    ])
    assert [h.seq for h in (await load(store, "r")).history] == [20]
    assert (await load(store, "r")).operations == {}
    assert [h.seq for h in (await load(store, "other")).history] == [1, 2, 3]


async def test_chat_is_not_trimmed_with_history(store: Store) -> None:
    await store.commit([RoomChanges("r", 10, history_limit=2, base_seq=0,
                                    history=[hist(s) for s in range(1, 11)],
                                    chat=[chat(s) for s in range(1, 11)])])
    snap = await load(store, "r")
    assert [h.seq for h in snap.history] == [9, 10]
    assert [m.seq for m in snap.chat] == list(range(1, 11))


async def test_load_room_limits(store: Store) -> None:
    await store.commit([RoomChanges(
        "r", 20, history_limit=100, base_seq=0,
        history=[hist(s) for s in range(1, 21)],
        operations=[OperationRecord(f"op-{s}", s, {}) for s in range(1, 21)],
        chat=[chat(s) for s in range(1, 21, 2)],  # odd seqs 1..19
    )])
    snap = await load(store, "r", history_limit=5, chat_limit=3)
    assert snap.seq == 20
    assert [h.seq for h in snap.history] == [16, 17, 18, 19, 20]
    # the operation records of that window: seq > 20 - 5
    assert sorted(o.seq for o in snap.operations.values()) == [16, 17, 18, 19, 20]
    assert [m.seq for m in snap.chat] == [15, 17, 19]
    snap = await load(store, "r", history_limit=0, chat_limit=0)
    assert (snap.history, snap.operations, snap.chat) == ([], {}, [])
    assert snap.seq == 20


async def test_chat_page(store: Store) -> None:
    await store.commit([RoomChanges("r", 30, history_limit=100, base_seq=0,
                                    chat=[chat(s) for s in range(1, 31, 3)])])  # 1,4,..,28
    await store.commit([RoomChanges("other", 5, history_limit=100, base_seq=0,
                                    chat=[chat(5)])])
    newest = await store.chat_page("r", before=None, limit=4)
    assert [m.seq for m in newest] == [19, 22, 25, 28]
    assert newest[-1] == chat(28)
    older = await store.chat_page("r", before=newest[0].seq, limit=4)
    assert [m.seq for m in older] == [7, 10, 13, 16]
    oldest = await store.chat_page("r", before=older[0].seq, limit=4)
    assert [m.seq for m in oldest] == [1, 4]
    assert await store.chat_page("r", before=oldest[0].seq, limit=4) == []
    assert [m.seq for m in await store.chat_page("r", before=11, limit=100)] == [1, 4, 7, 10]
    assert await store.chat_page("r", before=None, limit=0) == []


async def test_many_rooms_in_one_commit(store: Store) -> None:
    await store.commit([
        RoomChanges(f"room-{i}", seq=i + 1, history_limit=LIMIT, base_seq=0,
                    entities=[set_("c", str(i), i=i)], history=[hist(i + 1)],
                    chat=[chat(i + 1)])
        for i in range(20)
    ])
    for i in range(20):
        snap = await load(store, f"room-{i}")
        assert snap.seq == i + 1
        assert snap.entities == {"c": {str(i): {"i": i}}}
        assert snap.history == [hist(i + 1)]
        assert snap.chat == [chat(i + 1)]


async def test_the_same_room_twice_in_one_commit_applies_in_order(store: Store) -> None:
    await store.commit([
        RoomChanges("r", 1, LIMIT, base_seq=0, entities=[set_("c", "1", v=1)], history=[hist(1)]),
        RoomChanges("r", 2, LIMIT, base_seq=1, replace_all=True, entities=[set_("c", "2", v=2)],
                    history=[hist(2)]),
        RoomChanges("r", 3, LIMIT, base_seq=2, entities=[set_("c", "2", v=3)], history=[hist(3)]),
    ])
    snap = await load(store, "r")
    assert snap.seq == 3
    assert snap.entities == {"c": {"2": {"v": 3}}}
    assert [h.seq for h in snap.history] == [1, 2, 3]


def _good_batch() -> list[RoomChanges]:
    return [
        RoomChanges("a", 2, LIMIT, base_seq=1,
                    entities=[set_("c", "new", v=1), delete("c", "old")],
                    history=[hist(2)], operations=[OperationRecord("op-a2", 2, {})],
                    chat=[chat(2)]),
        RoomChanges("fresh", 1, LIMIT, base_seq=0,
                    entities=[set_("c", "1", v=1)], history=[hist(1)]),
    ]


@pytest.mark.parametrize("clash", ["history", "chat", "operation", "within-batch"])
async def test_a_failing_batch_writes_nothing(store: Store, clash: str) -> None:
    """A primary key violation anywhere in a batch rolls the whole batch back; commit
    raises StorageUnavailable (the contract's error for "could not commit", but for a
    seq conflict: see test_seq_conflict.py)."""
    await store.commit([RoomChanges(
        "a", 1, LIMIT, base_seq=0, entities=[set_("c", "old", v=0)], history=[hist(1)],
        operations=[OperationRecord("op-a1", 1, {})], chat=[chat(1)])])
    before = await load(store, "a")
    batch = _good_batch()
    if clash == "history":      # seq 1 of room a is stored already
        batch.append(RoomChanges("a", 3, LIMIT, base_seq=2, history=[hist(1)]))
    elif clash == "chat":
        batch.append(RoomChanges("a", 3, LIMIT, base_seq=2, chat=[chat(1)]))
    elif clash == "operation":
        batch.append(RoomChanges("a", 3, LIMIT, base_seq=2,
                                   operations=[OperationRecord("op-a1", 3, {})]))
    else:                       # two new rows with the same key in one batch
        batch.append(RoomChanges("fresh", 2, LIMIT, base_seq=1, history=[hist(1)]))
    with pytest.raises(StorageUnavailable):
        await store.commit(batch)
    assert await load(store, "a") == before
    assert (await load(store, "fresh")).seq == 0
    assert (await load(store, "fresh")).entities == {}
    # the store is still usable, and the good part commits on its own
    await store.commit(_good_batch())
    snap = await load(store, "a")
    assert snap.seq == 2
    assert snap.entities == {"c": {"new": {"v": 1}}}
    assert (await load(store, "fresh")).seq == 1


async def test_data_that_is_not_json_is_refused_and_nothing_written(store: Store) -> None:
    # the data's fault, not an outage: UnstorableValue, not StorageUnavailable (the group
    # commit retries the other rooms of the transaction without it)
    for bad in ({"x": math.nan}, {"x": math.inf}, {"x": object()}, {"x": "\ud800"},
                {"\udfff": 1}):
        with pytest.raises(UnstorableValue):
            await store.commit([
                RoomChanges("ok", 1, LIMIT, base_seq=0, entities=[set_("c", "1", v=1)]),
                RoomChanges("bad", 1, LIMIT, base_seq=0,
                            entities=[EntityWrite("c", "1", bad)]),
            ])
    with pytest.raises(UnstorableValue):
        await store.commit([RoomChanges("bad", 1, LIMIT, base_seq=0, history=[
            HistoryEntry(1, "op", {"v": math.nan}, 1.0)])])
    assert (await load(store, "ok")).seq == 0
    assert (await load(store, "bad")).seq == 0


JSON_SAMPLES: list[Any] = [
    "unicode: é ü 中文 🎉 \u2028 ' \" \\ \n\t",
    {"nested": {"deep": [1, [2, [3, {"x": None}]]], "empty": {}, "list": []}},
    2**63 - 1,
    -(2**63),
    12345678901234567890123456789,  # beyond 64 bits
    0.1,
    -2.5,
    1.5e-7,
    123456.789,
    True,
    False,
    None,
    "",
    [{"a": 1}, {"b": [True, None, 1.25]}],
]


async def test_json_round_trip(store: Store) -> None:
    data = {f"k{i}": v for i, v in enumerate(JSON_SAMPLES)}
    data["🔑 unicode key"] = "v"
    await store.commit([RoomChanges(
        "r-é", 1, LIMIT, base_seq=0,
        entities=[EntityWrite("col ü", "id/1 🎉", data)],
        history=[HistoryEntry(1, "op", {"seq": 1, "data": data}, 1.25)],
        operations=[OperationRecord("op-é", 1, {"result": data})],
        chat=[ChatMessage(1, "user-ü", "Zoë 🎉", "text 中文\nline 2", "client-é", 3.5)],
    )])
    snap = await load(store, "r-é")
    got = snap.entities["col ü"]["id/1 🎉"]
    assert got == data
    for i, v in enumerate(JSON_SAMPLES):  # types too: an int stays an int, a float a float
        assert type(got[f"k{i}"]) is type(v)
    assert snap.history[0].payload == {"seq": 1, "data": data}
    assert snap.history[0].created_at == 1.25
    assert snap.operations["op-é"].result == {"result": data}
    assert snap.chat == [ChatMessage(1, "user-ü", "Zoë 🎉", "text 中文\nline 2", "client-é", 3.5)]


async def test_float_timestamps_keep_their_precision(store: Store) -> None:
    now = time.time()
    await store.commit([RoomChanges("r", 1, LIMIT, base_seq=0,
                                    history=[HistoryEntry(1, "op", {}, now)],
                                    chat=[ChatMessage(1, "u", "U", "t", None, now)])])
    snap = await load(store, "r")
    assert snap.history[0].created_at == now
    assert snap.chat[0].created_at == now


async def test_returned_data_is_not_aliased_with_stored_data(store: Store) -> None:
    data: dict[str, Any] = {"list": [1, 2], "inner": {"v": 1}}
    await store.commit([RoomChanges("r", 1, LIMIT, base_seq=0,
                                    entities=[EntityWrite("c", "1", data)],
                                    history=[HistoryEntry(1, "op", data, 1.0)])])
    data["list"].append(3)  # the caller keeps mutating its objects
    snap = await load(store, "r")
    snap.entities["c"]["1"]["inner"]["v"] = 99
    snap.history[0].payload["list"].clear()
    again = await load(store, "r")
    assert again.entities == {"c": {"1": {"list": [1, 2], "inner": {"v": 1}}}}
    assert again.history[0].payload == {"list": [1, 2], "inner": {"v": 1}}


async def test_grants(store: Store) -> None:
    assert await store.has_grants() is False
    assert await store.grants_for("alice") == {}
    v0 = await store.grants_version()
    await store.set_grant("room-1", "alice", "write")
    v1 = await store.grants_version()
    assert v1 != v0
    assert await store.has_grants() is True
    await store.set_grant("team-*", "alice", "read")
    await store.set_grant("team-*", "bob", "admin")
    assert await store.grants_for("alice") == {"room-1": "write", "team-*": "read"}
    assert await store.grants_for("bob") == {"team-*": "admin"}
    v2 = await store.grants_version()
    assert v2 not in (v0, v1)
    await store.set_grant("room-1", "alice", "admin")  # change a role
    assert (await store.grants_for("alice"))["room-1"] == "admin"
    v3 = await store.grants_version()
    assert v3 != v2
    await store.set_grant("room-1", "alice", None)  # revoke
    assert await store.grants_for("alice") == {"team-*": "read"}
    assert await store.grants_version() != v3
    await store.set_grant("team-*", "alice", None)
    await store.set_grant("team-*", "bob", None)
    assert await store.has_grants() is False
    with pytest.raises(ValueError, match="unknown role"):
        await store.set_grant("room-1", "alice", "owner")  # type: ignore[arg-type]


async def test_reopen_keeps_data(store: Store) -> None:
    await store.commit([RoomChanges("r", 7, LIMIT, base_seq=0,
                                    entities=[set_("c", "1", v="é")],
                                    history=[hist(7)],
                                    operations=[OperationRecord("op", 7, {"ok": 1})],
                                    chat=[chat(7)])])
    await store.set_grant("r", "alice", "write")
    version = await store.grants_version()
    before = await load(store, "r")
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StorageUnavailable):
        await store.ping()
    again = await open_store(store.url)
    try:
        assert await again.schema_version() == LATEST_VERSION
        assert await load(again, "r") == before
        assert await again.grants_for("alice") == {"r": "write"}
        assert await again.grants_version() == version
    finally:
        await again.close()


async def test_concurrent_calls(store: Store) -> None:
    """Many tasks calling at once: each commit is atomic, nothing is lost."""

    async def room_writer(n: int) -> None:
        for seq in range(1, 11):
            await store.commit([RoomChanges(f"r{n}", seq, LIMIT, base_seq=seq - 1,
                                            history=[hist(seq)],
                                            entities=[set_("c", "x", seq=seq)])])
            await load(store, f"r{(n + 1) % 8}")

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(room_writer, n)
    for n in range(8):
        snap = await load(store, f"r{n}")
        assert snap.seq == 10
        assert [h.seq for h in snap.history] == list(range(1, 11))
        assert snap.entities == {"c": {"x": {"seq": 10}}}


# -- open_store ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://localhost/x", "unsupported storage URL"),
        ("sqlite://relative.db", "bad SQLite URL"),
        ("sqlite:///", "bad SQLite URL"),
        ("memory:nothing", "bad memory store URL"),
        ("postgresql://localhost/test?schema=bad-name;", "bad schema name"),
    ],
)
async def test_bad_urls(url: str, expected: str) -> None:
    with pytest.raises(StorageError, match=expected):
        await open_store(url)


async def test_bad_sqlite_synchronous(tmp_path: Any) -> None:
    with pytest.raises(StorageError, match="NORMAL or FULL"):
        await open_store(f"sqlite:///{tmp_path}/x.db", sqlite_synchronous="OFF")


async def test_relative_sqlite_url(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url, name in [("sqlite:///./a.db", "a.db"), ("sqlite:///b.db", "b.db")]:
        store = await open_store(url, sqlite_synchronous="full")
        await store.close()
        assert (tmp_path / name).is_file()


async def test_postgres_without_psycopg_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` fail
    monkeypatch.delitem(sys.modules, "collabtrio.storage.postgres", raising=False)
    with pytest.raises(StorageError, match=r"pip install 'collabtrio\[postgres\]'"):
        await open_store("postgresql://127.0.0.1/test")


async def test_postgres_down_at_start_up_is_a_prompt_storage_error() -> None:
    pytest.importorskip("psycopg")
    start = time.monotonic()
    with pytest.raises(StorageError, match="cannot connect to PostgreSQL") as info:
        await open_store("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    assert not isinstance(info.value, StorageUnavailable)
    assert time.monotonic() - start < 5


# -- backend-specific ---------------------------------------------------------------------


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
async def test_newer_schema_is_refused(store_url: str) -> None:
    store = await open_store(store_url)
    await store.close()
    if store_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(store_url[len("sqlite:///"):])
        db.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
        db.close()
    else:
        import psycopg

        from collabtrio.storage.postgres import parse_url

        with psycopg.connect(parse_url(store_url)[0], autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (LATEST_VERSION + 1,))
    with pytest.raises(StorageError, match="newer than this collabtrio knows"):
        await open_store(store_url)


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
async def test_concurrent_opens_migrate_once(store_url: str) -> None:
    """Several servers starting on the same new database at once: one migrates, the
    others wait for it (SQLite's write lock, PostgreSQL's advisory lock)."""
    stores: list[Store] = []

    async def opener() -> None:
        stores.append(await open_store(store_url))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(opener)
        for s in stores:
            assert await s.schema_version() == LATEST_VERSION
        await stores[0].commit([RoomChanges("r", 1, LIMIT, base_seq=0, history=[hist(1)])])
        assert (await load(stores[-1], "r")).seq == 1
    finally:
        for s in stores:
            await s.close()


async def test_postgres_recovers_from_lost_connections(postgres_url: str,
                                                       postgres_server: str) -> None:
    """Connections killed under the pool (a server restart, a failover) are replaced:
    the calls after that succeed without reopening the store."""
    import psycopg

    store = await open_store(postgres_url)
    try:
        await store.commit([RoomChanges("r", 1, LIMIT, base_seq=0, history=[hist(1)])])
        app = dict(q.split("=", 1) for q in postgres_url.split("?", 1)[1].split("&"))
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s", (app["application_name"],)).fetchone()
        assert killed is not None
        assert killed[0] >= 1
        await store.ping()
        await store.commit([RoomChanges("r", 2, LIMIT, base_seq=1, history=[hist(2)])])
        assert [h.seq for h in (await load(store, "r")).history] == [1, 2]
    finally:
        await store.close()


async def _pump(source: trio.SocketStream, sink: trio.SocketStream,
                done: trio.CancelScope) -> None:
    try:
        async for data in source:
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        done.cancel()


async def _tcp_proxy(port: int, target: tuple[str, int], *,
                     task_status: trio.TaskStatus[tuple[int, trio.CancelScope]]) -> None:
    """Forward 127.0.0.1:``port`` to ``target`` until the scope it reports is
    cancelled, which closes the listener and every forwarded connection: the server
    "goes down" for whoever connects through it."""

    async def handle(client: trio.SocketStream) -> None:
        async with client:
            try:
                server = await trio.open_tcp_stream(*target)
            except OSError:
                return
            async with server, trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, server, nursery.cancel_scope)
                nursery.start_soon(_pump, server, client, nursery.cancel_scope)

    with trio.CancelScope() as scope:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        task_status.started((listeners[0].socket.getsockname()[1], scope))
        await trio.serve_listeners(handle, listeners)


async def test_postgres_down_at_run_time_then_back(postgres_url: str) -> None:
    """The server goes away under an open store (through a TCP proxy the test stops):
    calls raise StorageUnavailable within the call timeout; once the server is back the
    store recovers by itself."""
    from collabtrio.storage.postgres import PostgresStore

    parts = urlsplit(postgres_url)
    target = (parts.hostname or "127.0.0.1", parts.port or 5432)
    async with trio.open_nursery() as nursery:
        port, proxy = await nursery.start(_tcp_proxy, 0, target)
        via_proxy = urlunsplit(parts._replace(
            netloc=f"{parts.username or ''}@127.0.0.1:{port}"))
        store = await PostgresStore.open(via_proxy, call_timeout=1.0)
        try:
            await store.commit([RoomChanges("r", 1, LIMIT, base_seq=0, history=[hist(1)])])
            proxy.cancel()  # the server is down
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(StorageUnavailable):
                await store.ping()
            with pytest.raises(StorageUnavailable):
                await store.commit([RoomChanges("r", 2, LIMIT, base_seq=1,
                                                    history=[hist(2)])])
            _, proxy = await nursery.start(_tcp_proxy, port, target)  # and back
            with trio.fail_after(20):
                while True:
                    try:
                        await store.ping()
                        break
                    except StorageUnavailable:
                        await trio.sleep(0.2)
            await store.commit([RoomChanges("r", 2, LIMIT, base_seq=1, history=[hist(2)])])
            assert [h.seq for h in (await load(store, "r")).history] == [1, 2]
        finally:
            await store.close()
            nursery.cancel_scope.cancel()


async def test_memory_fault_injection() -> None:
    from collabtrio.storage.memory import MemoryStore

    store = MemoryStore()
    changes = [RoomChanges("r", 1, LIMIT, base_seq=0, history=[hist(1)])]
    store.fail_next(2)
    for _ in range(2):
        with pytest.raises(StorageUnavailable):
            await store.commit(changes)
    await store.commit(changes)
    store.failing = True
    with pytest.raises(StorageUnavailable):
        await store.commit([RoomChanges("r", 2, LIMIT, base_seq=1, history=[hist(2)])])
    with pytest.raises(StorageUnavailable):
        await store.ping()
    store.failing = False
    await store.ping()
    assert [h.seq for h in (await load(store, "r")).history] == [1]
    # memory:// is private to each store; a named one is shared
    assert (await load(MemoryStore(), "r")).seq == 0
    await store.close()


# -- Yjs documents ------------------------------------------------------------------------


async def test_yjs_log_and_compaction(store: Store) -> None:
    """Updates append to the room's log in the commit that carries them, beside other
    rooms' ordinary changes; a compaction replaces the entries it covers by a snapshot
    in the same transaction; loading gives the snapshot and the log after it."""
    empty = await store.load_yjs("y")
    assert empty == YjsState(epoch=empty.epoch)
    await store.commit([
        YjsChanges("y", [(1, b"\x01a"), (2, b"\x02b")]),
        RoomChanges("other", 1, LIMIT, base_seq=0, entities=[set_("c", "1", v=1)]),
        YjsChanges("z", [(1, b"\x00" * 3)]),
    ])
    state = await store.load_yjs("y")
    assert (state.snapshot, state.covers, state.log) == (None, 0, [(1, b"\x01a"), (2, b"\x02b")])
    await store.commit([YjsChanges("y", [(3, b"\x03c")])])
    await store.commit([YjsChanges("y", [(4, b"\x04d")], snapshot=b"merged-1-3", covers=3)])
    state = await store.load_yjs("y")
    assert (state.snapshot, state.covers, state.log) == (b"merged-1-3", 3, [(4, b"\x04d")])
    await store.commit([YjsChanges("y", snapshot=b"merged-1-4", covers=4)])
    state = await store.load_yjs("y")
    assert (state.snapshot, state.covers, state.log) == (b"merged-1-4", 4, [])
    assert (await store.load_yjs("z")).log == [(1, b"\x00\x00\x00")]
    assert (await load(store, "other")).seq == 1


async def test_yjs_changes_are_all_or_nothing_with_the_rest(store: Store) -> None:
    await store.commit([changes_for("r", 0, 1)])
    with pytest.raises(SeqConflict):
        await store.commit([YjsChanges("y", [(1, b"u")]), changes_for("r", 0, 1)])
    assert (await store.load_yjs("y")).log == []


def changes_for(room: str, base_seq: int, seq: int) -> RoomChanges:
    return RoomChanges(room, seq, LIMIT, base_seq=base_seq, history=[hist(seq)])


async def test_epochs_are_created_once_and_stable_across_reopen(store: Store) -> None:
    """A room's first load creates and stores both epochs; every later load, through
    any of the three calls and after a reopen, gives the same ones."""
    snap = await load(store, "fresh")
    assert (snap.seq, snap.entities) == (0, {})
    assert isinstance(snap.epoch, str)
    assert len(snap.epoch) >= 16
    epochs = await store.load_epochs("fresh")
    assert epochs == RoomEpochs(snap.epoch, epochs.yjs)
    assert epochs.doc != epochs.yjs
    assert (await store.load_yjs("fresh")).epoch == epochs.yjs
    # a room that first appears through Yjs, or through a commit, gets them too
    assert (await store.load_yjs("yjs-first")).epoch is not None
    await store.commit([changes_for("committed-first", 0, 1)])
    committed = await store.load_epochs("committed-first")
    await store.close()
    again = await open_store(store.url)
    try:
        assert await again.load_epochs("fresh") == epochs
        assert (await load(again, "fresh")).epoch == epochs.doc
        assert (await again.load_yjs("fresh")).epoch == epochs.yjs
        assert await again.load_epochs("committed-first") == committed
        assert (await load(again, "committed-first")).seq == 1
    finally:
        await again.close()


async def test_two_first_loads_agree_on_the_epochs(store: Store) -> None:
    results: list[RoomEpochs] = []

    async def first_load() -> None:
        results.append(await store.load_epochs("race"))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(first_load)
    assert len(set(results)) == 1


async def test_a_commit_renews_the_document_epoch_only_when_asked(store: Store) -> None:
    before = await store.load_epochs("r")
    await store.commit([changes_for("r", 0, 1)])
    assert await store.load_epochs("r") == before
    await store.commit([RoomChanges("r", 2, LIMIT, base_seq=1, replace_all=True,
                                    entities=[set_("c", "1", v=1)], history=[hist(2)],
                                    epoch="renewed-doc-epoch")])
    snap = await load(store, "r")
    assert (snap.seq, snap.epoch) == (2, "renewed-doc-epoch")
    assert await store.load_epochs("r") == RoomEpochs("renewed-doc-epoch", before.yjs)
    # a failed commit renews nothing
    with pytest.raises(SeqConflict):
        await store.commit([RoomChanges("r", 2, LIMIT, base_seq=0, epoch="lost")])
    assert (await load(store, "r")).epoch == "renewed-doc-epoch"


async def test_a_yjs_reset_clears_the_log_and_renews_the_yjs_epoch(store: Store) -> None:
    before = await store.load_epochs("y")
    await store.commit([YjsChanges("y", [(1, b"a"), (2, b"b")])])
    await store.commit([YjsChanges("y", [(3, b"c")], snapshot=b"ab", covers=2)])
    assert (await store.load_yjs("y")).epoch == before.yjs  # compaction keeps the epoch
    await store.commit([YjsChanges("y", snapshot=b"reseeded", covers=3, epoch="new-yjs")])
    state = await store.load_yjs("y")
    assert (state.snapshot, state.covers, state.log, state.epoch) == (
        b"reseeded", 3, [], "new-yjs")
    assert await store.load_epochs("y") == RoomEpochs(before.doc, "new-yjs")
    await store.commit([YjsChanges("y", [(4, b"d")])])
    # a delete: no snapshot at all, the log after it kept
    await store.commit([YjsChanges("y", covers=4, epoch="deleted", updates=[(5, b"e")])])
    state = await store.load_yjs("y")
    assert (state.snapshot, state.covers, state.log, state.epoch) == (
        None, 0, [(5, b"e")], "deleted")
    # a room whose first change is a reset
    await store.commit([YjsChanges("new", snapshot=b"s", covers=0, epoch="e1")])
    assert (await store.load_yjs("new")).epoch == "e1"
    assert (await load(store, "new")).seq == 0
    # all or nothing with the rest of the commit
    await store.commit([changes_for("r", 0, 1)])
    with pytest.raises(SeqConflict):
        await store.commit([YjsChanges("y", snapshot=b"x", epoch="never"),
                            changes_for("r", 0, 1)])
    assert (await store.load_yjs("y")).epoch == "deleted"
