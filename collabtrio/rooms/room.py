"""A room: one task that owns the room's state, in a nursery of its own.

Theory of operation: handlers never touch a room's state. They put a command in the
room's :class:`~collabtrio.rooms.mailbox.Mailbox` and go on; the room task takes the
commands in batches and applies them one by one, with no ``await`` between a check and
the update it guards, so ordering is total per room and there are no locks. One
shortcut keeps that order: a relay that finds the room's task waiting with nothing
queued is applied at once in the sender's task (:meth:`Room.relay_now`), as the room
would apply it next, without the scheduler pass in between. The room
answers each command itself (ack, error or event) by queueing pre-encoded frames in
the members (:class:`~collabtrio.rooms.peer.Peer`); it never awaits a client. A
broadcast is one :class:`~collabtrio.protocol.outgoing.Outgoing`, encoded once per
transport, handed to every member.

The room task shares the room's nursery with the room's *components*, started from
the registry's list with ``nursery.start`` (so each has loaded what it needs before
the first command is served): today the
:class:`~collabtrio.rooms.keeper.DocumentKeeper` (the document, seq, history and chat,
persisted before they are broadcast). Each owns its state. Commands are dispatched by
type through one table: membership commands are the room task's own; a component's
commands reach it after the room checked membership and the command's required role
(a :class:`~collabtrio.rooms.commands.ServerCommand`, from back-end code in this
process, is handed over unchecked).

Lifecycle: the registry creates the room and inserts it before its task starts, so
concurrent joins find the same room. The room first starts its components, which
load from storage (joins wait in the mailbox); if that fails they are refused with
``STORAGE_UNAVAILABLE`` and the room closes, so the next join tries again. With no
members for ``room_idle_s`` (and nothing left to write) the room removes itself from
the registry (synchronously, after checking that its mailbox is
empty) and its nursery exits. Cancelling the room's scope tears it down the same way:
every member forgets the room. A room that fails (a bug: client input cannot make it
fail) tells each member with ``room-error`` (``INTERNAL``, retryable) as it drops it,
so clients can join again. However the room ends, every component's final flush
runs shielded, with a deadline, so what was written is committed.

Invariants: ``conn.rooms[room.id] is room`` exactly when ``conn`` is in ``members``;
presence is broadcast after a batch in which membership changed, at once after a
quiet spell and then at most once per ``presence_interval_ms`` (times members / 10
past 10 members) while it keeps changing, and every join's ack lists the members as
they are at that join.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from ..config import Config
from ..errors import CollabError, ErrorCode
from ..logs import bind
from ..observability.sink import Metrics
from ..protocol.ids import ROLE_RANK
from ..protocol.outgoing import Outgoing
from ..storage.base import StorageError, Store
from ..storage.errors import storage_unavailable
from ..storage.writer import CommitQueue
from .commands import Command, Join, Leave, Relay, ServerCommand, SetRole
from .mailbox import Mailbox
from .peer import Peer
from .presence import Member, presence_json, presence_payload

log = logging.getLogger(__name__)

PRESENCE_SCALE_MEMBERS = 10
"""Room size up to which presence goes out at most once per ``presence_interval_ms``;
past it the gap grows in proportion (100 members: 10 times the interval)."""

IDLE_RECHECK_S = 0.1

_ROOM_FAILED = CollabError(
    ErrorCode.INTERNAL, "the room closed after an internal error; you are no longer a member: "
    "join again", retryable=True)

class RoomComponent(Protocol):
    """A part of a room with a task and state of its own (the document keeper, Yjs).

    The room task calls the synchronous methods; :meth:`run` is started with
    ``nursery.start`` in the room's nursery and cancelled when the room ends, after
    which the room calls :meth:`close` shielded, with a deadline.
    """

    name: str
    """How the room finds the component (``room.component(name)``)."""
    commands: tuple[type[Command], ...]
    """The command types the room hands to :meth:`handle`."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Load (raising :class:`StorageError` if impossible), report started, serve."""

    def handle(self, cmd: Command) -> None:
        """Take a command from a member allowed to send it (room task)."""

    def join_reply(self, member: Member, join: Join, reply: dict[str, Any]) -> None:
        """Add this component's part of a join ack (and send what the joiner missed)."""

    def on_leave(self, conn: Peer) -> None:
        """A member left (or was dropped)."""

    @property
    def idle(self) -> bool:
        """Nothing queued or pending: the room may close."""

    @property
    def full(self) -> bool:
        """Its queue is at its bound: senders should wait (see :meth:`wait_for_space`)."""

    async def wait_for_space(self, timeout: float) -> bool:
        """Wait up to ``timeout`` while :attr:`full`; False if it still is."""

    async def flush(self) -> None:
        """Write what is pending now."""

    async def close(self) -> None:
        """The final flush (called shielded, with a deadline)."""

    def refuse_pending(self, err: CollabError) -> None:
        """Answer everything still queued with ``err``."""


