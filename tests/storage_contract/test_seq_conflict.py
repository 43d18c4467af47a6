"""The storage contract's compare-and-set on a room's seq, run against every backend.

A commit names the seq each room is expected at (``RoomChanges.base_seq``); a room
that another writer moved meanwhile makes the commit raise :class:`SeqConflict` and
write nothing. The fixtures are those of ``test_contract.py`` (``conftest.py``): two
stores opened on one ``store_url`` are two processes on one database (the same SQLite
file, the same PostgreSQL schema, the same named memory store).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio.testing

from collabtrio.storage import (
    OperationRecord,
    RoomChanges,
    SeqConflict,
    StorageError,
    StorageUnavailable,
    Store,
    UnstorableValue,
    open_store,
)
from collabtrio.storage.writer import CommitQueue

from .test_contract import LIMIT, chat, hist, load, set_


def changes(room: str, base_seq: int, seq: int, **data: Any) -> RoomChanges:
    """A batch of ``room`` from ``base_seq`` to ``seq``: history, an operation record
    and an entity write for every seq in between, and a chat message at ``seq``."""
    seqs = range(base_seq + 1, seq + 1)
    return RoomChanges(
        room, seq, LIMIT, base_seq=base_seq,
        entities=[set_("c", "x", seq=seq, **data)] + [set_("c", f"e{s}", s=s) for s in seqs],
        history=[hist(s) for s in seqs],
        operations=[OperationRecord(f"op-{room}-{s}", s, {"seq": s}) for s in seqs],
        chat=[chat(seq)],
    )


@asynccontextmanager
async def two_stores(url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database, as two server processes would have."""
    first = await open_store(url)
    try:
        second = await open_store(url)
        try:
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()


async def test_a_stale_base_seq_raises_seq_conflict_and_writes_nothing(store: Store) -> None:
    await store.commit([changes("r", 0, 2)])
    before = await load(store, "r")
    # planned on seq 1, while the room is at 2: its history seq 2 is stored already,
    # which must be reported as the conflict, not as a failing database
    with pytest.raises(SeqConflict) as info:
        await store.commit([changes("r", 1, 3, by="stale")])
    conflict = info.value
    assert (conflict.room, conflict.expected, conflict.found) == ("r", 1, 2)
    assert isinstance(conflict, StorageError)
    assert not isinstance(conflict, StorageUnavailable)
    assert "another writer" in str(conflict)
    assert "'r'" in str(conflict)
    assert "expected seq 1, found 2" in str(conflict)
    for base_seq in (0, 3, 7):  # a new room's base, and seqs the room never reached
        with pytest.raises(SeqConflict, match=f"expected seq {base_seq}, found 2"):
            await store.commit([changes("r", base_seq, base_seq + 1)])
    assert await load(store, "r") == before
    assert [m.seq for m in await store.chat_page("r", before=None, limit=10)] == [2]
    # the right base_seq commits
    await store.commit([changes("r", 2, 3)])
    assert (await load(store, "r")).seq == 3


async def test_a_room_with_no_row_is_at_seq_0(store: Store) -> None:
    with pytest.raises(SeqConflict) as info:
        await store.commit([changes("ghost", 4, 5)])
    assert (info.value.room, info.value.expected, info.value.found) == ("ghost", 4, 0)
    ghost, never = await load(store, "ghost"), await load(store, "never-written")
    assert ghost.seq == never.seq == 0
    assert ghost.entities == never.entities == {}
    assert ghost.history == never.history == []
    await store.commit([changes("ghost", 0, 1)])
    assert (await load(store, "ghost")).seq == 1


async def test_one_conflicting_room_fails_the_whole_commit(store: Store) -> None:
    await store.commit([changes("a", 0, 1), changes("b", 0, 3)])
    before = {room: await load(store, room) for room in ("a", "b", "c")}
    with pytest.raises(SeqConflict) as info:
        await store.commit([changes("a", 1, 2), changes("b", 2, 4), changes("c", 0, 1)])
    assert (info.value.room, info.value.expected, info.value.found) == ("b", 2, 3)
    assert {room: await load(store, room) for room in before} == before
    # the first room (in room order) that conflicts is the one reported
    with pytest.raises(SeqConflict) as info:
        await store.commit([changes("b", 1, 4), changes("a", 0, 2)])
    assert (info.value.room, info.value.expected, info.value.found) == ("a", 0, 1)


async def test_the_same_room_twice_in_one_commit_must_chain_its_seqs(store: Store) -> None:
    await store.commit([changes("r", 0, 1)])
    before = await load(store, "r")
    with pytest.raises(SeqConflict) as info:  # the second changes start at 2, not 3
        await store.commit([changes("r", 1, 3), changes("r", 2, 4)])
    assert (info.value.room, info.value.expected, info.value.found) == ("r", 2, 3)
    assert await load(store, "r") == before
    await store.commit([changes("r", 1, 3), changes("r", 3, 4)])
    assert (await load(store, "r")).seq == 4


