"""A room: one task that owns the room's state, in a nursery of its own.

Theory of operation: handlers never touch a room's state. They put a command in the
room's :class:`~collabtrio.rooms.mailbox.Mailbox` and go on; the room task takes the
commands in batches and applies them one by one, with no ``await`` between a check and
the update it guards, so ordering is total per room and there are no locks. The room
answers each command itself (ack, error or event) by queueing pre-encoded frames in
the members' outboxes; it never awaits a client's socket. A broadcast is encoded once
and the same frame bytes go to every member.

Lifecycle: the registry creates the room and inserts it before its task starts, so
concurrent joins find the same room. With no members for ``room_idle_s`` the room
removes itself from the registry (synchronously, after checking that its mailbox is
empty) and its nursery exits. Cancelling the room's scope tears it down the same way:
every member forgets the room.

Invariants: ``conn.rooms[room.id] is room`` exactly when ``conn`` is in ``members``;
presence is broadcast once per batch in which membership changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ..config import Role
from ..errors import CollabError, ErrorCode
from ..transport.connection import Connection, event_frames
from .mailbox import Mailbox

if TYPE_CHECKING:
    from .registry import RoomRegistry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Join:
    """Add ``conn`` with ``role``; answer with the ack, or a ``joined`` event."""

    conn: Connection
    role: Role
    ack_id: int | None
    since: int | None = None
    at_connect: bool = False


@dataclass(slots=True)
class Leave:
    """Remove ``conn`` (``ack_id`` None for a disconnect: no answer)."""

    conn: Connection
    ack_id: int | None = None


@dataclass(slots=True)
class Relay:
    """Ephemeral event from ``conn`` to the other members (cursor, broadcast...)."""

    conn: Connection
    event: str
    payload: dict[str, Any]
    ack_id: int | None
    volatile: bool


@dataclass(slots=True)
class Publish:
    """An event from the server side (publish API) to every member."""

    event: str
    data: Any


Command = Join | Leave | Relay | Publish

# member fields a relay updates in the presence list
_PRESENCE_FIELDS = {"cursor": "cursor", "selection": "selection", "typing": "typing"}


@dataclass(slots=True)
class Member:
    """One connection's place in a room."""

    conn: Connection
    role: Role
    joined_at: int
    last_activity: int
    cursor: Any = None
    selection: Any = None
    typing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def presence_entry(self) -> dict[str, Any]:
        """This member as the ``presence`` event lists it."""
        ident = self.conn.identity
        assert ident is not None
        return {
            "socketId": self.conn.sid,
            "userId": ident.user_id,
            "userName": ident.name,
            "avatarUrl": ident.picture,
            "role": self.role,
            "joinedAt": self.joined_at,
            "lastActivity": self.last_activity,
            "cursor": self.cursor,
            "selection": self.selection,
            "typing": self.typing,
        }


