"""Schema migrations, one ordered list per SQL dialect, and what the backends share.

Version ``n`` of a database means the first ``n`` scripts of its dialect's list were
applied, each in its own transaction together with the version bump (SQLite keeps the
version in ``PRAGMA user_version``, PostgreSQL in the ``schema_migrations`` table). A
database whose version is newer than ``len(list)`` is refused with
:class:`~collabtrio.storage.base.StorageError`: an older collabtrio must not write to
a schema it does not know.

Rules for adding a migration: append, never edit a released script; keep the two
lists the same length so a version number means the same schema on every backend.

The tables (timestamps are float unix seconds, JSON columns are TEXT in SQLite and
JSONB in PostgreSQL):

- ``rooms(id, seq, created_at, updated_at, doc_epoch, yjs_epoch)``: one row per room
  that was ever loaded or committed. The epochs (version 4) name the timelines of the
  room's document and of its Yjs document: every row gets both when it is created
  (migration 4 gave the rows of older versions theirs); a room with no row yet gets one
  with them when it is first loaded.
- ``entities(room, collection, id, data)``: one row per document entity.
- ``history(room, seq, event, payload, created_at)``: the replay window, trimmed to
  ``history_limit`` by every commit.
- ``operations(room, operation_id, seq, result)``: first result of each operation id,
  trimmed together with history (by ``seq``). Since version 2 ``operation_id`` holds
  the sender's key (``u<len>:<user id>:<operationId>``, ``c<len>:<user id>:<clientId>``
  for chat), so two users' ids never collide; migration 2 rewrote the older plain ids
  from the user id of their history entry (or chat message).
- ``chat_messages(room, seq, user_id, user_name, text, client_id, created_at)``: never
  trimmed; paged with ``chat_page``.
- ``yjs_snapshots(room, data, covers)`` and ``yjs_updates(room, id, data)``: a room's
  Yjs document as a merged snapshot of the log entries up to ``covers``, and the raw
  updates after it (version 3).
- ``grants(pattern, user_id, role)`` and ``meta(key, value)`` holding
  ``grants_version`` (an integer as text, bumped by every ``set_grant``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..protocol import jsonsafe
from .base import EntityWrite, RoomChanges, SeqConflict, UnstorableValue

SQLITE_MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE rooms (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE entities (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (room, collection, id)
    ) WITHOUT ROWID;
    CREATE TABLE history (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE TABLE operations (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        operation_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        result TEXT NOT NULL,
        PRIMARY KEY (room, operation_id)
    ) WITHOUT ROWID;
    CREATE INDEX operations_room_seq ON operations (room, seq);
    CREATE TABLE chat_messages (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        text TEXT NOT NULL,
        client_id TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE TABLE grants (
        pattern TEXT NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
        PRIMARY KEY (pattern, user_id)
    );
    CREATE INDEX grants_user ON grants (user_id);
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('grants_version', '0');
    """,
    # 2: operation records keyed per sender (user id), so ids of two users never collide
    """
    UPDATE operations
    SET operation_id = 'u' || length(h.uid) || ':' || h.uid || ':' || operations.operation_id
    FROM (SELECT room, seq, json_extract(payload, '$.userId') AS uid FROM history
          WHERE event IN ('op', 'field')) AS h
    WHERE operations.operation_id NOT LIKE 'chat:%'
      AND h.room = operations.room AND h.seq = operations.seq AND h.uid IS NOT NULL;
    UPDATE operations
    SET operation_id = 'c' || length(m.user_id) || ':' || m.user_id || ':' || m.client_id
    FROM chat_messages AS m
    WHERE operations.operation_id LIKE 'chat:%'
      AND m.room = operations.room AND m.seq = operations.seq AND m.client_id IS NOT NULL;
    """,
    # 3: Yjs documents: a snapshot per room and the update log after it
    """
    CREATE TABLE yjs_snapshots (
        room TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        covers INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE yjs_updates (
        room TEXT NOT NULL,
        id INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (room, id)
    ) WITHOUT ROWID;
    """,
    # 4: the epochs of a room's document and Yjs document; rooms stored so far (Yjs-only
    # rooms included, which had no row) get random ones now
    """
    ALTER TABLE rooms ADD COLUMN doc_epoch TEXT;
    ALTER TABLE rooms ADD COLUMN yjs_epoch TEXT;
    INSERT OR IGNORE INTO rooms (id, seq, created_at, updated_at)
    SELECT room, 0, CAST(strftime('%s', 'now') AS REAL), CAST(strftime('%s', 'now') AS REAL)
    FROM (SELECT room FROM yjs_snapshots UNION SELECT room FROM yjs_updates);
    UPDATE rooms SET doc_epoch = lower(hex(randomblob(12))),
                     yjs_epoch = lower(hex(randomblob(12)));
    """,
]