async def test_two_stores_on_one_database_cannot_interleave_a_room(store_url: str) -> None:
    async with two_stores(store_url) as (first, second):
        assert (await load(first, "r")).seq == (await load(second, "r")).seq == 0
        await first.commit([changes("r", 0, 2, by="first")])
        with pytest.raises(SeqConflict) as info:  # the second had planned on seq 0 too
            await second.commit([changes("r", 0, 1, by="second")])
        assert (info.value.expected, info.value.found) == (0, 2)
        seen = await load(second, "r")  # what the second must do: reload, plan again
        assert seen.seq == 2
        await second.commit([changes("r", seen.seq, 3, by="second")])
        with pytest.raises(SeqConflict, match="expected seq 2, found 3"):
            await first.commit([changes("r", 2, 4, by="first")])
        snap = await load(first, "r")
        assert snap.seq == 3
        assert [h.seq for h in snap.history] == [1, 2, 3]
        assert snap.entities["c"]["x"] == {"seq": 3, "by": "second"}
        assert sorted(snap.operations) == [f"op-r-{s}" for s in (1, 2, 3)]
        assert [m.seq for m in snap.chat] == [2, 3]


async def test_concurrent_writers_of_the_same_rooms_one_wins(store_url: str) -> None:
    """Two stores committing the same new rooms at once, in opposite orders: each time
    exactly one commit lands, the other raises SeqConflict (never a deadlock or
    StorageUnavailable), and nothing of the loser is stored."""

    async def write(outcome: dict[str, BaseException | None], name: str, store: Store,
                    order: Sequence[str]) -> None:
        try:
            await store.commit([changes(room, 0, 2, by=name) for room in order])
            outcome[name] = None
        except StorageError as exc:
            outcome[name] = exc

    async with two_stores(store_url) as (first, second):
        for round_ in range(5):
            rooms = [f"r{round_}-a", f"r{round_}-b"]
            outcome: dict[str, BaseException | None] = {}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write, outcome, "first", first, rooms)
                nursery.start_soon(write, outcome, "second", second, rooms[::-1])
            winners = [name for name, exc in outcome.items() if exc is None]
            assert len(winners) == 1, outcome
            loser = "second" if winners == ["first"] else "first"
            assert isinstance(outcome[loser], SeqConflict), outcome
            for room in rooms:
                snap = await load(first, room)
                assert snap.seq == 2
                assert snap.entities["c"]["x"] == {"seq": 2, "by": winners[0]}
                assert [h.seq for h in snap.history] == [1, 2]


