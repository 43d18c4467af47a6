"""The storage interface the server talks to, and the records that cross it.

Implementations run blocking database drivers on worker threads (``trio.to_thread``),
so nothing here blocks the trio loop. Errors that mean "the database cannot be reached
or written right now" are raised as :class:`StorageUnavailable`; the server turns them
into ``STORAGE_UNAVAILABLE`` (retryable) for the clients concerned. Data that no
backend can store (NaN, infinities, lone surrogates) is :class:`UnstorableValue`: the
data's fault, so it is never reported as an outage.

The unit of writing is :class:`RoomChanges`: everything one room commits at once (a
batch of operations, one debounce flush, chat messages). :meth:`Store.commit` writes
any number of them in ONE transaction, all or nothing; the
:class:`~collabtrio.storage.writer.CommitQueue` in front of the store merges what
several rooms queue at the same time into one call (group commit).

Each :class:`RoomChanges` names the seq it was planned on (``base_seq``), and the
commit is a compare-and-set on the room's stored seq: if another writer (another
process on the same database) committed to the room in between, the commit raises
:class:`SeqConflict` and writes nothing, so two writers can never interleave a room's
history.

A room's document is ``{collection: {id: entity}}``; each entity is a row, so a change
to one entity writes one row, never the whole document.

Epochs: a room's document (with its seq and history) and its Yjs document each carry
an *epoch*, a random id (:func:`new_epoch`) that names their timeline. A store creates
and persists both the first time the room is loaded (:meth:`Store.load_room`,
:meth:`Store.load_yjs` or :meth:`Store.load_epochs` on a room without them), so a
restart gives the same epochs; a commit renews one only when it says so
(``RoomChanges.epoch``, ``YjsChanges.epoch``), in the same transaction as the change
that starts the new timeline. A backup carries its epochs, so restoring it brings
them back with the data.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol.ids import Role as Role  # re-exported: storage records carry roles


class StorageError(Exception):
    """Storage could not be opened (bad URL, unreadable file, failed migration)."""


class StorageUnavailable(StorageError):
    """The database is unreachable or refuses writes right now; try again later."""


class UnstorableValue(StorageError):
    """A value of the commit is not storable JSON (a non-finite number, a lone
    surrogate, something that is not JSON). Nothing was written.

    The data's fault, not the database's: retrying the same changes cannot succeed,
    and the group commit retries the other rooms of the transaction without it.
    """


class SeqConflict(StorageError):
    """A commit was planned on a seq the room is no longer at: another writer got there
    first. Nothing of the commit was written.

    Not a :class:`StorageUnavailable`: retrying the same changes cannot succeed. The
    writer must reload the room (``load_room``) and plan again, and whoever runs two
    processes on one database should make sure each room has one writer.
    ``room``, ``expected`` (the commit's ``base_seq``) and ``found`` (the room's seq
    when the conflict was seen; 0 for a room with no row) say what happened.
    """

    def __init__(self, room: str, expected: int, found: int) -> None:
        super().__init__(
            f"room {room!r} was changed by another writer (another process using the same "
            f"database?): expected seq {expected}, found {found}; nothing was written. "
            f"Reload the room before writing again, and make sure only one collabtrio "
            f"serves a room"
        )
        self.room = room
        self.expected = expected
        self.found = found


def new_epoch() -> str:
    """A fresh random epoch: 16 URL-safe characters (96 random bits)."""
    return secrets.token_urlsafe(12)


@dataclass(frozen=True, slots=True)
class RoomEpochs:
    """A room's two epochs: ``doc`` (the JSON document, its seq and history) and
    ``yjs`` (the Yjs document)."""

    doc: str
    yjs: str


@dataclass(frozen=True, slots=True)
class EntityWrite:
    """Set (``data`` a dict) or delete (``data`` None) one entity.

    ``encoded`` is ``data`` as stored JSON when the writer already made it (the
    document measures every entity it writes), so stores do not encode it again.
    """

    collection: str
    id: str
    data: dict[str, Any] | None
    encoded: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One persisted event of a room, as it was broadcast (for replay with ``since``).

    ``event`` is the Socket.IO event name (``op``, ``field``, ``chat``) and ``payload``
    the object broadcast with it (it includes ``seq``).
    """

    seq: int
    event: str
    payload: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat message (it also has a history entry with the same ``seq``)."""

    seq: int
    user_id: str
    user_name: str
    text: str
    client_id: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class OperationRecord:
    """The first result of an applied operation, kept so a retry gets the same answer."""

    operation_id: str
    seq: int
    result: dict[str, Any]


@dataclass(slots=True)
class RoomChanges:
    """Everything one room writes in one go.

    First the room's stored seq is compared with ``base_seq``, the room's committed
    seq these changes were planned on (0 for a room that was never committed; for a
    room that comes twice in one commit, the ``seq`` of its earlier changes): if they
    differ, the whole commit raises :class:`SeqConflict`. Then, in this order: if
    ``replace_all``, every entity of the room is deleted; then ``entities`` in order (a
    later write to the same key wins); the room's ``seq`` is set (the room row is
    created if missing); ``history``, ``operations`` and ``chat`` rows are inserted;
    then history rows with ``seq <= seq - history_limit`` and operation records with
    such a seq are deleted. If ``epoch`` is set, the room's document epoch becomes it
    (a ``replace`` starts a new timeline).
    """

    room: str
    seq: int
    history_limit: int
    base_seq: int = field(kw_only=True)
    entities: list[EntityWrite] = field(default_factory=list)
    replace_all: bool = False
    history: list[HistoryEntry] = field(default_factory=list)
    operations: list[OperationRecord] = field(default_factory=list)
    chat: list[ChatMessage] = field(default_factory=list)
    epoch: str | None = None


@dataclass(slots=True)
class YjsChanges:
    """What one room's Yjs document writes in one go: no seq check (the document is a
    CRDT: its updates commute, and each room has one writer).

    If ``snapshot`` is set it replaces the stored one and every log entry with an id
    up to ``covers`` is deleted (a compaction: the snapshot is those entries merged);
    then ``updates``, ``(id, raw update)`` pairs with ids above ``covers``, are appended
    to the room's update log.

    If ``epoch`` is set the changes are a reset (an admin replaced or deleted the
    document): every log entry is deleted whatever its id, the stored snapshot becomes
    ``snapshot`` (none if None) with ``covers``, and the room's Yjs epoch becomes
    ``epoch``; ``updates`` are appended after that.
    """

    room: str
    updates: list[tuple[int, bytes]] = field(default_factory=list)
    snapshot: bytes | None = None
    covers: int = 0
    epoch: str | None = None


@dataclass(slots=True)
class YjsState:
    """A room's stored Yjs document: the snapshot (or None) and the log after it."""

    snapshot: bytes | None = None
    covers: int = 0
    log: list[tuple[int, bytes]] = field(default_factory=list)  # ascending id
    epoch: str | None = None
    """The room's Yjs epoch (a store always fills it in)."""


