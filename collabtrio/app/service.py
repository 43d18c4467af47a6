"""What back-end code can do with a running server: publish events, change documents,
read stats and room state, disconnect a user.

One implementation, two doors: the embedding API on
:class:`~collabtrio.server.Server` and the HTTP API (:mod:`collabtrio.http.api`) both
call :class:`BackendService`, so a back end in the same process and one across the
network get the same answers, limits and errors.

Theory of operation: commands for a room go through the room's mailbox, in order with
its members' commands, by :meth:`~collabtrio.rooms.registry.RoomRegistry.offer`, the
door that refuses instead of waiting: a room whose mailbox (or document queue) is full
refuses with ``RATE_LIMITED`` (the HTTP API answers 503 with ``Retry-After``), so a
back end can never queue without bound. Each room serves them with
:class:`BackendComponent`, a room component of its own: a ``publish`` is broadcast by
the room task, and a document operation is handed to the room's document keeper as a
:class:`~collabtrio.rooms.commands.ServerOpCmd`, through the same validation,
idempotency (per user id), persistence and broadcast as a client's ``op``, answered
after the commit.

Personal rooms (``user:<sub>``) are an index of that user's connections, not room
tasks: a publish to one is handed to each connection at once. Publishing to a room that
is not open reaches nobody and opens nothing; a document operation opens the room (it
closes again when idle).
"""

from __future__ import annotations

import copy
import heapq
import importlib.metadata
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from ..auth.tokens import Identity
from ..errors import CollabError, ErrorCode
from ..protocol import messages
from ..protocol.ids import check_room_id
from ..protocol.outgoing import Outgoing
from ..rooms.commands import Command, Join, PublishCmd, ServerCall, ServerOpCmd
from ..rooms.keeper import DocumentKeeper
from ..rooms.peer import Peer
from ..rooms.presence import Member
from ..rooms.room import Room
from ..storage.errors import map_storage_errors
from .client import Client
from .context import AppContext
from .handlers import check_storable
from .yws import YWebsocketPeer

__all__ = ["CLOSE_DISCONNECTED", "DISCONNECT_EVENT", "PERSONAL_PREFIX", "BackendComponent",
           "BackendService", "version"]

PERSONAL_PREFIX = "user:"
"""A publish target ``user:<sub>`` reaches every connection of user ``sub``."""
DISCONNECT_EVENT = "disconnect-reason"
"""Sent to a Socket.IO client just before :meth:`BackendService.disconnect_user` closes
it: ``{reason}`` (Socket.IO's own DISCONNECT packet carries no reason)."""
CLOSE_DISCONNECTED = 4403
"""The WebSocket close code of a y-websocket peer whose user was disconnected: in the
4400-4499 range, where the stock provider does not reconnect."""
STORAGE_PING_TIMEOUT_S = 2.0
MAX_SUB_CHARS = 256
MAX_REASON_CHARS = 200
DEFAULT_REASON = "disconnected by the server"


def version() -> str:
    """The installed collabtrio version (``unknown`` when not installed)."""
    try:
        return importlib.metadata.version("collabtrio")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _receives_events(conn: Peer) -> bool:
    # a y-websocket peer takes only y-protocols messages: a broadcast never reaches it
    return not isinstance(conn, YWebsocketPeer)


class BackendComponent:
    """The room component that serves back-end commands (see the module docstring).

    It has no task and no state: the room task calls :meth:`handle`, which broadcasts a
    :class:`PublishCmd` at once and hands a :class:`ServerOpCmd` to the document keeper.
    """

    name = "backend"
    commands: tuple[type[Command], ...] = (PublishCmd, ServerOpCmd)

    def __init__(self, room: Room) -> None:
        self.room = room

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Nothing to load or serve: reports started and returns."""
        task_status.started()

    def handle(self, cmd: Command) -> None:
        """Publish, or pass a document operation to the keeper (room task)."""
        if isinstance(cmd, PublishCmd):
            room = self.room
            room.broadcast(cmd.out)
            cmd.conn.ack(0, sum(1 for conn in room.members if _receives_events(conn)))
            return
        keeper = self.room.component("document")
        if keeper is None:
            cmd.refuse(CollabError(ErrorCode.INTERNAL, "this room has no document"))
            return
        keeper.handle(cmd)

    def join_reply(self, member: Member, join: Join, reply: dict[str, Any]) -> None:
        """Nothing of a join is this component's."""

    def on_leave(self, conn: Peer) -> None:
        """Nothing of a member is this component's."""

    @property
    def idle(self) -> bool:
        """Always: it holds nothing."""
        return True

    @property
    def full(self) -> bool:
        """Never: it queues nothing (the room's mailbox and the keeper's queue bound)."""
        return False

    async def wait_for_space(self, timeout: float) -> bool:
        """Never full."""
        await trio.lowlevel.checkpoint()
        return True

    async def flush(self) -> None:
        """Nothing to write."""

    async def close(self) -> None:
        """Nothing to write."""

    def refuse_pending(self, err: CollabError) -> None:
        """Nothing is pending here."""


