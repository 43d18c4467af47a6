"""An in-process store for unit tests and the in-memory testing harness.

It has the semantics of the SQL backends (the storage contract tests run against all
three), kept in plain dicts:

- JSON values are stored encoded (the same encoder as the SQL backends), so callers
  can never alias stored state, and data that SQL would refuse (NaN, non-JSON types)
  is refused here too.
- :meth:`MemoryStore.commit` is all or nothing: the rooms it touches are copied,
  changed, and swapped in only when every :class:`RoomChanges` applied, so a
  duplicate history/chat ``seq`` or operation id (a primary key violation in SQL)
  raises :class:`StorageUnavailable`, and a room not at the ``base_seq`` of its
  changes raises :class:`SeqConflict`, leaving nothing written. Two stores opened
  with the same ``memory://NAME`` are two writers on one database.
- ``memory://`` is a fresh empty store; ``memory://NAME`` shares its data with every
  other store opened with the same name in this process (until :func:`forget`), so a
  test can close and reopen it.
- Fault injection: :meth:`MemoryStore.fail_next` makes the next ``n`` commits raise
  :class:`StorageUnavailable`; setting :attr:`MemoryStore.failing` makes every commit
  (and :meth:`ping`) raise until it is cleared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

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
    StorageError,
    StorageUnavailable,
    YjsChanges,
    YjsState,
    new_epoch,
)
from .migrations import LATEST_VERSION, Encoded, check_role, encode, loads, seq_claims


@dataclass
class _Yjs:
    snapshot: bytes | None = None
    covers: int = 0
    log: dict[int, bytes] = field(default_factory=dict)


@dataclass
class _Room:
    seq: int = 0
    entities: dict[tuple[str, str], str] = field(default_factory=dict)  # -> JSON text
    history: dict[int, tuple[str, str, float]] = field(default_factory=dict)
    operations: dict[str, tuple[int, str]] = field(default_factory=dict)
    chat: dict[int, ChatMessage] = field(default_factory=dict)
    doc_epoch: str | None = None
    yjs_epoch: str | None = None

    def copy(self) -> _Room:
        return _Room(
            self.seq, dict(self.entities), dict(self.history), dict(self.operations),
            dict(self.chat), self.doc_epoch, self.yjs_epoch,
        )


def _new_room() -> _Room:
    # like a SQL row, a room is born with its epochs
    return _Room(doc_epoch=new_epoch(), yjs_epoch=new_epoch())


@dataclass
class _Data:
    rooms: dict[str, _Room] = field(default_factory=dict)
    yjs: dict[str, _Yjs] = field(default_factory=dict)
    grants: dict[tuple[str, str], Role] = field(default_factory=dict)
    grants_version: int = 0


_NAMED: dict[str, _Data] = {}


def forget(url: str) -> None:
    """Drop the shared data of a named ``memory://NAME`` store."""
    _NAMED.pop(url, None)