Changes = RoomChanges | YjsChanges
"""What one room puts into a commit."""


@dataclass(slots=True)
class RoomSnapshot:
    """What a room needs when it opens: its document, seq and recent past."""

    seq: int = 0
    entities: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)  # ascending seq
    operations: dict[str, OperationRecord] = field(default_factory=dict)
    chat: list[ChatMessage] = field(default_factory=list)  # the newest, ascending seq
    epoch: str | None = None
    """The room's document epoch (a store always fills it in)."""


class Store(Protocol):
    """An open store (SQLite, PostgreSQL, or memory for tests)."""

    url: str

    async def ping(self) -> None:
        """Raise :class:`StorageUnavailable` unless the database answers."""

    async def schema_version(self) -> int:
        """The migration version applied."""

    async def load_room(self, room: str, *, history_limit: int, chat_limit: int) -> RoomSnapshot:
        """The room's entities, seq, retained history (at most ``history_limit`` newest
        entries), the operation records of that window, and the newest ``chat_limit``
        chat messages, and its document epoch. An unknown room gives an empty snapshot at
        seq 0; a room without epochs gets them (created and stored now)."""

    async def load_yjs(self, room: str) -> YjsState:
        """The room's Yjs snapshot, the update log after it (empty for a room that never
        used Yjs) and its Yjs epoch (created and stored now if the room has none)."""

    async def load_epochs(self, room: str) -> RoomEpochs:
        """The room's two epochs, created and stored now if it has none yet."""

    async def commit(self, changes: Sequence[Changes]) -> None:
        """Write every :class:`RoomChanges` and :class:`YjsChanges` in one transaction,
        all or nothing.

        Raises :class:`SeqConflict` (nothing written) if a room's stored seq is not the
        ``base_seq`` of its changes, :class:`UnstorableValue` (nothing written) if a
        value is not storable JSON, :class:`StorageUnavailable` (nothing written) if it
        cannot commit for another reason.
        """

    async def chat_page(self, room: str, *, before: int | None, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` chat messages with ``seq < before`` (all if None), the newest
        ones, returned in ascending seq."""

    async def grants_for(self, user_id: str) -> dict[str, Role]:
        """The stored grants of one user: room id or ``prefix*`` pattern -> role."""

    async def set_grant(self, pattern: str, user_id: str, role: Role | None) -> None:
        """Grant ``role`` on ``pattern`` to ``user_id`` (``None`` revokes)."""

    async def grants_version(self) -> int:
        """A number that changes whenever a grant is set or revoked (for polling)."""

    async def has_grants(self) -> bool:
        """Whether any grant is stored at all (one cheap query: while none is, the
        server skips the lookup on every connect)."""

    async def close(self) -> None:
        """Release connections and threads (idempotent)."""
