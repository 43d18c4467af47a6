"""The room registry: opens rooms on demand, each in its own task and nursery.

A room is inserted in :attr:`RoomRegistry.rooms` *before* its task starts, and removes
itself synchronously when it decides to close, so a join that races the room's
creation or its closing finds exactly one live room. Personal rooms (``user:<sub>``)
are not Room tasks: they are an index from user id to that user's peers, which is all
a personal room needs (delivery to one user's sockets), at no cost per user.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ..auth.tokens import Identity
from ..config import Config
from ..errors import CollabError, ErrorCode
from ..observability.sink import NULL_METRICS, Metrics
from ..storage.base import Store
from ..storage.writer import CommitQueue
from .commands import ServerCall, ServerCommand
from .mailbox import MailboxClosed
from .peer import Peer
from .room import ComponentFactory, Room


class RoomRegistry:
    """All open rooms of one server.

    ``components`` builds each room's components, in order (the document keeper;
    later Yjs); ``metrics`` is where the rooms count (nothing by default). Resource
    handling: rooms run in the nursery given to :meth:`run`;
    cancelling it tears every room down (each flushes what it holds, shielded).
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        commits: CommitQueue,
        *,
        components: Sequence[ComponentFactory] = (),
        wall_clock: Callable[[], float] = time.time,
        metrics: Metrics = NULL_METRICS,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.commits = commits
        self.components = tuple(components)
        self.wall_clock = wall_clock
        self.rooms: dict[str, Room] = {}
        self.users: dict[str, set[Peer]] = {}
        self._nursery: trio.Nursery | None = None
        self.opened_total = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the rooms' nursery until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def wall_ms(self) -> int:
        """Milliseconds since the epoch, from the server's wall clock."""
        return int(self.wall_clock() * 1000)

    async def flush_all(self) -> None:
        """Commit every room's pending writes now (at shutdown, before clients go)."""
        async with trio.open_nursery() as nursery:
            for room in list(self.rooms.values()):
                if not room.idle:
                    nursery.start_soon(room.flush)

    def get(self, room_id: str) -> Room | None:
        """The open room with this id, if any."""
        return self.rooms.get(room_id)

    def get_or_open(self, room_id: str) -> Room:
        """The open room with this id, opening it (and starting its task) if needed."""
        room = self.rooms.get(room_id)
        if room is None:
            if self._nursery is None:
                raise RuntimeError("RoomRegistry.run is not running")
            room = Room(room_id, self, self.components)
            self.rooms[room_id] = room
            self.opened_total += 1
            self._nursery.start_soon(room.run, name=f"room:{room_id}")
        return room

    async def call(self, room_id: str, make: Callable[[ServerCall], ServerCommand]) -> Any:
        """Run a server-side command in room ``room_id`` (opening the room if it is
        not open) and return its answer; raise the :class:`CollabError` it was refused
        with. The command goes through the room's mailbox, in order with its members'
        commands (waiting while the mailbox is full)."""
        while True:
            room = self.get_or_open(room_id)
            caller = ServerCall()
            try:
                await room.mailbox.put(make(caller))
            except MailboxClosed:
                # the room closed between the lookup and the put: the next is fresh
                await trio.lowlevel.checkpoint()
                continue
            return await caller.result()

    @staticmethod
    def has_room_for(room: Room, component: str | None = None) -> bool:
        """True if ``room`` takes one more command now: its mailbox is below its bound
        (and so is the queue of ``component``, when named), and it is not closing."""
        if room.mailbox.closed or len(room.mailbox) >= room.mailbox.bound:
            return False
        part = room.component(component) if component is not None else None
        return part is None or not part.full

    def offer(self, room_id: str, make: Callable[[ServerCall], ServerCommand], *,
              open_room: bool = True, component: str | None = None,
              identity: Identity | None = None) -> ServerCall | None:
        """Put a server-side command in room ``room_id``'s mailbox without waiting
        (a door that refuses, for callers outside the process: the HTTP API).

        Returns the :class:`ServerCall` to await the answer on; None when the room is
        not open and ``open_room`` is false. Raises :class:`CollabError`
        (``RATE_LIMITED``, retryable) when the room's mailbox (or ``component``'s queue)
        is full. Synchronous, so a caller can check several rooms and then offer to each
        with no other task in between.
        """
        room = self.rooms.get(room_id) if not open_room else self.get_or_open(room_id)
        if room is None:
            return None
        if not self.has_room_for(room, component):
            raise CollabError(ErrorCode.RATE_LIMITED,
                              f"room {room_id!r} is busy; retry shortly", retryable=True)
        caller = ServerCall(identity)
        # a room whose mailbox is closed has left the registry already (see Room), and
        # has_room_for refused it: this cannot raise MailboxClosed
        room.mailbox.put_nowait(make(caller))
        return caller

    def forget(self, room: Room) -> None:
        """Called by a closing room: later joins open a fresh one."""
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]

    # -- personal rooms ------------------------------------------------------------------

    def add_user_connection(self, conn: Peer) -> None:
        """Put ``conn`` in its personal room ``user:<sub>``."""
        self.users.setdefault(conn.identity.user_id, set()).add(conn)

    def remove_user_connection(self, conn: Peer) -> None:
        """Take ``conn`` out of its personal room (a no-op if it is not in one)."""
        conns = self.users.get(conn.identity.user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.users[conn.identity.user_id]
