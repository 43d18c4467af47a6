"""Storage backends behind one :class:`~collabtrio.storage.base.Store` interface."""

from __future__ import annotations

from .base import StorageError, StorageUnavailable, Store

__all__ = ["StorageError", "StorageUnavailable", "Store", "open_store"]


async def open_store(url: str) -> Store:
    """Open the store named by ``url`` (``sqlite:///path`` or ``memory://``).

    Raises :class:`StorageError` with a message a person can act on.
    """
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        return await SQLiteStore.open(url)
    if url.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        raise StorageError(
            "PostgreSQL storage is not available in this version; use sqlite:///path"
        )
    raise StorageError(f"unsupported storage URL {url!r}: use sqlite:///path/to/file.db")
