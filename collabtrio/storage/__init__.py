"""Storage backends behind one :class:`~collabtrio.storage.base.Store` interface.

``open_store(url)`` picks the backend from the URL:

- ``sqlite:///relative/file.db``, ``sqlite:////absolute/file.db`` (the default backend);
- ``postgresql://user@host:port/db`` or ``postgres://...`` (needs the ``postgres``
  extra; ``?schema=NAME`` puts the tables in that schema);
- ``memory://`` (keeps nothing) or ``memory://NAME`` (shared in this process).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .base import (
    Changes,
    ChatMessage,
    EntityWrite,
    HistoryEntry,
    OperationRecord,
    Role,
    RoomChanges,
    RoomEpochs,
    RoomSnapshot,
    SeqConflict,
    StorageError,
    StorageUnavailable,
    Store,
    UnstorableValue,
    YjsChanges,
    YjsState,
    new_epoch,
)

__all__ = [
    "Changes",
    "ChatMessage",
    "EntityWrite",
    "HistoryEntry",
    "OperationRecord",
    "Role",
    "RoomChanges",
    "RoomEpochs",
    "RoomSnapshot",
    "SeqConflict",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "UnstorableValue",
    "YjsChanges",
    "YjsState",
    "new_epoch",
    "open_store",
]


async def open_store(
    url: str,
    *,
    sqlite_synchronous: str = "NORMAL",
    wall_clock: Callable[[], float] | None = None,
) -> Store:
    """Open (and migrate) the store named by ``url``.

    ``sqlite_synchronous`` is SQLite's ``PRAGMA synchronous`` (NORMAL or FULL);
    ``wall_clock`` gives the timestamps of room rows (default ``time.time``).

    Error handling: raises :class:`StorageError` with a message a person can act on
    (bad or unsupported URL, missing driver, unreachable server, unwritable file, a
    schema newer than this code).
    """
    clock = wall_clock if wall_clock is not None else time.time
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return await SQLiteStore.open(url, synchronous=sqlite_synchronous, wall_clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise StorageError(
                f"PostgreSQL storage needs psycopg 3 and psycopg-pool ({exc}); install them "
                f"with: pip install 'collabtrio[postgres]'"
            ) from exc
        return await PostgresStore.open(url, wall_clock=clock)
    if url.startswith("memory:"):
        from .memory import MemoryStore

        return MemoryStore(url)
    raise StorageError(
        f"unsupported storage URL {url!r}: use sqlite:///path/to/file.db, "
        f"postgresql://user@host/db or memory://"
    )