class Room:
    """State and task of one room (see the module docstring)."""

    def __init__(self, room_id: str, registry: RoomRegistry) -> None:
        self.id = room_id
        self.registry = registry
        cfg = registry.config
        self.mailbox: Mailbox[Command] = Mailbox(cfg.room_inbox_size)
        self.members: dict[Connection, Member] = {}
        self.seq = 0
        self.last_activity = registry.wall_ms()
        self.closed = False
        self.cancel_scope = trio.CancelScope()
        self._presence_dirty = False
        # membership version, and the version each joiner of this batch saw in its ack
        self._version = 0
        self._acked_version: dict[Connection, int] = {}
        self._empty_since = trio.current_time()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """The room task: serve commands until idle for ``room_idle_s`` or cancelled."""
        try:
            with self.cancel_scope:
                async with trio.open_nursery():
                    await self._serve()
        finally:
            self._teardown()

    async def _serve(self) -> None:
        idle_s = self.registry.config.room_idle_s
        while True:
            deadline = self._empty_since + idle_s if not self.members else float("inf")
            batch = await self.mailbox.get_batch(deadline)
            if batch:
                for cmd in batch:
                    self._apply(cmd)
                # drop the commands now: an idle room must not keep the connections of
                # its last batch (departed members) alive until it wakes again
                del batch, cmd
                if self._presence_dirty:
                    self._presence_dirty = False
                    self._broadcast_presence()
                else:
                    self._acked_version.clear()
                continue
            if not self.members and not self.mailbox and trio.current_time() >= deadline:
                log.debug("room %s idle for %ss: closing", self.id, idle_s)
                return

    def _teardown(self) -> None:
        self.closed = True
        self.registry.forget(self)
        for conn in self.members:
            if conn.rooms.get(self.id) is self:
                del conn.rooms[self.id]
        self.members.clear()
        # commands that arrived after the decision to close get an answer, not silence
        for cmd in list(self.mailbox.get_nowait_all()):
            if isinstance(cmd, Join):
                cmd.conn.pending_joins -= 1
                self._refuse(cmd.conn, cmd.ack_id, cmd.at_connect,
                             CollabError(ErrorCode.INTERNAL, "room closed; try again"))
            elif isinstance(cmd, Relay | Leave) and cmd.ack_id is not None:
                cmd.conn.reply_error(cmd.ack_id, CollabError(ErrorCode.NOT_JOINED,
                                     f"not in room {self.id!r}"), None)

    # -- commands ------------------------------------------------------------------------

    def _apply(self, cmd: Command) -> None:
        try:
            if isinstance(cmd, Relay):
                self._relay(cmd)
            elif isinstance(cmd, Join):
                self._join(cmd)
            elif isinstance(cmd, Leave):
                self._leave(cmd)
            else:
                self._publish(cmd)
        except Exception:
            log.exception("room %s: command %s failed", self.id, type(cmd).__name__)
            conn = getattr(cmd, "conn", None)
            ack_id = getattr(cmd, "ack_id", None)
            if conn is not None:
                conn.reply_error(ack_id, CollabError(ErrorCode.INTERNAL, "internal error"), None)

    def _refuse(self, conn: Connection, ack_id: int | None, at_connect: bool,
                err: CollabError) -> None:
        if at_connect or ack_id is None:
            conn.emit("room-error", {"room": self.id, "ok": False, "error": err.to_wire()})
        else:
            conn.reply_error(ack_id, err, "join")

    def _join(self, cmd: Join) -> None:
        conn = cmd.conn
        conn.pending_joins -= 1
        if conn.close_reason is not None:
            return
        now = self.registry.wall_ms()
        member = self.members.get(conn)
        if member is None:
            if len(self.members) >= self.registry.config.max_room_members:
                self._refuse(conn, cmd.ack_id, cmd.at_connect, CollabError(
                    ErrorCode.ROOM_FULL,
                    f"room {self.id!r} has {len(self.members)} members, the limit",
                ))
                return
            member = Member(conn, cmd.role, now, now)
            self.members[conn] = member
            conn.rooms[self.id] = self
            self._membership_changed()
        else:
            member.role = cmd.role
            member.last_activity = now
        self.last_activity = now
        reply = {
            "ok": True,
            "room": self.id,
            "role": member.role,
            "seq": self.seq,
            "state": {},
            "presence": self.presence(),
            "chat": [],
            "recovered": False,
        }
        self._acked_version[conn] = self._version
        if cmd.ack_id is not None:
            conn.ack(cmd.ack_id, reply)
        else:
            # connect-time rooms, and joins sent without an ack, get one `joined` event
            conn.emit("joined", reply)

    def _leave(self, cmd: Leave) -> None:
        conn = cmd.conn
        if self.members.pop(conn, None) is not None:
            self._membership_changed()
            if conn.rooms.get(self.id) is self:
                del conn.rooms[self.id]
            if not self.members:
                self._empty_since = trio.current_time()
        if cmd.ack_id is not None:
            conn.ack(cmd.ack_id, {"ok": True, "room": self.id})

    def _relay(self, cmd: Relay) -> None:
        sender = cmd.conn
        member = self.members.get(sender)
        if member is None:
            if cmd.ack_id is not None or sender.close_reason is None:
                sender.reply_error(
                    cmd.ack_id,
                    CollabError(ErrorCode.NOT_JOINED, f"not in room {self.id!r}"),
                    cmd.event,
                )
            return
        now = self.registry.wall_ms()
        member.last_activity = now
        self.last_activity = now
        attr = _PRESENCE_FIELDS.get(cmd.event)
        if attr is not None:
            setattr(member, attr, cmd.payload.get(attr))
        ident = sender.identity
        assert ident is not None
        out = dict(cmd.payload)
        out["socketId"] = sender.sid
        out["userId"] = ident.user_id
        out["userName"] = ident.name
        frames = event_frames(cmd.event, out)
        volatile = cmd.volatile
        for conn in self.members:
            if conn is not sender:
                conn.send_frames(frames, volatile)
        if cmd.ack_id is not None:
            sender.ack(cmd.ack_id, {"ok": True})

    def _publish(self, cmd: Publish) -> None:
        out = {"room": self.id, "event": cmd.event, "data": cmd.data,
               "socketId": None, "userId": None, "userName": None}
        frames = event_frames("broadcast", out)
        for conn in self.members:
            conn.send_frames(frames)

    # -- presence ------------------------------------------------------------------------

    def presence(self) -> dict[str, Any]:
        """The ``presence`` payload: every member, unique users and connection count."""
        users = [m.presence_entry() for m in self.members.values()]
        unique = {u["userId"] for u in users}
        return {
            "room": self.id,
            "users": users,
            "uniqueUsers": len(unique),
            "connections": len(users),
        }

    def _membership_changed(self) -> None:
        self._version += 1
        self._presence_dirty = True

    def _broadcast_presence(self) -> None:
        """Once per batch: to every member whose join ack did not already show it."""
        acked, self._acked_version = self._acked_version, {}
        if not self.members:
            return
        frames = event_frames("presence", self.presence())
        version = self._version
        for conn in self.members:
            if acked.get(conn) != version:
                conn.send_frames(frames)
