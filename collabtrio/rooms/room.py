"""A room: one task that owns the room's state, in a nursery of its own.

Theory of operation: handlers never touch a room's state. They put a command in the
room's :class:`~collabtrio.rooms.mailbox.Mailbox` and go on; the room task takes the
commands in batches and applies them one by one, with no ``await`` between a check and
the update it guards, so ordering is total per room and there are no locks. The room
answers each command itself (ack, error or event) by queueing pre-encoded frames in
the members' outboxes; it never awaits a client's socket. A broadcast is encoded once
and the same frame bytes go to every member.

Two tasks share the room's nursery: the room task (membership, presence, relays) and
the :class:`~collabtrio.rooms.keeper.DocumentKeeper` (the document, seq, history and
chat, persisted before they are broadcast). Each owns its state; the room task checks
membership and roles and hands document commands over.

Lifecycle: the registry creates the room and inserts it before its task starts, so
concurrent joins find the same room. The room first loads its document from storage
(joins wait in the mailbox); if that fails they are refused with
``STORAGE_UNAVAILABLE`` and the room closes, so the next join tries again. With no
members for ``room_idle_s`` (and nothing left to write) the room removes itself from
the registry (synchronously, after checking that its mailbox is
empty) and its nursery exits. Cancelling the room's scope tears it down the same way:
every member forgets the room. However the room ends, the keeper's final flush runs
shielded, with a deadline, so what was written is committed.

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
from ..storage.base import RoomSnapshot, StorageError
from ..transport.connection import Connection, event_frames
from .keeper import ChatCmd, DocCommand, DocumentKeeper, FieldCmd, OpCmd
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


@dataclass(slots=True)
class SetRole:
    """A member's role changed (stored grants changed while connected)."""

    conn: Connection
    role: Role


Command = Join | Leave | Relay | Publish | SetRole | OpCmd | FieldCmd | ChatCmd

