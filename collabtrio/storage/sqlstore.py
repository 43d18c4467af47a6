"""What the SQL stores share: the async surface over a backend's statement functions.

Each backend module (``sqlite``, ``postgres``) writes its statements as plain
functions of a driver connection, run on a worker thread, and bundles them in a
:class:`Statements`; its store class subclasses :class:`SQLStore` and supplies only
``_run`` (how a function gets a connection and a thread), opening and closing. The
methods here are therefore the same for every SQL backend by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from .base import ChatMessage, Role, RoomChanges, RoomSnapshot
from .migrations import check_role

C = TypeVar("C")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Statements(Generic[C]):
    """A backend's statement functions, each run with a connection on a worker thread."""

    load_room: Callable[[C, str, int, int], RoomSnapshot]
    commit: Callable[[C, Sequence[RoomChanges], float], None]
    chat_page: Callable[[C, str, int | None, int], list[ChatMessage]]
    set_grant: Callable[[C, str, str, Role | None], None]
    param: str  # the driver's placeholder: "?" or "%s"


class SQLStore(Generic[C]):
    """The :class:`~collabtrio.storage.base.Store` methods common to SQL backends."""

    url: str

    def __init__(self, statements: Statements[C], wall_clock: Callable[[], float]) -> None:
        self._statements = statements
        self._wall_clock = wall_clock

    async def _run(self, fn: Callable[[C], T]) -> T:
        """Run ``fn`` with a connection on a worker thread (backend-specific)."""
        raise NotImplementedError

    async def load_room(self, room: str, *, history_limit: int, chat_limit: int) -> RoomSnapshot:
        """See :meth:`Store.load_room`; one read transaction, so a consistent view."""
        load = self._statements.load_room
        return await self._run(lambda c: load(c, room, history_limit, chat_limit))

    async def commit(self, changes: Sequence[RoomChanges]) -> None:
        """See :meth:`Store.commit`: one transaction.

        Raises :class:`StorageUnavailable` (rolled back, nothing written) on any
        database error, including a constraint violated by the data (for example a
        history ``seq`` already stored) and data the database cannot hold.
        """
        if not changes:
            return
        now = self._wall_clock()
        commit = self._statements.commit
        await self._run(lambda c: commit(c, changes, now))

    async def chat_page(self, room: str, *, before: int | None, limit: int) -> list[ChatMessage]:
        """See :meth:`Store.chat_page`."""
        page = self._statements.chat_page
        return await self._run(lambda c: page(c, room, before, limit))

    async def grants_for(self, user_id: str) -> dict[str, Role]:
        """See :meth:`Store.grants_for`."""
        query = f"SELECT pattern, role FROM grants WHERE user_id = {self._statements.param}"
        rows = await self._run(lambda c: cast(Any, c).execute(query, (user_id,)).fetchall())
        return {pattern: cast(Role, role) for pattern, role in rows}

    async def set_grant(self, pattern: str, user_id: str, role: Role | None) -> None:
        """See :meth:`Store.set_grant`; ``ValueError`` for an unknown role."""
        check_role(role)
        set_grant = self._statements.set_grant
        await self._run(lambda c: set_grant(c, pattern, user_id, role))

    async def grants_version(self) -> int:
        """See :meth:`Store.grants_version`."""
        row = await self._run(
            lambda c: cast(Any, c)
            .execute("SELECT value FROM meta WHERE key = 'grants_version'")
            .fetchone()
        )
        return int(row[0]) if row else 0
