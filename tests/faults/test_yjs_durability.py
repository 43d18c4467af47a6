"""Durability of acknowledged Yjs updates across a SIGKILL and a restart.

A ``yjs-update`` ack means the update is in a committed transaction: after a SIGKILL
right after the last ack, a server restarted on the same storage (SQLite with
``synchronous=NORMAL`` or ``FULL``, or PostgreSQL) must give a fresh client's
``yjs-sync`` a document holding every acknowledged update. A room's document is stored
as a snapshot plus the log after it: a restart must load both, and a kill in the middle
of compactions (which rewrite the snapshot and trim the log in one transaction) must
lose nothing either.

The writers are pycrdt documents on python-socketio clients; what the server stored
is compared with pycrdt.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pycrdt
import pytest

from collabtrio.protocol.yprotocol import decode_state_vector
from tests.conftest import ServerProcess
from tests.faults.conftest import Client, Servers, connected, run, via

ROOM = "doc:yjs-durable"
HIGH_RATE = ("--rate-limit-per-s", "5000", "--rate-limit-burst", "5000")


# -- pycrdt writers ---------------------------------------------------------------------


def state_vector(doc: pycrdt.Doc[Any]) -> dict[int, int]:
    """``{client id: clock}`` of ``doc``."""
    return decode_state_vector(doc.get_state())


def text_of(doc: pycrdt.Doc[Any]) -> str:
    return str(doc.get("text", type=pycrdt.Text))


def doc_from(*updates: bytes) -> pycrdt.Doc[Any]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    if updates:
        doc.apply_update(pycrdt.merge_updates(*updates))
    return doc


class Writer:
    """A pycrdt document edited at random positions (seeded), each local change sent as
    an acked ``yjs-update``; remote updates are applied as they are relayed."""

    def __init__(self, client: Client, room: str, seed: int) -> None:
        self.client = client
        self.room = room
        self.rng = random.Random(seed)
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        self.text = self.doc.get("text", type=pycrdt.Text)
        self.acked: list[bytes] = []
        self.refused: list[Any] = []
        self._local: list[bytes] = []
        self._remote = False
        self.edits = 0
        self.on_ack: Callable[[], None] = lambda: None
        self.doc.observe(self._on_update)
        client.sio.on("yjs-update", self._on_remote)

    def _on_update(self, event: Any) -> None:
        if not self._remote:
            self._local.append(event.update)

    async def _on_remote(self, data: dict[str, Any]) -> None:
        self._remote = True
        try:
            self.doc.apply_update(data["update"])
        finally:
            self._remote = False

    async def start(self) -> None:
        """Join the room and catch up with what it holds."""
        await self.client.join(self.room)
        ack = await self.client.call("yjs-sync", {"room": self.room,
                                                  "stateVector": self.doc.get_state()})
        assert ack["ok"] is True, ack
        await self._on_remote(ack)

    def edit(self) -> bytes:
        """One local change (mostly insertions, some deletions); its update."""
        self.edits += 1
        n = len(self.text)
        if n > 30 and self.rng.random() < 0.3:
            pos = self.rng.randrange(n)
            del self.text[pos:min(n, pos + self.rng.randint(1, 4))]
        else:
            self.text.insert(self.rng.randint(0, n), f"{self.client.sub}.{self.edits} ")
        [update] = self._local
        self._local.clear()
        return update

    async def send(self, update: bytes) -> None:
        ack = await self.client.call("yjs-update", {"room": self.room, "update": update})
        if ack == {"ok": True}:
            self.acked.append(update)
            self.on_ack()
        else:
            self.refused.append(ack)

    async def type(self, count: int | None, window: int) -> None:
        """Make ``count`` edits (forever if None) with up to ``window`` unacknowledged."""
        slots = asyncio.Semaphore(window)

        async def one(update: bytes) -> None:
            try:
                await self.send(update)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as tg:
            made = 0
            while count is None or made < count:
                await slots.acquire()
                tg.create_task(one(self.edit()))
                made += 1


async def read_doc(server: ServerProcess, room: str = ROOM) -> pycrdt.Doc[Any]:
    """The room's document as a fresh client gets it (``yjs-sync`` from nothing)."""
    async with connected(server, "reader") as (reader,):
        await reader.join(room)
        ack = await reader.call("yjs-sync", {"room": room,
                                             "stateVector": pycrdt.Doc().get_state()})
        assert ack["ok"] is True, ack
        return doc_from(ack["update"])


def assert_holds(doc: pycrdt.Doc[Any], acked: list[bytes], what: str) -> None:
    """Every update in ``acked`` is already in ``doc``: merging them in changes nothing."""
    merged = doc_from(doc.get_update(), *acked)
    if state_vector(merged) == state_vector(doc) and text_of(merged) == text_of(doc):
        return
    lost = 0
    for update in acked:
        probe = doc_from(doc.get_update())
        probe.apply_update(update)
        if state_vector(probe) != state_vector(doc) or text_of(probe) != text_of(doc):
            lost += 1
    pytest.fail(f"{what}: {lost} of {len(acked)} acknowledged Yjs updates are missing "
                f"after the restart; the document has {len(text_of(doc))} characters, "
                f"{len(text_of(merged))} with the acknowledged updates merged in")