class RoomHost(Protocol):
    """What a room needs from the registry that opened it."""

    config: Config
    store: Store
    commits: CommitQueue
    wall_clock: Callable[[], float]
    metrics: Metrics

    def wall_ms(self) -> int:
        """Milliseconds since the epoch, from the server's wall clock."""

    def forget(self, room: Room) -> None:
        """The room is closing: later joins must open a fresh one."""


ComponentFactory = Callable[["Room"], RoomComponent]
"""Builds one component for a room that is opening."""


class Room:
    """State and task of one room (see the module docstring)."""

    def __init__(self, room_id: str, registry: RoomHost,
                 components: Sequence[ComponentFactory] = ()) -> None:
        self.id = room_id
        self.registry = registry
        cfg = registry.config
        self.config = cfg
        self.metrics = registry.metrics
        self.mailbox: Mailbox[Command] = Mailbox(cfg.room_inbox_size)
        self.members: dict[Peer, Member] = {}
        self.components: dict[str, RoomComponent] = {}
        self._factories = components
        self.last_activity = registry.wall_ms()
        self.closed = False
        self._failed = False
        self.cancel_scope = trio.CancelScope()
        self._presence_dirty = False
        self._presence_at = float("-inf")  # when the last presence list went out
        # membership version, and the version each joiner of this batch saw in its ack
        self._version = 0
        self._acked_version: dict[Peer, int] = {}
        self._empty_since = trio.current_time()
        self._dispatch: dict[type[Command], Callable[[Any], None]] = {
            Join: self._join, Leave: self._leave, Relay: self._relay, SetRole: self._set_role,
        }

    def component(self, name: str) -> RoomComponent | None:
        """The running component called ``name``, if the room has it."""
        return self.components.get(name)

    @property
    def idle(self) -> bool:
        """No component has anything queued or pending."""
        return all(c.idle for c in self.components.values())

    async def flush(self) -> None:
        """Write what every component has pending now."""
        for component in list(self.components.values()):
            if not component.idle:
                await component.flush()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """The room task: start the components, serve commands until idle for
        ``room_idle_s`` or cancelled, then flush and tear down."""
        bind(room=self.id)  # every line this task and its components log names the room
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    try:
                        for factory in self._factories:
                            component = factory(self)
                            await nursery.start(component.run)
                            self._add_component(component)
                    except StorageError as exc:
                        log.warning("room %s: cannot load: %s", self.id, exc)
                        self.metrics.storage_error("unavailable")
                        self._refuse_waiting(
                            storage_unavailable("storage is unavailable; try joining again"))
                    else:
                        await self._serve()
                    nursery.cancel_scope.cancel()
        except Exception:
            # contained here: a failing room closes, the registry and the server go on
            log.exception("room %s failed; closing it", self.id)
            self._failed = True
        finally:
            await self._close_components()
            self._teardown()

    def _add_component(self, component: RoomComponent) -> None:
        self.components[component.name] = component
        handle = self._for_component(component)
        for ctype in component.commands:
            self._dispatch[ctype] = handle

    async def _close_components(self) -> None:
        timeout = self.config.flush_timeout_s
        for component in self.components.values():
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + timeout
                try:
                    await component.close()
                except Exception:
                    log.exception("room %s: final flush of %s failed", self.id, component.name)
            if scope.cancelled_caught:
                log.error("room %s: final flush of %s did not finish in %ss",
                          self.id, component.name, timeout)
            component.refuse_pending(
                storage_unavailable("the room closed before this could be stored; try again"))

    async def _serve(self) -> None:
        idle_s = self.config.room_idle_s
        presence_gap = self.config.presence_interval_ms / 1000
        while True:
            deadline = self._empty_since + idle_s if not self.members else float("inf")
            if not self.idle:
                # idle, but writes are still pending: look again once they had time
                deadline = max(deadline, trio.current_time() + IDLE_RECHECK_S)
            if self._presence_dirty:
                deadline = min(deadline, self._presence_due(presence_gap))
            batch = await self.mailbox.get_batch(deadline)
            served = bool(batch)
            if served:
                for cmd in batch:
                    self._apply(cmd)
                # drop the commands now: an idle room must not keep the peers of its
                # last batch (departed members) alive until it wakes again
                del batch, cmd
                if not self._presence_dirty:
                    self._acked_version.clear()
            if self._presence_dirty:
                # at once after a quiet spell, then at most once per gap while it keeps
                # changing: N joins in a burst cost everyone a few lists, not N
                now = trio.current_time()
                if now >= self._presence_due(presence_gap):
                    self._presence_dirty = False
                    self._presence_at = now
                    self._broadcast_presence()
                continue
            if served:
                continue
            if (not self.members and not self.mailbox and trio.current_time() >= deadline
                    and self.idle):
                log.debug("room %s idle for %ss: closing", self.id, idle_s)
                # out of the registry before any await: a join from now on opens a
                # fresh room (nothing is left to write, so it loads what is stored)
                self.registry.forget(self)
                self.mailbox.close()
                return

    def _presence_due(self, gap: float) -> float:
        """When the next presence list may go out. A list to N members is N entries
        each, so past 10 members the gap grows with N, counted as the room is now (a
        room that grew since its last list waits as long as its size asks): what
        presence costs a room per second grows as N, not N^2."""
        return self._presence_at + gap * max(1.0, len(self.members) / PRESENCE_SCALE_MEMBERS)

    def _teardown(self) -> None:
        self.closed = True
        self.registry.forget(self)
        for conn in self.members:
            if conn.rooms.get(self.id) is self:
                del conn.rooms[self.id]
                if self._failed:
                    # a clean leave the client hears about, so it can join again
                    conn.emit("room-error", {"room": self.id, "ok": False,
                                             "error": _ROOM_FAILED.to_wire()})
        self.members.clear()
        # commands that arrived after the decision to close get an answer, not silence
        self._refuse_waiting(CollabError(ErrorCode.INTERNAL, "room closed; try again"))
        self.mailbox.close()

    def _refuse_waiting(self, err: CollabError) -> None:
        for cmd in self.mailbox.get_nowait_all():
            if isinstance(cmd, Join):
                cmd.conn.pending_joins -= 1
            cmd.refuse(err)

    # -- commands ------------------------------------------------------------------------

    def _apply(self, cmd: Command) -> None:
        try:
            handler = self._dispatch.get(type(cmd))
            if handler is None:
                raise TypeError(f"no handler for {type(cmd).__name__} in this room")
            handler(cmd)
        except Exception:
            log.exception("room %s: command %s failed", self.id, type(cmd).__name__)
            cmd.refuse(CollabError(ErrorCode.INTERNAL, "internal error"))

    def _for_component(self, component: RoomComponent) -> Callable[[Command], None]:
        def handle(cmd: Command) -> None:
            if isinstance(cmd, ServerCommand):
                component.handle(cmd)
                return
            conn = cmd.conn
            member = self.members.get(conn)
            if member is None:
                cmd.refuse(CollabError(
                    ErrorCode.NOT_JOINED, f"join room {self.id!r} before sending {cmd.event}"))
                return
            needed = cmd.required_role()
            if ROLE_RANK[member.role] < ROLE_RANK[needed]:
                cmd.refuse(CollabError(
                    ErrorCode.FORBIDDEN,
                    f"{cmd.event} needs role {needed!r} in room {self.id!r}; "
                    f"you have {member.role!r}",
                ))
                return
            member.last_activity = self.last_activity = self.registry.wall_ms()
            component.handle(cmd)

        return handle

    def _join(self, cmd: Join) -> None:
        conn = cmd.conn
        conn.pending_joins -= 1
        if conn.close_reason is not None:
            return
        now = self.registry.wall_ms()
        member = self.members.get(conn)
        if member is None:
            if len(self.members) >= self.config.max_room_members:
                cmd.refuse(CollabError(
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
        reply: dict[str, Any] = {"ok": True, "room": self.id, "role": member.role}
        for component in self.components.values():
            component.join_reply(member, cmd, reply)
        reply["presence"] = presence_json(self.id, self.members.values())
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
            for component in self.components.values():
                component.on_leave(conn)
        if cmd.ack_id is not None:
            conn.ack(cmd.ack_id, {"ok": True, "room": self.id})

    def relay_now(self, cmd: Relay) -> bool:
        """Apply a relay in the caller's task if the room's task is waiting for
        commands with none queued; False: the caller queues it as usual.

        The same as the room's task applying it next (every command put before has
        been applied, and applying never awaits, so nothing interleaves), minus a pass
        of the scheduler before the broadcast starts: at a steady rate a relay reaches
        an idle room alone, and that pass was half the time from the publisher's frame
        to the members' writes.
        """
        if not self.mailbox.reader_waiting:
            return False
        self._apply(cmd)
        return True

    def _relay(self, cmd: Relay) -> None:
        sender = cmd.conn
        member = self.members.get(sender)
        if member is None:
            if cmd.ack_id is not None or sender.close_reason is None:
                cmd.refuse(CollabError(ErrorCode.NOT_JOINED, f"not in room {self.id!r}"))
            return
        now = self.registry.wall_ms()
        member.last_activity = now
        self.last_activity = now
        member.update_presence(cmd.name, cmd.payload)
        ident = sender.identity
        out = dict(cmd.payload)
        out["socketId"] = sender.sid
        out["userId"] = ident.user_id
        out["userName"] = ident.name
        self.broadcast(Outgoing.event(cmd.name, out), exclude=sender, volatile=cmd.volatile)
        if cmd.ack_id is not None:
            sender.ack(cmd.ack_id, {"ok": True})

    def _set_role(self, cmd: SetRole) -> None:
        member = self.members.get(cmd.conn)
        if member is None or member.role == cmd.role:
            return
        member.role = cmd.role
        cmd.conn.emit("role-changed", {"room": self.id, "role": cmd.role})
        self._membership_changed()

    def broadcast(self, out: Outgoing, *, exclude: Peer | None = None,
                  volatile: bool = False) -> None:
        """Hand ``out`` to every member but ``exclude`` (room task and components)."""
        members = self.members
        for conn in members:
            if conn is not exclude:
                conn.send(out, volatile)
        # counted once per broadcast, not per member
        self.metrics.delivered(len(members) - (exclude in members))

    # -- presence ------------------------------------------------------------------------

    def presence(self) -> dict[str, Any]:
        """The ``presence`` payload: every member, unique users and connection count."""
        return presence_payload(self.id, self.members.values())

    def _membership_changed(self) -> None:
        self._version += 1
        self._presence_dirty = True

    def _broadcast_presence(self) -> None:
        """Once per batch: to every member whose join ack did not already show it."""
        acked, self._acked_version = self._acked_version, {}
        if not self.members:
            return
        out = Outgoing.event("presence", presence_json(self.id, self.members.values()))
        version = self._version
        sent = 0
        for conn in self.members:
            if acked.get(conn) != version:
                conn.send(out)
                sent += 1
        self.metrics.delivered(sent)