class _GatedStore:
    """A store whose first commit waits for ``gate``, so that what is queued meanwhile
    becomes one merged transaction; records the rooms of every commit."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.gate = trio.Event()
        self.commits: list[list[str]] = []

    async def commit(self, batch: Sequence[RoomChanges]) -> None:
        self.commits.append([c.room for c in batch])
        if len(self.commits) == 1:
            await self.gate.wait()
        await self.store.commit(batch)


async def test_group_commit_retries_the_rooms_of_a_conflict_alone(store: Store) -> None:
    """A merged transaction failing with SeqConflict is retried room by room: the
    innocent room commits, only the room that conflicts gets the error."""
    await store.commit([changes("contested", 0, 1)])  # another writer was here
    gated = _GatedStore(store)
    queue = CommitQueue(cast(Store, gated))
    outcome: dict[str, BaseException | None] = {}

    async def request(room: str, base_seq: int, seq: int) -> None:
        try:
            await queue.commit([changes(room, base_seq, seq)])
            outcome[room] = None
        except StorageError as exc:
            outcome[room] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        nursery.start_soon(request, "warm-up", 0, 1)
        await trio.testing.wait_all_tasks_blocked()  # its transaction is running
        nursery.start_soon(request, "innocent", 0, 1)
        nursery.start_soon(request, "contested", 0, 1)
        await trio.testing.wait_all_tasks_blocked()  # both queued behind it
        gated.gate.set()
        with trio.fail_after(10):
            while len(outcome) < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert outcome["warm-up"] is None
    assert outcome["innocent"] is None
    conflict = outcome["contested"]
    assert isinstance(conflict, SeqConflict)
    assert (conflict.room, conflict.expected, conflict.found) == ("contested", 0, 1)
    assert sorted(gated.commits[1]) == ["contested", "innocent"]  # merged, then alone
    assert sorted(map(tuple, gated.commits[2:])) == [("contested",), ("innocent",)]
    assert (await load(store, "innocent")).seq == 1
    assert [h.seq for h in (await load(store, "contested")).history] == [1]


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), "\ud800"],
                         ids=["infinity", "nan", "lone-surrogate"])
async def test_group_commit_retries_without_the_room_whose_data_is_not_storable(
    store: Store, bad: Any
) -> None:
    """One room's value that no backend can store fails only that room's request, with
    UnstorableValue (the data's fault: never reported as an outage); the rooms merged
    into the same transaction commit."""
    gated = _GatedStore(store)
    queue = CommitQueue(cast(Store, gated))
    outcome: dict[str, BaseException | None] = {}

    async def request(room: str, **data: Any) -> None:
        try:
            await queue.commit([changes(room, 0, 1, **data)])
            outcome[room] = None
        except StorageError as exc:
            outcome[room] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        nursery.start_soon(request, "warm-up")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(request, "innocent")
        nursery.start_soon(functools.partial(request, "poisoned", value=bad))
        nursery.start_soon(request, "bystander")
        await trio.testing.wait_all_tasks_blocked()
        gated.gate.set()
        with trio.fail_after(10):
            while len(outcome) < 4:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert outcome["innocent"] is None
    assert outcome["bystander"] is None
    assert isinstance(outcome["poisoned"], UnstorableValue)
    assert not isinstance(outcome["poisoned"], StorageUnavailable)
    assert sorted(gated.commits[1]) == ["bystander", "innocent", "poisoned"]
    assert (await load(store, "innocent")).seq == 1
    assert (await load(store, "bystander")).seq == 1
    assert (await load(store, "poisoned")).seq == 0


@pytest.mark.parametrize("end", ["commit", "rollback"])
@pytest.mark.parametrize("other", ["update", "insert"])
async def test_postgres_a_commit_waiting_for_another_writer_sees_its_outcome(
    postgres_url: str, other: str, end: str
) -> None:
    """Another process's open transaction has moved the room (an existing room's
    update, or a new room's insert): the commit waits for its row, then raises
    SeqConflict with the seq it committed, or goes through if it rolled back."""
    import psycopg

    from collabtrio.storage.postgres import parse_url

    conninfo = parse_url(postgres_url)[0]
    store = await open_store(postgres_url)
    try:
        base_seq = 1 if other == "update" else 0
        if other == "update":
            await store.commit([changes("r", 0, 1)])
        with psycopg.connect(conninfo) as holder, \
                psycopg.connect(conninfo, autocommit=True) as watcher:
            if other == "update":
                holder.execute("UPDATE rooms SET seq = 5 WHERE id = 'r'")
            else:
                holder.execute("INSERT INTO rooms VALUES ('r', 5, 0, 0)")
            outcome: list[BaseException | None] = []

            async def commit() -> None:
                try:
                    await store.commit([changes("r", base_seq, base_seq + 1)])
                    outcome.append(None)
                except StorageError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(commit)
                with trio.fail_after(10):  # until the commit waits for the holder's lock
                    while not watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                        "'Lock' AND datname = current_database() AND pid <> %s",
                        (holder.info.backend_pid,),
                    ).fetchall()[0][0]:
                        await trio.sleep(0.02)
                assert outcome == []
                await trio.to_thread.run_sync(getattr(holder, end))
        snap = await load(store, "r")
        if end == "commit":
            assert len(outcome) == 1
            assert isinstance(outcome[0], SeqConflict)
            assert (outcome[0].expected, outcome[0].found) == (base_seq, 5)
            assert snap.seq == 5
            assert [h.seq for h in snap.history] == [1] * (other == "update")
        else:
            assert outcome == [None]
            assert snap.seq == base_seq + 1
            assert [h.seq for h in snap.history] == list(range(1, base_seq + 2))
    finally:
        await store.close()


async def test_postgres_commits_take_the_rooms_in_one_order(postgres_url: str) -> None:
    """Two commits over the same rooms, listed in different orders, do not deadlock:
    each checks and locks its rooms in room order. The first lists b, x, a: it locks
    a and b, then waits for x (held by another transaction); the second waits for a,
    and once x is free the first commits and the second gets a SeqConflict. In list
    order they would deadlock (the first holding b and waiting for a, the second
    holding a and waiting for b): StorageUnavailable after ``deadlock_timeout``."""
    import psycopg

    from collabtrio.storage.postgres import parse_url

    conninfo = parse_url(postgres_url)[0]
    async with two_stores(postgres_url) as (first, second):
        await first.commit([changes(room, 0, 1) for room in ("a", "b", "x")])
        with psycopg.connect(conninfo) as holder, \
                psycopg.connect(conninfo, autocommit=True) as watcher:
            holder.execute("UPDATE rooms SET updated_at = 0 WHERE id = 'x'")

            async def waiting(n: int) -> None:
                with trio.fail_after(10):
                    while watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                        "'Lock' AND datname = current_database()",
                    ).fetchall()[0][0] < n:
                        await trio.sleep(0.02)

            outcome: dict[str, BaseException | None] = {}

            async def write(name: str, store: Store, rooms: Sequence[str]) -> None:
                try:
                    await store.commit([changes(room, 1, 2, by=name) for room in rooms])
                    outcome[name] = None
                except StorageError as exc:
                    outcome[name] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write, "first", first, ["b", "x", "a"])
                await waiting(1)
                nursery.start_soon(write, "second", second, ["a", "b"])
                await waiting(2)
                await trio.to_thread.run_sync(holder.rollback)
    assert outcome["first"] is None
    conflict = outcome["second"]
    assert isinstance(conflict, SeqConflict), outcome
    assert (conflict.room, conflict.expected, conflict.found) == ("a", 1, 2)