# -- storage back ends ------------------------------------------------------------------


@dataclass
class Stored:
    """A room's Yjs rows, read straight from the database."""

    snapshot: bytes | None
    covers: int | None
    log: list[tuple[int, bytes]]


def _stored(row: Any, log: list[Any]) -> Stored:
    if row is None:
        return Stored(None, None, [(int(i), bytes(d)) for i, d in log])
    return Stored(bytes(row[0]), int(row[1]), [(int(i), bytes(d)) for i, d in log])


@dataclass
class Backend:
    name: str
    db: str
    flags: tuple[str, ...]
    read: Callable[[str], Stored]


def _sqlite_reader(path: Path) -> Callable[[str], Stored]:
    def read(room: str) -> Stored:
        conn = sqlite3.connect(path)
        try:
            row = conn.execute("SELECT data, covers FROM yjs_snapshots WHERE room = ?",
                               (room,)).fetchone()
            log = conn.execute("SELECT id, data FROM yjs_updates WHERE room = ? ORDER BY id",
                               (room,)).fetchall()
        finally:
            conn.close()
        return _stored(row, log)
    return read


def _postgres_reader(admin_url: str, schema: str) -> Callable[[str], Stored]:
    import psycopg

    def read(room: str) -> Stored:
        with psycopg.connect(admin_url, options=f"-csearch_path={schema}",
                             autocommit=True) as conn:
            row = conn.execute("SELECT data, covers FROM yjs_snapshots WHERE room = %s",
                               (room,)).fetchone()
            log = conn.execute("SELECT id, data FROM yjs_updates WHERE room = %s "
                               "ORDER BY id", (room,)).fetchall()
        return _stored(row, log)
    return read


