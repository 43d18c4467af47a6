"""What the SQL stores share: their statements, written once, and the async surface.

Each backend module (``sqlite``, ``postgres``) describes what differs in its
:class:`Dialect`: the driver's placeholder, how a write or a read transaction is
opened on a connection (and yields a cursor), how JSON goes in and comes back, and
how to recognise the error of a failed seq check. Its store class subclasses
:class:`SQLStore` and supplies only ``_run`` (how a function gets a connection and a
thread), opening and closing. The statements and the methods here are therefore the
same for every SQL backend by construction.

The seq check (compare-and-set) of :func:`commit` comes first in its transaction, one
room after the other in room order (so two commits take the rooms' row locks in the
same order and cannot deadlock), and raises inside SQL, so that it stops the
transaction before anything after it runs and costs no round trip of its own in
PostgreSQL's pipeline: ``Queries.ensure_room`` makes a missing room row exist at seq
0 (so a missing room counts as seq 0, and two first writers of a room meet on its
primary key, the second waiting for the first), then ``Queries.claim_room`` sets the
new seq where the stored one equals ``base_seq`` and NULL otherwise, which violates
``rooms.seq NOT NULL``. That error is mapped to :class:`SeqConflict` after the
rollback, once a read has found which room had moved.

Epochs live in the room's row. A load that finds none (a new room, or one from before
schema version 4) creates them with :func:`ensure_epochs`, one upsert that keeps an
epoch already there, so two first loads agree on the epochs the first one stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, cast

from .base import (
    Changes,
    ChatMessage,
    HistoryEntry,
    OperationRecord,
    Role,
    RoomChanges,
    RoomEpochs,
    RoomSnapshot,
    SeqConflict,
    YjsChanges,
    YjsState,
    new_epoch,
)
from .migrations import check_role, encode, seq_claims

C = TypeVar("C")
T = TypeVar("T")


class Cursor(Protocol):
    """What the statements use of a DB-API cursor (``sqlite3`` and psycopg alike)."""

    def execute(self, query: str, params: Sequence[Any], /) -> Any: ...

    def executemany(self, query: str, rows: Iterable[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Queries(NamedTuple):
    """Every statement of the SQL stores, in one driver's placeholder style."""

    ensure_room: str
    claim_room: str
    delete_room_entities: str
    delete_entity: str
    upsert_entity: str
    insert_history: str
    insert_operation: str
    insert_chat: str
    trim_history: str
    trim_operations: str
    room_seq: str
    entities: str
    history: str
    operations: str
    chat_newest: str
    chat_before: str
    delete_grant: str
    upsert_grant: str
    bump_grants_version: str
    grants_for: str
    grants_version: str
    has_grants: str
    upsert_yjs_snapshot: str
    trim_yjs_updates: str
    insert_yjs_update: str
    yjs_snapshot: str
    yjs_log: str
    room_state: str
    ensure_epochs: str
    set_doc_epoch: str
    set_yjs_epoch: str
    yjs_epoch: str
    room_epochs: str
    delete_yjs_log: str
    delete_yjs_snapshot: str


_CHAT_COLUMNS = "seq, user_id, user_name, text, client_id, created_at"

