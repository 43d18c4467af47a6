"""The storage interface the server talks to.

Implementations run blocking database drivers on worker threads (``trio.to_thread``),
so nothing here blocks the trio loop. Errors that mean "the database cannot be reached
or written right now" are raised as :class:`StorageUnavailable`; the server turns them
into ``STORAGE_UNAVAILABLE`` (retryable) for the client concerned.
"""

from __future__ import annotations

from typing import Protocol


class StorageError(Exception):
    """Storage could not be opened (bad URL, unreadable file, failed migration)."""


class StorageUnavailable(StorageError):
    """The database is unreachable or refuses writes right now; try again later."""


class Store(Protocol):
    """An open store."""

    url: str

    async def ping(self) -> None:
        """Raise :class:`StorageUnavailable` unless the database answers."""

    async def schema_version(self) -> int:
        """The migration version applied."""

    async def close(self) -> None:
        """Release connections and threads (idempotent)."""