ALL_BACKENDS = ["sqlite-NORMAL", "sqlite-FULL", "postgres"]
SQLITE_AND_POSTGRES = pytest.mark.parametrize("backend", ["sqlite-NORMAL", "postgres"],
                                              indirect=True)


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Where the server stores: a fresh SQLite file, or a fresh PostgreSQL schema."""
    name = request.param
    if name == "postgres":
        admin = request.getfixturevalue("postgres_server")
        schema = request.getfixturevalue("postgres_schema")
        parts = urlsplit(admin)
        db = via(admin, parts.hostname or "127.0.0.1", parts.port or 5432, schema=schema,
                 application_name=schema)
        yield Backend(name, db, (), _postgres_reader(admin, schema))
    else:
        path = tmp_path / "yjs.db"
        sync = name.split("-", 1)[1]
        yield Backend(name, f"sqlite:///{path}", ("--sqlite-synchronous", sync),
                      _sqlite_reader(path))


# -- SIGKILL right after the last ack -----------------------------------------------------

WRITERS = 3
UPDATES_PER_WRITER = 40


def test_sigkill_right_after_the_last_yjs_ack_loses_nothing(
        servers: Servers, backend: Backend) -> None:
    """Three writers send 40 updates each (8 unacknowledged at a time, so commits carry
    several); SIGKILL the moment the last ack is in; the restarted server's document is
    exactly the merge of every acknowledged update."""
    first = servers.start(*backend.flags, db=backend.db)

    async def burst() -> list[Writer]:
        subs = [f"w{i}" for i in range(WRITERS)]
        async with connected(first, *subs) as clients:
            writers = [Writer(c, ROOM, seed=100 + i) for i, c in enumerate(clients)]
            await asyncio.gather(*(w.start() for w in writers))
            await asyncio.gather(*(w.type(UPDATES_PER_WRITER, window=8) for w in writers))
            servers.kill(first)  # no shutdown, no final compaction
            return writers

    started = time.monotonic()
    writers = run(burst())
    burst_s = time.monotonic() - started
    assert first.proc.returncode == -signal.SIGKILL
    for w in writers:
        assert w.refused == [], w.refused
        assert len(w.acked) == UPDATES_PER_WRITER
    acked = [u for w in writers for u in w.acked]
    stored = backend.read(ROOM)
    assert stored.log, "the acknowledged updates are not in the update log"

    second = servers.start(*backend.flags, db=backend.db)
    doc = run(read_doc(second))
    expected = doc_from(*acked)
    assert_holds(doc, acked, backend.name)
    assert text_of(doc) == text_of(expected)
    assert state_vector(doc) == state_vector(expected)
    for w in writers:  # each writer's last insertion is there
        own = w.doc.client_id
        assert state_vector(doc).get(own) == state_vector(w.doc)[own], w.client.sub
    print(f"{backend.name}: {len(acked)} Yjs updates acked in {burst_s:.2f}s; "
          f"{len(stored.log)} log rows, snapshot: {stored.snapshot is not None}")


# -- a restart loads the snapshot and the log after it --------------------------------------

COMPACT_EVERY = 10
SEQUENTIAL_UPDATES = 25  # compactions at 10 and 20, then 5 entries in the log


@SQLITE_AND_POSTGRES
def test_restart_loads_the_snapshot_and_the_log_after_it(
        servers: Servers, backend: Backend) -> None:
    """With a compaction every 10 updates, 25 updates one at a time leave a snapshot and
    log rows after it (checked in the tables themselves); neither alone is the whole
    document, and the server restarted after a SIGKILL serves all of it."""
    flags = (*backend.flags, "--yjs-compact-updates", str(COMPACT_EVERY))
    first = servers.start(*flags, db=backend.db)

    async def write() -> Writer:
        async with connected(first, "writer") as (client,):
            writer = Writer(client, ROOM, seed=7)
            await writer.start()
            await writer.type(SEQUENTIAL_UPDATES, window=1)
            servers.kill(first)
            return writer

    writer = run(write())
    assert writer.refused == [], writer.refused
    assert len(writer.acked) == SEQUENTIAL_UPDATES
    final = text_of(writer.doc)

    stored = backend.read(ROOM)
    assert stored.snapshot is not None, "no snapshot stored after 25 updates"
    assert stored.covers is not None
    assert stored.log, f"no log rows after the snapshot (covers {stored.covers})"
    assert all(i > stored.covers for i, _ in stored.log), (
        f"log rows covered by the snapshot (covers {stored.covers}) were not trimmed: "
        f"{[i for i, _ in stored.log]}")
    assert len(stored.log) < COMPACT_EVERY, [i for i, _ in stored.log]
    assert text_of(doc_from(stored.snapshot)) != final, "the snapshot alone is everything"
    assert text_of(doc_from(*(d for _, d in stored.log))) != final
    assert text_of(doc_from(stored.snapshot, *(d for _, d in stored.log))) == final

    second = servers.start(*flags, db=backend.db)
    doc = run(read_doc(second))
    assert text_of(doc) == final
    assert state_vector(doc) == state_vector(writer.doc)
    print(f"{backend.name}: snapshot covers {stored.covers}, log ids "
          f"{[i for i, _ in stored.log]}")


# -- SIGKILL while compactions run under load -----------------------------------------------

LOAD_WRITERS = 4
LOAD_ROUNDS = 2
LOAD_COMPACT_EVERY = 4


async def _load_round(servers: Servers, srv: ServerProcess, round_no: int, kill_after: int,
                      extra_s: float) -> tuple[list[bytes], int]:
    """Writers type continuously until ``kill_after`` acks are in (plus ``extra_s``),
    then SIGKILL; returns every update acknowledged before it, and how many were sent."""
    subs = [f"r{round_no}w{i}" for i in range(LOAD_WRITERS)]
    enough = asyncio.Event()
    async with connected(srv, *subs) as clients:
        writers = [Writer(c, ROOM, seed=1000 * round_no + i) for i, c in enumerate(clients)]

        def count_ack() -> None:
            if sum(len(w.acked) for w in writers) >= kill_after:
                enough.set()

        for w in writers:
            w.on_ack = count_ack
        await asyncio.gather(*(w.start() for w in writers))
        tasks = [asyncio.create_task(w.type(None, window=4)) for w in writers]
        waiting = asyncio.create_task(enough.wait())
        done, _ = await asyncio.wait([waiting, *tasks], timeout=30,
                                     return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        for task in done:
            if task is not waiting:
                task.result()  # raises what ended the writer
                pytest.fail("a writer stopped")
        assert enough.is_set(), f"not {kill_after} acks within 30 s"
        await asyncio.sleep(extra_s)  # the random moment
        servers.kill(srv)
        got = [u for w in writers for u in w.acked]  # all acknowledged before the kill
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        refused = [r for w in writers for r in w.refused]
        assert refused == [], refused[:5]
        return got, sum(w.edits for w in writers)


@SQLITE_AND_POSTGRES
def test_sigkill_during_compactions_under_load_loses_nothing(
        servers: Servers, backend: Backend) -> None:
    """Four writers send updates continuously (4 in flight each) to a room compacted every
    4 updates, so most commits rewrite the snapshot; SIGKILL at a random moment (seeded),
    restart on the same storage, check every acknowledged update is there, and go on
    writing: two rounds."""
    flags = (*backend.flags, *HIGH_RATE, "--yjs-compact-updates", str(LOAD_COMPACT_EVERY))
    rng = random.Random(20240611)
    acked: list[bytes] = []
    report = []
    server = servers.start(*flags, db=backend.db)
    for round_no in range(LOAD_ROUNDS):
        kill_after = rng.randint(30, 90)  # acks in this round before the kill
        got, sent = run(_load_round(servers, server, round_no, kill_after,
                                    rng.uniform(0, 0.05)))
        acked += got
        stored = backend.read(ROOM)
        assert stored.snapshot is not None, "no compaction ran"
        server = servers.start(*flags, db=backend.db)
        doc = run(read_doc(server))
        assert_holds(doc, acked, f"{backend.name}, round {round_no + 1}")
        report.append(f"{len(got)} acked of {sent} sent, covers {stored.covers}, "
                      f"{len(stored.log)} log rows")
    print(f"{backend.name}: " + "; ".join(report))