def _publish_cmd(caller: ServerCall, out: Outgoing) -> PublishCmd:
    return PublishCmd(caller, 0, out)


def _busy(room: str) -> CollabError:
    return CollabError(ErrorCode.RATE_LIMITED, f"room {room!r} is busy; retry shortly",
                       retryable=True)


def check_target(target: object) -> str:
    """A publish target: a room id, or ``user:<sub>`` for any non-empty ``sub`` of at
    most 256 characters (user ids are not limited to the room-id alphabet)."""
    if isinstance(target, str) and target.startswith(PERSONAL_PREFIX):
        sub = target[len(PERSONAL_PREFIX):]
        if 0 < len(sub) <= MAX_SUB_CHARS:
            return target
    return check_room_id(target)


def _check_event(event: object) -> str:
    if not isinstance(event, str) or not 1 <= len(event) <= 128:
        raise CollabError(ErrorCode.VALIDATION, "event must be a string of 1-128 characters",
                          details=[{"loc": ["event"], "msg": "1-128 characters",
                                    "type": "string_type"}])
    return event


class BackendService:
    """Back-end operations on one running server (see the module docstring).

    ``started_at`` is the trio time the server started serving (for ``uptimeS``).
    """

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.started_at = trio.current_time()
        self.version = version()

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, rooms: Sequence[str], event: str, data: Any = None, *,
                      user_name: str | None = None) -> dict[str, Any]:
        """Send ``broadcast {room, event, data, userId: null, userName, socketId:
        null}`` to every member of each room of ``rooms`` (``user:<sub>``: every
        connection of that user).

        Returns ``{ok: true, delivered, rooms: [{room, open, delivered}]}``:
        ``delivered`` counts the Socket.IO connections handed the event; a room that is
        not open reaches nobody (``open: false``) and is not opened. All or nothing:
        if any open room's mailbox is full, nothing is sent and ``RATE_LIMITED``
        (retryable) is raised. Raises ``INVALID_ROOM``, ``VALIDATION`` (``data`` not
        JSON, no rooms, more than ``api_max_rooms``), ``TOO_LARGE`` (an event past
        ``max_event_bytes``).
        """
        cfg = self.ctx.config
        registry = self.ctx.registry
        _check_event(event)
        if isinstance(rooms, str):
            raise TypeError("rooms must be a list of room ids")
        targets = list(dict.fromkeys(check_target(room) for room in rooms))
        if not targets or len(targets) > cfg.api_max_rooms:
            raise CollabError(ErrorCode.VALIDATION,
                              f"publish to 1 to {cfg.api_max_rooms} rooms (api_max_rooms)",
                              details=[{"loc": ["rooms"], "msg": "wrong number of rooms",
                                        "type": "too_long" if targets else "too_short"}])
        outs: dict[str, Outgoing] = {}
        for target in targets:
            payload = {"room": target, "event": event, "data": data, "userId": None,
                       "userName": user_name, "socketId": None}
            try:
                out = Outgoing.event("broadcast", payload)
            except (TypeError, ValueError) as exc:
                raise CollabError(ErrorCode.VALIDATION, f"data must be plain JSON: {exc}",
                                  details=[{"loc": ["data"], "msg": str(exc),
                                            "type": "json_type"}]) from None
            size = len(out.packet) + sum(len(a) for a in out.attachments)
            if size > cfg.max_event_bytes:
                raise CollabError(ErrorCode.TOO_LARGE,
                                  f"the event is {size} bytes; the limit is "
                                  f"{cfg.max_event_bytes} (max_event_bytes)")
            outs[target] = out
        # admission for every room first, then every put, with no await in between: a
        # publish is refused as a whole or queued in every open room
        for target in targets:
            room = registry.get(target)
            if room is not None and not target.startswith(PERSONAL_PREFIX) \
                    and not registry.has_room_for(room):
                raise _busy(target)
        results: list[dict[str, Any]] = []
        calls: list[tuple[dict[str, Any], ServerCall]] = []
        for target in targets:
            out = outs[target]
            entry: dict[str, Any] = {"room": target, "open": False, "delivered": 0}
            results.append(entry)
            if target.startswith(PERSONAL_PREFIX):
                reached = 0
                for conn in list(registry.users.get(target[len(PERSONAL_PREFIX):], ())):
                    if conn.close_reason is None and _receives_events(conn):
                        conn.send(out)
                        reached += 1
                self.ctx.metrics.delivered(reached)
                entry["open"], entry["delivered"] = reached > 0, reached
                continue
            caller = registry.offer(target, partial(_publish_cmd, out=out), open_room=False)
            if caller is not None:
                calls.append((entry, caller))
        for entry, caller in calls:
            try:
                entry["delivered"] = int(await caller.result())
                entry["open"] = True
            except CollabError:
                pass  # the room closed before it served the publish: nobody was there
        return {"ok": True, "delivered": sum(e["delivered"] for e in results),
                "rooms": results}

    # -- documents -----------------------------------------------------------------------

    async def apply_op(
        self, room: str, *, operation_id: str, op: str, collection: str, id: str,
        data: Any = None, timestamp: float | None = None, user_id: str = "server",
        user_name: str | None = None,
    ) -> dict[str, Any]:
        """Apply a document operation as user ``user_id`` (PROTOCOL section 5; roles are
        not checked: the caller is trusted) and return its result once committed:
        ``{ok: true, operationId, seq, serverTimestamp}`` (and ``epoch`` for a
        ``replace``).

        The same path as a client's ``op``: validated (``INVALID_ROOM``,
        ``VALIDATION`` with details, ``NOT_FOUND``, ``DUPLICATE``, ``TOO_LARGE``),
        persisted before it is broadcast to the members (``userId`` ``user_id``,
        ``socketId`` ``server``), and idempotent: the same ``operationId`` from the
        same ``user_id`` gets the first result and is applied once (also after a
        restart, within the history window). Opens the room if it is not open.
        Raises ``RATE_LIMITED`` (retryable) when the room's mailbox or document queue
        is full, ``STORAGE_UNAVAILABLE`` (retryable: retry with the same
        ``operationId``).
        """
        check_room_id(room)
        msg = messages.parse(messages.OpPayload, {
            "room": room, "operationId": operation_id, "op": op, "collection": collection,
            "id": id, "data": data, "timestamp": timestamp,
        })
        check_storable([msg.operation_id, msg.collection, msg.id, msg.data], "op")
        if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_SUB_CHARS:
            raise CollabError(ErrorCode.VALIDATION, "user_id must be 1-256 characters")
        identity = Identity(user_id=user_id, name=user_name or user_id, email=None,
                            picture=None)
        caller = self.ctx.registry.offer(room, lambda c: ServerOpCmd(c, 0, msg),
                                         component="document", identity=identity)
        assert caller is not None  # offer opens the room
        return dict(await caller.result())

    # -- reading -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts of the running server, read in one synchronous step:
        ``{version, uptimeS, connections: {socketio, websocket, polling, handshaking,
        yWebsocket, acceptedTotal}, rooms: {open, members, openedTotal}, users,
        storage: {backend, transactions, roomCommits}}``."""
        ctx = self.ctx
        registry = ctx.registry
        websocket = polling = handshaking = 0
        for session in ctx.sessions:
            if not session.connected:
                handshaking += 1
            elif session.transport == "websocket":
                websocket += 1
            else:
                polling += 1
        members = yws = 0
        for room in registry.rooms.values():
            members += len(room.members)
            yws += sum(1 for conn in room.members if isinstance(conn, YWebsocketPeer))
        return {
            "version": self.version,
            "uptimeS": round(trio.current_time() - self.started_at, 3),
            "connections": {"socketio": websocket + polling, "websocket": websocket,
                            "polling": polling, "handshaking": handshaking,
                            "yWebsocket": yws, "acceptedTotal": ctx.connections_total},
            "rooms": {"open": len(registry.rooms), "members": members,
                      "openedTotal": registry.opened_total},
            "users": len(registry.users),
            "storage": {"backend": ctx.config.db.partition(":")[0],
                        "transactions": ctx.commits.transactions,
                        "roomCommits": ctx.commits.requests},
        }

    async def storage_state(self) -> dict[str, Any]:
        """``{reachable: true}``, or ``{reachable: false, error}`` when the store does
        not answer a ping within 2 seconds."""
        try:
            with trio.fail_after(STORAGE_PING_TIMEOUT_S):
                await self.ctx.store.ping()
        except trio.TooSlowError:
            return {"reachable": False, "error": "storage did not answer in time"}
        except Exception as exc:
            return {"reachable": False, "error": str(exc)}
        return {"reachable": True}

    def list_rooms(self, *, limit: int | None = None, cursor: str | None = None,
                   prefix: str | None = None) -> dict[str, Any]:
        """Open rooms in id order, ``limit`` at a time (at most, and by default,
        ``api_max_rooms``): ``{rooms: [{room, connections, uniqueUsers, seq,
        lastActivity}], nextCursor}``; pass ``nextCursor`` back as ``cursor`` for the
        next page (``null``: the last page). ``prefix`` keeps the ids starting with it."""
        most = self.ctx.config.api_max_rooms
        if limit is None:
            limit = most
        if not 1 <= limit <= most:
            raise CollabError(ErrorCode.VALIDATION, f"limit must be 1 to {most} (api_max_rooms)",
                              details=[{"loc": ["limit"], "msg": f"1 to {most}",
                                        "type": "less_than_equal"}])
        registry = self.ctx.registry
        after = cursor or ""
        start = prefix or ""
        ids = heapq.nsmallest(limit + 1, (rid for rid in registry.rooms
                                          if rid > after and rid.startswith(start)))
        page, more = ids[:limit], len(ids) > limit
        rooms = []
        for rid in page:
            room = registry.rooms[rid]
            users = {conn.identity.user_id for conn in room.members}
            keeper = room.component("document")
            rooms.append({"room": rid, "connections": len(room.members),
                          "uniqueUsers": len(users),
                          "seq": keeper.seq if isinstance(keeper, DocumentKeeper) else None,
                          "lastActivity": room.last_activity})
        return {"rooms": rooms, "nextCursor": page[-1] if more else None}

    async def room_state(self, room: str) -> dict[str, Any]:
        """A room's document and members: ``{room, open, seq, epoch, state, members,
        uniqueUsers, connections}``.

        An open room answers from memory (its committed state, and its members as
        ``presence`` lists them); a room that is not open is read from storage without
        opening it (no members; a room never used reads as empty, at seq 0). Raises
        ``INVALID_ROOM``, ``STORAGE_UNAVAILABLE``.
        """
        check_room_id(room)
        open_room = self.ctx.registry.get(room)
        keeper = open_room.component("document") if open_room is not None else None
        if open_room is not None and isinstance(keeper, DocumentKeeper):
            presence = open_room.presence()
            # a copy: the keeper changes its document in place after later commits
            return {"room": room, "open": True, "seq": keeper.seq, "epoch": keeper.epoch,
                    "state": copy.deepcopy(keeper.doc.entities),
                    "members": copy.deepcopy(presence["users"]),
                    "uniqueUsers": presence["uniqueUsers"],
                    "connections": presence["connections"]}
        with map_storage_errors():
            snapshot = await self.ctx.store.load_room(room, history_limit=0, chat_limit=0)
        return {"room": room, "open": False, "seq": snapshot.seq, "epoch": snapshot.epoch,
                "state": snapshot.entities, "members": [], "uniqueUsers": 0,
                "connections": 0}

    # -- connections ---------------------------------------------------------------------

    def disconnect_user(self, sub: str, reason: str = DEFAULT_REASON) -> dict[str, Any]:
        """Close every connection of user ``sub``: each Socket.IO client first gets
        ``disconnect-reason {reason}``, then the Socket.IO DISCONNECT (a stock client
        reports ``io server disconnect`` and does not reconnect by itself); each
        y-websocket peer is closed with 4403 and ``reason``. A connection still in its
        handshake is not reached. Returns ``{ok: true, userId, disconnected, socketio,
        yWebsocket}``.
        """
        if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUB_CHARS:
            raise CollabError(ErrorCode.VALIDATION, "the user id must be 1-256 characters")
        if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_CHARS:
            raise CollabError(ErrorCode.VALIDATION,
                              f"reason must be 1-{MAX_REASON_CHARS} characters",
                              details=[{"loc": ["reason"], "msg": "1-200 characters",
                                        "type": "string_type"}])
        registry = self.ctx.registry
        socketio = 0
        for conn in list(registry.users.get(sub, ())):
            if isinstance(conn, Client) and conn.close_reason is None:
                conn.emit(DISCONNECT_EVENT, {"reason": reason})
                conn.close(reason)
                socketio += 1
        peers = {conn for room in registry.rooms.values() for conn in room.members
                 if isinstance(conn, YWebsocketPeer) and conn.identity.user_id == sub
                 and conn.close_reason is None}
        for peer in peers:
            peer.close(CLOSE_DISCONNECTED, reason)
        return {"ok": True, "userId": sub, "disconnected": socketio + len(peers),
                "socketio": socketio, "yWebsocket": len(peers)}