# written with "?" placeholders; ``Dialect`` swaps in the driver's (no statement
# contains a literal "?")
_QUERIES = Queries(
    # a row is born with its epochs, so loading it never needs to write
    ensure_room=(
        "INSERT INTO rooms (id, seq, created_at, updated_at, doc_epoch, yjs_epoch) "
        "VALUES (?, 0, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
    ),
    # a stale seq becomes NULL, which the NOT NULL constraint refuses: the check
    # raises inside SQL, before anything after it runs
    claim_room=(
        "UPDATE rooms SET seq = CASE WHEN seq = ? THEN ? END, updated_at = ? WHERE id = ?"
    ),
    delete_room_entities="DELETE FROM entities WHERE room = ?",
    delete_entity="DELETE FROM entities WHERE room = ? AND collection = ? AND id = ?",
    upsert_entity=(
        "INSERT INTO entities (room, collection, id, data) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (room, collection, id) DO UPDATE SET data = excluded.data"
    ),
    insert_history=(
        "INSERT INTO history (room, seq, event, payload, created_at) VALUES (?, ?, ?, ?, ?)"
    ),
    insert_operation=(
        "INSERT INTO operations (room, operation_id, seq, result) VALUES (?, ?, ?, ?)"
    ),
    insert_chat=(
        f"INSERT INTO chat_messages (room, {_CHAT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    trim_history="DELETE FROM history WHERE room = ? AND seq <= ?",
    trim_operations="DELETE FROM operations WHERE room = ? AND seq <= ?",
    room_seq="SELECT seq FROM rooms WHERE id = ?",
    entities="SELECT collection, id, data FROM entities WHERE room = ?",
    history=(
        "SELECT seq, event, payload, created_at FROM history WHERE room = ? "
        "ORDER BY seq DESC LIMIT ?"
    ),
    operations="SELECT operation_id, seq, result FROM operations WHERE room = ? AND seq > ?",
    chat_newest=(
        f"SELECT {_CHAT_COLUMNS} FROM chat_messages WHERE room = ? ORDER BY seq DESC LIMIT ?"
    ),
    chat_before=(
        f"SELECT {_CHAT_COLUMNS} FROM chat_messages WHERE room = ? AND seq < ? "
        "ORDER BY seq DESC LIMIT ?"
    ),
    delete_grant="DELETE FROM grants WHERE pattern = ? AND user_id = ?",
    upsert_grant=(
        "INSERT INTO grants (pattern, user_id, role) VALUES (?, ?, ?) "
        "ON CONFLICT (pattern, user_id) DO UPDATE SET role = excluded.role"
    ),
    # BIGINT has INTEGER affinity in SQLite, so both dialects take this spelling
    bump_grants_version=(
        "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) "
        "WHERE key = 'grants_version'"
    ),
    grants_for="SELECT pattern, role FROM grants WHERE user_id = ?",
    grants_version="SELECT value FROM meta WHERE key = 'grants_version'",
    has_grants="SELECT 1 FROM grants LIMIT 1",
    upsert_yjs_snapshot=(
        "INSERT INTO yjs_snapshots (room, data, covers) VALUES (?, ?, ?) "
        "ON CONFLICT (room) DO UPDATE SET data = excluded.data, covers = excluded.covers"
    ),
    trim_yjs_updates="DELETE FROM yjs_updates WHERE room = ? AND id <= ?",
    insert_yjs_update="INSERT INTO yjs_updates (room, id, data) VALUES (?, ?, ?)",
    yjs_snapshot="SELECT data, covers FROM yjs_snapshots WHERE room = ?",
    yjs_log="SELECT id, data FROM yjs_updates WHERE room = ? AND id > ? ORDER BY id",
    room_state="SELECT seq, doc_epoch FROM rooms WHERE id = ?",
    # an epoch already stored wins: a second first load gets the first one's epochs
    ensure_epochs=(
        "INSERT INTO rooms (id, seq, created_at, updated_at, doc_epoch, yjs_epoch) "
        "VALUES (?, 0, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "doc_epoch = COALESCE(rooms.doc_epoch, excluded.doc_epoch), "
        "yjs_epoch = COALESCE(rooms.yjs_epoch, excluded.yjs_epoch) "
        "RETURNING doc_epoch, yjs_epoch"
    ),
    set_doc_epoch="UPDATE rooms SET doc_epoch = ? WHERE id = ?",
    set_yjs_epoch=(
        "INSERT INTO rooms (id, seq, created_at, updated_at, doc_epoch, yjs_epoch) "
        "VALUES (?, 0, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET yjs_epoch = excluded.yjs_epoch"
    ),
    yjs_epoch="SELECT yjs_epoch FROM rooms WHERE id = ?",
    room_epochs="SELECT doc_epoch, yjs_epoch FROM rooms WHERE id = ?",
    delete_yjs_log="DELETE FROM yjs_updates WHERE room = ?",
    delete_yjs_snapshot="DELETE FROM yjs_snapshots WHERE room = ?",
)


class Dialect(Generic[C]):
    """What one SQL backend does its own way (see the module docstring).

    ``write(conn)`` / ``read(conn)``: a context manager that runs its block in one
    write / one consistent read-only transaction and yields a :class:`Cursor`; on an
    exception it rolls back (the connection is out of the transaction when the
    exception leaves the block). ``json_param(text)``: the parameter for a JSON
    column from JSON text; ``json_value(value)``: the Python value of a JSON column
    as the driver returns it. ``is_seq_conflict(exc)``: whether a driver error is the
    NOT NULL violation of ``rooms.seq`` that a failed seq check raises.
    """

    def __init__(
        self,
        *,
        param: str,
        write: Callable[[C], AbstractContextManager[Cursor]],
        read: Callable[[C], AbstractContextManager[Cursor]],
        json_param: Callable[[str], object],
        json_value: Callable[[Any], Any],
        is_seq_conflict: Callable[[Exception], bool],
    ) -> None:
        self.q = Queries(*(query.replace("?", param) for query in _QUERIES))
        self.write = write
        self.read = read
        self.json_param = json_param
        self.json_value = json_value
        self.is_seq_conflict = is_seq_conflict


# -- statements, run on a worker thread with the backend's connection -------------------


def execute(conn: object, query: str, params: Sequence[Any] = ()) -> Cursor:
    """Run one statement on its own (the connections are in autocommit mode)."""
    return cast(Cursor, cast(Any, conn).execute(query, params))


def commit(d: Dialect[C], conn: C, all_changes: Sequence[Changes], now: float) -> None:
    """Write ``all_changes`` in one transaction (see :meth:`Store.commit`).

    Raises :class:`SeqConflict` (rolled back) when a room's stored seq is not its
    ``base_seq``; any other error is the driver's, after the rollback.
    """
    q, js = d.q, d.json_param
    changes = [ch for ch in all_changes if isinstance(ch, RoomChanges)]
    yjs = [ch for ch in all_changes if isinstance(ch, YjsChanges)]
    # non-JSON data and a room's inconsistent changes fail here, before any SQL
    encoded = [encode(ch) for ch in changes]
    claims = seq_claims(changes)
    try:
        with d.write(conn) as cur:
            for room, base_seq, seq in claims:  # first, so a conflict stops all the rest
                cur.execute(q.ensure_room, (room, now, now, new_epoch(), new_epoch()))
                cur.execute(q.claim_room, (base_seq, seq, now, room))
            for y in yjs:
                if y.epoch is not None:  # a reset: a new timeline, nothing of the old one
                    cur.execute(q.delete_yjs_log, (y.room,))
                    if y.snapshot is None:
                        cur.execute(q.delete_yjs_snapshot, (y.room,))
                    cur.execute(q.set_yjs_epoch, (y.room, now, now, new_epoch(), y.epoch))
                if y.snapshot is not None:
                    cur.execute(q.upsert_yjs_snapshot, (y.room, y.snapshot, y.covers))
                    cur.execute(q.trim_yjs_updates, (y.room, y.covers))
                if y.updates:
                    cur.executemany(q.insert_yjs_update,
                                    [(y.room, uid, data) for uid, data in y.updates])
            for ch, rows in zip(changes, encoded, strict=True):
                room = ch.room
                if ch.epoch is not None:  # the row exists: its seq was claimed above
                    cur.execute(q.set_doc_epoch, (ch.epoch, room))
                if ch.replace_all:
                    cur.execute(q.delete_room_entities, (room,))
                elif rows.deletes:
                    cur.executemany(q.delete_entity, [(room, *key) for key in rows.deletes])
                if rows.sets:
                    cur.executemany(q.upsert_entity, [
                        (room, col, eid, js(data)) for col, eid, data in rows.sets
                    ])
                if rows.history:
                    cur.executemany(q.insert_history, [
                        (room, seq, event, js(payload), created_at)
                        for seq, event, payload, created_at in rows.history
                    ])
                if rows.operations:
                    cur.executemany(q.insert_operation, [
                        (room, op_id, seq, js(result)) for op_id, seq, result in rows.operations
                    ])
                if ch.chat:
                    cur.executemany(q.insert_chat, [
                        (room, m.seq, m.user_id, m.user_name, m.text, m.client_id, m.created_at)
                        for m in ch.chat
                    ])
                cutoff = ch.seq - ch.history_limit
                cur.execute(q.trim_history, (room, cutoff))
                cur.execute(q.trim_operations, (room, cutoff))
    except Exception as exc:
        if not d.is_seq_conflict(exc):
            raise
        conflict = _find_conflict(d, conn, claims)
        if conflict is None:  # no room had moved (say, a new seq of None): the driver's error
            raise
        raise conflict from exc


def _find_conflict(
    d: Dialect[C], conn: C, claims: list[tuple[str, int, int]]
) -> SeqConflict | None:
    """The first room not at the seq its claim expects, read after the rollback (a
    room's seq only grows, so a room that had moved still has)."""
    with d.read(conn) as cur:
        for room, base_seq, _ in claims:
            row = cur.execute(d.q.room_seq, (room,)).fetchone()
            found = int(row[0]) if row else 0
            if found != base_seq:
                return SeqConflict(room, base_seq, found)
    return None


def ensure_epochs(d: Dialect[C], conn: C, room: str, now: float) -> RoomEpochs:
    """The room's epochs, stored now where it has none (one write transaction)."""
    with d.write(conn) as cur:
        row = cur.execute(d.q.ensure_epochs,
                          (room, now, now, new_epoch(), new_epoch())).fetchone()
    return RoomEpochs(str(row[0]), str(row[1]))


def load_epochs(d: Dialect[C], conn: C, room: str, now: float) -> RoomEpochs:
    """See :meth:`Store.load_epochs`: a read, and a write only for a room without."""
    with d.read(conn) as cur:
        row = cur.execute(d.q.room_epochs, (room,)).fetchone()
    if row is not None and row[0] is not None and row[1] is not None:
        return RoomEpochs(str(row[0]), str(row[1]))
    return ensure_epochs(d, conn, room, now)


def load_room(d: Dialect[C], conn: C, room: str, history_limit: int,
              chat_limit: int, now: float) -> RoomSnapshot:
    """See :meth:`Store.load_room`; one read transaction, so a consistent view (and a
    write first for a room without epochs)."""
    snap = _load_room(d, conn, room, history_limit, chat_limit)
    if snap.epoch is None:
        snap.epoch = ensure_epochs(d, conn, room, now).doc
    return snap


def _load_room(d: Dialect[C], conn: C, room: str, history_limit: int,
               chat_limit: int) -> RoomSnapshot:
    q, value = d.q, d.json_value
    with d.read(conn) as cur:
        row = cur.execute(q.room_state, (room,)).fetchone()
        if row is None:
            return RoomSnapshot()
        snap = RoomSnapshot(seq=int(row[0]), epoch=row[1])
        for collection, eid, data in cur.execute(q.entities, (room,)).fetchall():
            snap.entities.setdefault(collection, {})[eid] = value(data)
        history = cur.execute(q.history, (room, max(history_limit, 0))).fetchall()
        snap.history = [
            HistoryEntry(seq, event, value(payload), created_at)
            for seq, event, payload, created_at in reversed(history)
        ]
        for operation_id, seq, result in cur.execute(
            q.operations, (room, snap.seq - history_limit)
        ).fetchall():
            snap.operations[operation_id] = OperationRecord(operation_id, seq, value(result))
        chat = cur.execute(q.chat_newest, (room, max(chat_limit, 0))).fetchall()
        snap.chat = _chat_messages(chat)
        return snap


def load_yjs(d: Dialect[C], conn: C, room: str, now: float) -> YjsState:
    """See :meth:`Store.load_yjs`; one read transaction, so a consistent view (and a
    write first for a room without epochs)."""
    with d.read(conn) as cur:
        row = cur.execute(d.q.yjs_snapshot, (room,)).fetchone()
        state = YjsState() if row is None else YjsState(bytes(row[0]), int(row[1]))
        state.log = [(int(uid), bytes(data)) for uid, data in
                     cur.execute(d.q.yjs_log, (room, state.covers)).fetchall()]
        epoch = cur.execute(d.q.yjs_epoch, (room,)).fetchone()
        state.epoch = epoch[0] if epoch is not None else None
    if state.epoch is None:
        state.epoch = ensure_epochs(d, conn, room, now).yjs
    return state


def chat_page(d: Dialect[C], conn: C, room: str, before: int | None,
              limit: int) -> list[ChatMessage]:
    """See :meth:`Store.chat_page`; one statement, so no transaction of its own."""
    if before is None:
        rows = execute(conn, d.q.chat_newest, (room, max(limit, 0))).fetchall()
    else:
        rows = execute(conn, d.q.chat_before, (room, before, max(limit, 0))).fetchall()
    return _chat_messages(rows)


def _chat_messages(rows: list[Any]) -> list[ChatMessage]:
    """Rows of ``_CHAT_COLUMNS`` in descending seq -> messages in ascending seq."""
    return [ChatMessage(*row) for row in reversed(rows)]


def set_grant(d: Dialect[C], conn: C, pattern: str, user_id: str, role: Role | None) -> None:
    """See :meth:`Store.set_grant` (``role`` already checked)."""
    with d.write(conn) as cur:
        if role is None:
            cur.execute(d.q.delete_grant, (pattern, user_id))
        else:
            cur.execute(d.q.upsert_grant, (pattern, user_id, role))
        cur.execute(d.q.bump_grants_version, ())


# -- the async surface ------------------------------------------------------------------


class SQLStore(Generic[C]):
    """The :class:`~collabtrio.storage.base.Store` methods common to SQL backends."""

    url: str

    def __init__(self, dialect: Dialect[C], wall_clock: Callable[[], float]) -> None:
        self._dialect = dialect
        self._wall_clock = wall_clock

    async def _run(self, fn: Callable[[C], T]) -> T:
        """Run ``fn`` with a connection on a worker thread (backend-specific)."""
        raise NotImplementedError

    async def load_room(self, room: str, *, history_limit: int, chat_limit: int) -> RoomSnapshot:
        """See :meth:`Store.load_room`; one read transaction, so a consistent view."""
        d, now = self._dialect, self._wall_clock()
        return await self._run(lambda c: load_room(d, c, room, history_limit, chat_limit, now))

    async def load_yjs(self, room: str) -> YjsState:
        """See :meth:`Store.load_yjs`."""
        d, now = self._dialect, self._wall_clock()
        return await self._run(lambda c: load_yjs(d, c, room, now))

    async def load_epochs(self, room: str) -> RoomEpochs:
        """See :meth:`Store.load_epochs`."""
        d, now = self._dialect, self._wall_clock()
        return await self._run(lambda c: load_epochs(d, c, room, now))

    async def commit(self, changes: Sequence[Changes]) -> None:
        """See :meth:`Store.commit`: one transaction.

        Raises :class:`SeqConflict` (rolled back, nothing written) when a room's stored
        seq is not the ``base_seq`` of its changes, and :class:`StorageUnavailable`
        (rolled back, nothing written) on any other database error, including a
        constraint violated by the data (for example a history ``seq`` already stored)
        and data the database cannot hold.
        """
        if not changes:
            return
        now = self._wall_clock()
        d = self._dialect
        await self._run(lambda c: commit(d, c, changes, now))

    async def chat_page(self, room: str, *, before: int | None, limit: int) -> list[ChatMessage]:
        """See :meth:`Store.chat_page`."""
        d = self._dialect
        return await self._run(lambda c: chat_page(d, c, room, before, limit))

    async def grants_for(self, user_id: str) -> dict[str, Role]:
        """See :meth:`Store.grants_for`."""
        query = self._dialect.q.grants_for
        rows = await self._run(lambda c: execute(c, query, (user_id,)).fetchall())
        return {pattern: cast(Role, role) for pattern, role in rows}

    async def set_grant(self, pattern: str, user_id: str, role: Role | None) -> None:
        """See :meth:`Store.set_grant`; ``ValueError`` for an unknown role."""
        check_role(role)
        d = self._dialect
        await self._run(lambda c: set_grant(d, c, pattern, user_id, role))

    async def grants_version(self) -> int:
        """See :meth:`Store.grants_version`."""
        query = self._dialect.q.grants_version
        row = await self._run(lambda c: execute(c, query).fetchone())
        return int(row[0]) if row else 0

    async def has_grants(self) -> bool:
        """See :meth:`Store.has_grants`."""
        query = self._dialect.q.has_grants
        row = await self._run(lambda c: execute(c, query).fetchone())
        return row is not None
