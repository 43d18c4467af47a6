"""An in-process store for tests and the in-memory testing harness (keeps nothing)."""

from __future__ import annotations

import trio

from .sqlite import MIGRATIONS


class MemoryStore:
    """A store that lives and dies with the process."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self.closed = False

    async def ping(self) -> None:
        """Always reachable."""
        await trio.lowlevel.checkpoint()

    async def schema_version(self) -> int:
        """The newest migration (nothing to migrate in memory)."""
        await trio.lowlevel.checkpoint()
        return len(MIGRATIONS)

    async def close(self) -> None:
        """Forget everything."""
        await trio.lowlevel.checkpoint()
        self.closed = True
