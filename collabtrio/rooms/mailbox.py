"""A room's inbox: bounded for client commands, never refusing departures.

A trio memory channel cannot take a message without awaiting when it is full, but a
disconnecting client must be removed from its rooms from a ``finally`` block, where it
cannot wait. So the mailbox has two doors: :meth:`Mailbox.put` waits while the inbox
holds ``bound`` items (backpressure on busy clients), :meth:`Mailbox.put_nowait` always
succeeds (leaves, disconnects, server-side publishes, which are bounded by other means).
The room task takes everything waiting in one :meth:`Mailbox.get_batch` call.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class MailboxClosed(Exception):
    """The room behind this mailbox has stopped; open the room again."""


class Mailbox(Generic[T]):
    """Many producers, one consumer (the room task)."""

    __slots__ = ("_items", "_readers", "_writers", "bound", "closed")

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._items: deque[T] = deque()
        self._readers = trio.lowlevel.ParkingLot()
        self._writers = trio.lowlevel.ParkingLot()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """The room has stopped: later puts raise :class:`MailboxClosed`, waiters wake."""
        self.closed = True
        self._writers.unpark_all()

    @property
    def reader_waiting(self) -> bool:
        """The room's task is parked in :meth:`get_batch` with nothing queued (so
        everything put before has been taken)."""
        return bool(self._readers) and not self._items and not self.closed

    def put_nowait(self, item: T) -> None:
        """Queue ``item`` whatever the bound (for departures and control messages).

        Raises :class:`MailboxClosed` once the room has stopped.
        """
        if self.closed:
            raise MailboxClosed
        self._items.append(item)
        if self._readers:
            self._readers.unpark()

    async def put(self, item: T) -> None:
        """Queue ``item``, first waiting while the inbox is at its bound."""
        while len(self._items) >= self.bound and not self.closed:
            await self._writers.park()
        self.put_nowait(item)

    def get_nowait_all(self) -> list[T]:
        """Everything queued right now, without waiting."""
        items = list(self._items)
        self._items.clear()
        if self._writers:
            self._writers.unpark_all()
        return items

    async def get_batch(self, deadline: float = float("inf")) -> list[T]:
        """Everything queued, waiting until something is or ``deadline`` passes ([])."""
        if not self._items:
            with trio.move_on_at(deadline):
                await self._readers.park()
        items = list(self._items)
        self._items.clear()
        if self._writers:
            self._writers.unpark_all()
        return items