POSTGRES_MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE rooms (
        id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE entities (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        data JSONB NOT NULL,
        PRIMARY KEY (room, collection, id)
    );
    CREATE TABLE history (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        event TEXT NOT NULL,
        payload JSONB NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (room, seq)
    );
    CREATE TABLE operations (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        operation_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        result JSONB NOT NULL,
        PRIMARY KEY (room, operation_id)
    );
    CREATE INDEX operations_room_seq ON operations (room, seq);
    CREATE TABLE chat_messages (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        user_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        text TEXT NOT NULL,
        client_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (room, seq)
    );
    CREATE TABLE grants (
        pattern TEXT NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
        PRIMARY KEY (pattern, user_id)
    );
    CREATE INDEX grants_user ON grants (user_id);
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('grants_version', '0');
    """,
    # 2: operation records keyed per sender (user id), so ids of two users never collide
    """
    UPDATE operations AS o
    SET operation_id = 'u' || length(h.payload->>'userId') || ':' || (h.payload->>'userId')
                       || ':' || o.operation_id
    FROM history AS h
    WHERE o.operation_id NOT LIKE 'chat:%'
      AND h.room = o.room AND h.seq = o.seq AND h.event IN ('op', 'field')
      AND h.payload->>'userId' IS NOT NULL;
    UPDATE operations AS o
    SET operation_id = 'c' || length(m.user_id) || ':' || m.user_id || ':' || m.client_id
    FROM chat_messages AS m
    WHERE o.operation_id LIKE 'chat:%'
      AND m.room = o.room AND m.seq = o.seq AND m.client_id IS NOT NULL;
    """,
    # 3: Yjs documents: a snapshot per room and the update log after it
    """
    CREATE TABLE yjs_snapshots (
        room TEXT PRIMARY KEY,
        data BYTEA NOT NULL,
        covers BIGINT NOT NULL
    );
    CREATE TABLE yjs_updates (
        room TEXT NOT NULL,
        id BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (room, id)
    );
    """,
    # 4: the epochs of a room's document and Yjs document; rooms stored so far (Yjs-only
    # rooms included, which had no row) get random ones now
    """
    ALTER TABLE rooms ADD COLUMN doc_epoch TEXT, ADD COLUMN yjs_epoch TEXT;
    INSERT INTO rooms (id, seq, created_at, updated_at)
    SELECT room, 0, extract(epoch FROM now()), extract(epoch FROM now())
    FROM (SELECT room FROM yjs_snapshots UNION SELECT room FROM yjs_updates) AS y
    ON CONFLICT (id) DO NOTHING;
    UPDATE rooms SET doc_epoch = substr(md5(random()::text || id), 1, 24),
                     yjs_epoch = substr(md5(random()::text || id || 'y'), 1, 24);
    """,
]

LATEST_VERSION = len(SQLITE_MIGRATIONS)
assert len(POSTGRES_MIGRATIONS) == LATEST_VERSION, "keep the dialects in step"

ROLES = ("read", "write", "admin")


def too_new_message(where: str, version: int, known: int) -> str:
    """The refusal for a database migrated by a newer collabtrio."""
    return (
        f"{where} is at schema version {version}, newer than this collabtrio knows "
        f"({known}); upgrade collabtrio, or point it at another database or a backup"
    )


def dumps(value: Any) -> str:
    """Compact JSON for a stored column; :class:`UnstorableValue` if ``value`` is not
    storable JSON (NaN, infinities and lone surrogates included: PostgreSQL's JSONB and
    UTF-8 text columns reject them, and every backend must accept the same data)."""
    try:
        return jsonsafe.dumps(value)
    except (TypeError, ValueError) as exc:
        raise UnstorableValue(f"cannot store a value that is not JSON: {exc}") from exc


def loads(text: str) -> Any:
    """The inverse of :func:`dumps`."""
    return json.loads(text)


class Encoded(NamedTuple):
    """The rows of one :class:`RoomChanges` with every JSON value encoded (see
    :func:`encode`)."""

    deletes: list[tuple[str, str]]  # (collection, id)
    sets: list[tuple[str, str, str]]  # (collection, id, data)
    history: list[tuple[int, str, str, float]]  # (seq, event, payload, created_at)
    operations: list[tuple[str, int, str]]  # (operation_id, seq, result)


def encode(changes: RoomChanges) -> Encoded:
    """Encode the JSON of ``changes`` (entities collapsed by :func:`entity_rows`), so a
    store can refuse data that is not JSON, with :class:`UnstorableValue`, before it
    writes or checks anything: every backend then fails the same way on it."""
    deletes, sets = entity_rows(changes.entities)
    history = [(h.seq, h.event, dumps(h.payload), h.created_at) for h in changes.history]
    operations = [(o.operation_id, o.seq, dumps(o.result)) for o in changes.operations]
    return Encoded(deletes, sets, history, operations)


def seq_claims(changes: Sequence[RoomChanges]) -> list[tuple[str, int, int]]:
    """What a commit must check and set of each room it touches: ``(room, base_seq of
    its first changes, seq of its last changes)``, sorted by room, so that every
    writer takes the rooms' row locks in one order (no deadlock between two commits).

    Raises :class:`SeqConflict` if a room's later changes in the commit do not start
    at the seq its earlier ones end at (found: that seq)."""
    claims: dict[str, tuple[int, int]] = {}
    for ch in changes:
        claim = claims.get(ch.room)
        if claim is not None and claim[1] != ch.base_seq:
            raise SeqConflict(ch.room, ch.base_seq, claim[1])
        claims[ch.room] = (ch.base_seq if claim is None else claim[0], ch.seq)
    return sorted((room, base, seq) for room, (base, seq) in claims.items())


def entity_rows(
    entities: Sequence[EntityWrite],
) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Collapse a :class:`RoomChanges`' entity writes to their final state (a later
    write to the same key wins): ``(deletes [(collection, id)], sets [(collection, id,
    json)])``, each key in at most one of them, in first-write order."""
    final: dict[tuple[str, str], EntityWrite] = {}
    for write in entities:
        final[(write.collection, write.id)] = write
    deletes: list[tuple[str, str]] = []
    sets: list[tuple[str, str, str]] = []
    for (collection, entity_id), write in final.items():
        if write.data is None:
            deletes.append((collection, entity_id))
        else:
            text = write.encoded if write.encoded is not None else dumps(write.data)
            sets.append((collection, entity_id, text))
    return deletes, sets


def check_role(role: str | None) -> None:
    """``ValueError`` unless ``role`` is a role or None (a caller's bug, not storage's)."""
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)} or None")