class MemoryStore:
    """A store that lives and dies with the process (see the module docstring)."""

    def __init__(self, url: str = "memory://") -> None:
        if not url.startswith("memory://"):
            raise StorageError(f"bad memory store URL {url!r}: use memory:// or memory://NAME")
        self.url = url
        self.closed = False
        self.failing = False
        self._fail_count = 0
        if url == "memory://":
            self._data = _Data()
        else:
            self._data = _NAMED.setdefault(url, _Data())

    def fail_next(self, n: int = 1) -> None:
        """Make the next ``n`` commits raise :class:`StorageUnavailable`."""
        self._fail_count = n

    def _check_open(self) -> None:
        if self.closed:
            raise StorageUnavailable("the memory store is closed")

    async def ping(self) -> None:
        """Reachable unless closed or :attr:`failing`."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        if self.failing:
            raise StorageUnavailable("memory store: failing (fault injection)")

    async def schema_version(self) -> int:
        """The newest migration (nothing to migrate in memory)."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        return LATEST_VERSION

    def _epochs(self, room: str) -> RoomEpochs:
        """The room's epochs, stored now where it has none (like the SQL stores, a
        loaded room has a row)."""
        r = self._data.rooms.get(room)
        if r is None:
            r = self._data.rooms[room] = _new_room()
        if r.doc_epoch is None:
            r.doc_epoch = new_epoch()
        if r.yjs_epoch is None:
            r.yjs_epoch = new_epoch()
        return RoomEpochs(r.doc_epoch, r.yjs_epoch)

    async def load_epochs(self, room: str) -> RoomEpochs:
        """See :meth:`Store.load_epochs`."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._epochs(room)

    async def load_room(self, room: str, *, history_limit: int, chat_limit: int) -> RoomSnapshot:
        """See :meth:`Store.load_room`."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        epoch = self._epochs(room).doc
        r = self._data.rooms[room]
        snap = RoomSnapshot(seq=r.seq, epoch=epoch)
        for (collection, eid), data in r.entities.items():
            snap.entities.setdefault(collection, {})[eid] = loads(data)
        seqs = sorted(r.history)[-history_limit:] if history_limit > 0 else []
        for seq in seqs:
            event, payload, created_at = r.history[seq]
            snap.history.append(HistoryEntry(seq, event, loads(payload), created_at))
        low = r.seq - history_limit
        for operation_id, (seq, result) in r.operations.items():
            if seq > low:
                snap.operations[operation_id] = OperationRecord(operation_id, seq, loads(result))
        chat = sorted(r.chat)[-chat_limit:] if chat_limit > 0 else []
        snap.chat = [r.chat[seq] for seq in chat]  # frozen dataclasses of str/int/float
        return snap

    async def load_yjs(self, room: str) -> YjsState:
        """See :meth:`Store.load_yjs`."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        epoch = self._epochs(room).yjs
        y = self._data.yjs.get(room)
        if y is None:
            return YjsState(epoch=epoch)
        return YjsState(y.snapshot, y.covers, sorted(y.log.items()), epoch)

    async def commit(self, all_changes: Sequence[Changes]) -> None:
        """See :meth:`Store.commit`; :class:`StorageUnavailable` (nothing written) for
        injected faults, duplicate keys and non-JSON data, :class:`SeqConflict`
        (nothing written) for a room not at the ``base_seq`` of its changes."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        if self.failing:
            raise StorageUnavailable("memory store: failing (fault injection)")
        if self._fail_count > 0:
            self._fail_count -= 1
            raise StorageUnavailable("memory store: injected commit failure")
        changes = [ch for ch in all_changes if isinstance(ch, RoomChanges)]
        yjs = [ch for ch in all_changes if isinstance(ch, YjsChanges)]
        # in the order of the SQL stores: non-JSON data, the seq checks, then the rows
        encoded = [encode(ch) for ch in changes]
        for room, base_seq, _ in seq_claims(changes):
            stored = self._data.rooms.get(room)
            found = stored.seq if stored is not None else 0
            if found != base_seq:
                raise SeqConflict(room, base_seq, found)
        staged: dict[str, _Room] = {}
        for ch, rows in zip(changes, encoded, strict=True):
            r = staged.get(ch.room)
            if r is None:
                old = self._data.rooms.get(ch.room)
                r = staged[ch.room] = old.copy() if old is not None else _new_room()
            _apply(r, ch, rows)
        staged_yjs: dict[str, _Yjs] = {}
        for y in yjs:
            doc = staged_yjs.get(y.room)
            if doc is None:
                old_doc = self._data.yjs.get(y.room)
                doc = staged_yjs[y.room] = (
                    _Yjs(old_doc.snapshot, old_doc.covers, dict(old_doc.log))
                    if old_doc is not None else _Yjs())
            if y.epoch is not None:  # a reset: a new timeline, nothing of the old one
                doc.log = {}
                # like the SQL stores: no snapshot row, no covers
                doc.snapshot, doc.covers = y.snapshot, y.covers if y.snapshot is not None else 0
                r = staged.get(y.room)
                if r is None:
                    old = self._data.rooms.get(y.room)
                    r = staged[y.room] = old.copy() if old is not None else _new_room()
                r.yjs_epoch = y.epoch
            if y.snapshot is not None:
                doc.snapshot, doc.covers = y.snapshot, y.covers
                doc.log = {k: v for k, v in doc.log.items() if k > y.covers}
            for uid, data in y.updates:
                if uid in doc.log:
                    raise StorageUnavailable(
                        f"constraint violated: yjs update {uid} of room {y.room!r} exists")
                doc.log[uid] = data
        self._data.rooms.update(staged)
        self._data.yjs.update(staged_yjs)

    async def chat_page(self, room: str, *, before: int | None, limit: int) -> list[ChatMessage]:
        """See :meth:`Store.chat_page`."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        r = self._data.rooms.get(room)
        if r is None or limit <= 0:
            return []
        seqs = sorted(s for s in r.chat if before is None or s < before)[-limit:]
        return [r.chat[s] for s in seqs]

    async def grants_for(self, user_id: str) -> dict[str, Role]:
        """See :meth:`Store.grants_for`."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        return {p: role for (p, u), role in self._data.grants.items() if u == user_id}

    async def set_grant(self, pattern: str, user_id: str, role: Role | None) -> None:
        """See :meth:`Store.set_grant`; ``ValueError`` for an unknown role."""
        check_role(role)
        await trio.lowlevel.checkpoint()
        self._check_open()
        if role is None:
            self._data.grants.pop((pattern, user_id), None)
        else:
            self._data.grants[(pattern, user_id)] = role
        self._data.grants_version += 1

    async def grants_version(self) -> int:
        """See :meth:`Store.grants_version`."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._data.grants_version

    async def has_grants(self) -> bool:
        """See :meth:`Store.has_grants`."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        return bool(self._data.grants)

    async def close(self) -> None:
        """Close this handle (idempotent); a named store's data stays for a reopen."""
        await trio.lowlevel.checkpoint()
        self.closed = True


def _apply(r: _Room, ch: RoomChanges, rows: Encoded) -> None:
    if ch.replace_all:
        r.entities.clear()
    for key in rows.deletes:
        r.entities.pop(key, None)
    for collection, eid, data in rows.sets:
        r.entities[(collection, eid)] = data
    r.seq = ch.seq
    if ch.epoch is not None:
        r.doc_epoch = ch.epoch
    for seq, event, payload, created_at in rows.history:
        if seq in r.history:
            raise StorageUnavailable(
                f"constraint violated: history seq {seq} of room {ch.room!r} exists"
            )
        r.history[seq] = (event, payload, created_at)
    for operation_id, seq, result in rows.operations:
        if operation_id in r.operations:
            raise StorageUnavailable(
                f"constraint violated: operation {operation_id!r} of room {ch.room!r} exists"
            )
        r.operations[operation_id] = (seq, result)
    for m in ch.chat:
        if m.seq in r.chat:
            raise StorageUnavailable(
                f"constraint violated: chat seq {m.seq} of room {ch.room!r} exists"
            )
        r.chat[m.seq] = ChatMessage(
            m.seq, m.user_id, m.user_name, m.text, m.client_id, m.created_at
        )
    cutoff = ch.seq - ch.history_limit
    for seq in [s for s in r.history if s <= cutoff]:
        del r.history[seq]
    for operation_id in [k for k, (s, _) in r.operations.items() if s <= cutoff]:
        del r.operations[operation_id]