_RANK = {"read": 0, "write": 1, "admin": 2}
IDLE_RECHECK_S = 0.1
_EVENT_OF: dict[type, str] = {OpCmd: "op", FieldCmd: "field", ChatCmd: "chat"}

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
        self.keeper: DocumentKeeper | None = None
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
        """The room task: load, serve commands until idle for ``room_idle_s`` or
        cancelled, then flush and tear down."""
        registry = self.registry
        cfg = registry.config
        try:
            with self.cancel_scope:
                try:
                    snapshot = await self._load()
                except StorageError as exc:
                    log.warning("room %s: cannot load: %s", self.id, exc)
                    self._refuse_waiting(CollabError(
                        ErrorCode.STORAGE_UNAVAILABLE,
                        "storage is unavailable; try joining again", retryable=True,
                    ))
                    return
                self.keeper = DocumentKeeper(
                    self.id, self.members, snapshot, queue=registry.commits,
                    config=cfg, wall_clock=registry.wall_clock, reload=self._load,
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.keeper.run)
                    await self._serve()
                    nursery.cancel_scope.cancel()
        except Exception:
            # contained here: a failing room closes, the registry and the server go on
            log.exception("room %s failed; closing it", self.id)
        finally:
            if self.keeper is not None:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + cfg.flush_timeout_s
                    try:
                        await self.keeper.close()
                    except Exception:
                        log.exception("room %s: final flush failed", self.id)
                if scope.cancelled_caught:
                    log.error("room %s: final flush did not finish in %ss",
                              self.id, cfg.flush_timeout_s)
                self.keeper.refuse_pending(CollabError(
                    ErrorCode.STORAGE_UNAVAILABLE,
                    "the room closed before this could be stored; try again", retryable=True,
                ))
            self._teardown()

    async def _load(self) -> RoomSnapshot:
        cfg = self.registry.config
        return await self.registry.store.load_room(
            self.id, history_limit=cfg.history_limit, chat_limit=cfg.chat_history_limit
        )

    async def _serve(self) -> None:
        idle_s = self.registry.config.room_idle_s
        while True:
            deadline = self._empty_since + idle_s if not self.members else float("inf")
            if self.keeper is not None and not self.keeper.idle:
                # idle, but writes are still pending: look again once they had time
                deadline = max(deadline, trio.current_time() + IDLE_RECHECK_S)
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
            if (not self.members and not self.mailbox and trio.current_time() >= deadline
                    and (self.keeper is None or self.keeper.idle)):
                log.debug("room %s idle for %ss: closing", self.id, idle_s)
                # out of the registry before any await: a join from now on opens a
                # fresh room (nothing is left to write, so it loads what is stored)
                self.registry.forget(self)
                self.mailbox.close()
                return

    def _teardown(self) -> None:
        self.closed = True
        self.registry.forget(self)
        for conn in self.members:
            if conn.rooms.get(self.id) is self:
                del conn.rooms[self.id]
        self.members.clear()
        # commands that arrived after the decision to close get an answer, not silence
        self._refuse_waiting(CollabError(ErrorCode.INTERNAL, "room closed; try again"))
        self.mailbox.close()

    def _refuse_waiting(self, err: CollabError) -> None:
        for cmd in list(self.mailbox.get_nowait_all()):
            if isinstance(cmd, Join):
                cmd.conn.pending_joins -= 1
                self._refuse(cmd.conn, cmd.ack_id, cmd.at_connect, err)
            elif isinstance(cmd, OpCmd | FieldCmd):
                cmd.conn.reply_error(cmd.ack_id, err, None, cmd.msg.operation_id)
            elif isinstance(cmd, Relay | Leave | ChatCmd) and cmd.ack_id is not None:
                cmd.conn.reply_error(cmd.ack_id, err, None)

    # -- commands ------------------------------------------------------------------------

    def _apply(self, cmd: Command) -> None:
        try:
            if isinstance(cmd, Relay):
                self._relay(cmd)
            elif isinstance(cmd, OpCmd | FieldCmd | ChatCmd):
                self._document(cmd)
            elif isinstance(cmd, Join):
                self._join(cmd)
            elif isinstance(cmd, Leave):
                self._leave(cmd)
            elif isinstance(cmd, SetRole):
                self._set_role(cmd)
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
        keeper = self.keeper
        assert keeper is not None
        missed = keeper.missed_since(cmd.since) if cmd.since is not None else None
        if missed is not None:
            # the events it missed, in order, as ordinary events before the ack
            for entry in missed:
                conn.send_frames(event_frames(entry.event, entry.payload))
        reply = {
            "ok": True,
            "room": self.id,
            "role": member.role,
            "seq": keeper.seq,
            "state": None if missed is not None else keeper.doc.entities,
            "presence": self.presence(),
            "chat": keeper.chat_tail(),
            "recovered": missed is not None,
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

    def _document(self, cmd: DocCommand) -> None:
        conn = cmd.conn
        member = self.members.get(conn)
        op_id = cmd.msg.operation_id if isinstance(cmd, OpCmd | FieldCmd) else None
        event = _EVENT_OF[type(cmd)]
        if member is None:
            conn.reply_error(cmd.ack_id, CollabError(
                ErrorCode.NOT_JOINED, f"join room {self.id!r} before sending {event}"),
                event, op_id)
            return
        needed = "admin" if isinstance(cmd, OpCmd) and cmd.msg.op == "replace" else "write"
        if _RANK[member.role] < _RANK[needed]:
            conn.reply_error(cmd.ack_id, CollabError(
                ErrorCode.FORBIDDEN,
                f"{event} needs role {needed!r} in room {self.id!r}; you have {member.role!r}",
            ), event, op_id)
            return
        member.last_activity = self.last_activity = self.registry.wall_ms()
        if isinstance(cmd, OpCmd) and cmd.msg.op == "move":
            data = cmd.msg.data
            if not isinstance(data, dict) or "position" not in data:
                conn.reply_error(cmd.ack_id, CollabError(
                    ErrorCode.VALIDATION, "move: data.position is required"), event, op_id)
                return
            self._relay_move(cmd)
            if data.get("commit") is not True:
                # relayed only: answered at once (ack, or operation-confirmed without one)
                conn.confirm(cmd.ack_id, {"ok": True, "operationId": op_id, "seq": None,
                                          "serverTimestamp": self.registry.wall_ms()})
                return
        assert self.keeper is not None
        self.keeper.submit(cmd)

    def _relay_move(self, cmd: OpCmd) -> None:
        """A move reaches the others at once, without a seq (volatile)."""
        msg, sender = cmd.msg, cmd.conn
        ident = sender.identity
        assert ident is not None
        frames = event_frames("op", {
            "room": self.id, "seq": None, "userId": ident.user_id, "userName": ident.name,
            "socketId": sender.sid, "operationId": msg.operation_id, "op": "move",
            "collection": msg.collection, "id": msg.id, "data": msg.data,
            "timestamp": msg.timestamp,
        })
        for conn in self.members:
            if conn is not sender:
                conn.send_frames(frames, True)

    def _set_role(self, cmd: SetRole) -> None:
        member = self.members.get(cmd.conn)
        if member is None or member.role == cmd.role:
            return
        member.role = cmd.role
        cmd.conn.emit("role-changed", {"room": self.id, "role": cmd.role})
        self._membership_changed()

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
