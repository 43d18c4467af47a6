"""The Socket.IO connect logic, and the namespace that serves a connected client.

:class:`SocketIOApp` is what the transport asks to accept a ``CONNECT``
(:class:`~collabtrio.transport.session.Application`): it finds the token (CONNECT
``auth.token``, then ``Authorization: Bearer``, then ``?token=``), verifies it, loads
the user's stored grants, puts the client in its personal room and schedules its token
expiry. The :class:`SocketNamespace` it returns serves that client: connect-time rooms,
event dispatch through :data:`~collabtrio.app.handlers.HANDLERS`, answers to refusals,
and the clean-up when the client goes.

Error handling: a handler's :class:`CollabError` is that event's answer; any other
exception is logged and answered ``INTERNAL`` (retryable); neither ends the client.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from ..config import Config
from ..errors import CollabError, ErrorCode
from ..protocol.ids import check_room_id
from ..rooms.commands import Leave
from ..rooms.mailbox import MailboxClosed
from ..storage.base import StorageError
from ..timers import Timers
from ..transport.frontdoor import first
from ..transport.session import SocketIOSession
from .client import Client
from .context import AppContext
from .handlers import HANDLERS, request_join

log = logging.getLogger(__name__)

__all__ = ["SocketIOApp", "SocketNamespace"]


def _token_of(session: SocketIOSession, auth: Any) -> Any:
    token: Any = auth.get("token") if isinstance(auth, dict) else None
    if not token:
        header = session.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
    if not token:
        token = first(session.query, "token")
    return token


class SocketIOApp:
    """Accepts Socket.IO connections for one server (see the module docstring)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.config: Config = ctx.config
        self.timers: Timers = ctx.timers
        self.sessions: set[SocketIOSession] = ctx.sessions
        self.metrics = ctx.metrics

    async def connect(self, session: SocketIOSession, auth: Any) -> SocketNamespace:
        """Authenticate a ``CONNECT``; raises :class:`CollabError` to refuse it."""
        ctx = self.ctx
        token = _token_of(session, auth)
        if token is not None and not isinstance(token, str):
            raise CollabError(ErrorCode.INVALID_TOKEN, "token must be a string")
        auth_rooms: list[Any] = []
        if isinstance(auth, dict):
            rooms = auth.get("rooms")
            if isinstance(rooms, list):
                auth_rooms = rooms
            elif rooms is not None:
                auth_rooms = [rooms]
        # checked before the token (no work for a handshake that cannot be served) and
        # never looped over past the limit
        asked = len(auth_rooms) + len(session.query.get("room", []))
        limit = ctx.config.max_rooms_per_connection
        if asked > limit:
            raise CollabError(ErrorCode.VALIDATION,
                              f"auth.rooms and ?room= ask for {asked} rooms; a connection "
                              f"may be in at most {limit} (max_rooms_per_connection)")
        client = Client(ctx, session, ctx.auth.authenticate(token or None))
        client.auth_rooms = auth_rooms
        try:
            if ctx.grants_stored:  # else none is stored (the grants watcher knows)
                client.grants = await ctx.store.grants_for(client.identity.user_id)
        except StorageError as exc:
            # roles then come from the token and the default until the next poll
            log.warning("cannot load grants for %s: %s", client.identity.user_id, exc,
                        extra={"sid": session.sid, "user": client.identity.user_id})
        ctx.registry.add_user_connection(client)
        ctx.connections_total += 1
        client.schedule_token_expiry()
        return SocketNamespace(ctx, client)


class SocketNamespace:
    """The namespace ``/`` of one connected client (see the module docstring)."""

    __slots__ = ("client", "ctx")

    def __init__(self, ctx: AppContext, client: Client) -> None:
        self.ctx = ctx
        self.client = client

    async def on_connected(self) -> None:
        """Join the rooms asked for in the handshake (``auth.rooms``, ``?room=``)."""
        client = self.client
        wanted: list[Any] = [*client.auth_rooms, *client.session.query.get("room", [])]
        for room in wanted:
            try:
                room_id = check_room_id(room)
                await request_join(self.ctx, client, room_id, None, at_connect=True)
            except CollabError as err:
                client.emit("room-error", {"room": room if isinstance(room, str) else None,
                                           "ok": False, "error": err.to_wire()})

    async def on_event(self, name: str, payload: Any, ack_id: int | None) -> None:
        """Dispatch one event to its handler; answer its refusal or failure."""
        client = self.client
        self.ctx.metrics.event(name)
        try:
            handler = HANDLERS.get(name)
            if handler is None:
                raise CollabError(ErrorCode.UNKNOWN_EVENT, f"unknown event {name!r}")
            await handler(self.ctx, client, payload, ack_id)
        except CollabError as err:
            client.reply_error(ack_id, err, name)
        except Exception:
            log.exception("event %r from %s failed", name, client.sid,
                          extra={"sid": client.sid, "user": client.identity.user_id})
            client.reply_error(
                ack_id, CollabError(ErrorCode.INTERNAL, "internal error; try again"), name
            )

    def on_refused(self, ack_id: int | None, err: CollabError, event: str | None) -> None:
        """The transport refused an event (rate, size, framing): answer it."""
        self.ctx.metrics.event(event)
        self.client.reply_error(ack_id, err, event)

    def on_close(self) -> None:
        """Remove the client from every room at once, and from its personal room."""
        client = self.client
        client.cancel_timers()
        for room in list(client.rooms.values()):
            with contextlib.suppress(MailboxClosed):  # a closed room has no members
                room.mailbox.put_nowait(Leave(client, None))
        self.ctx.registry.remove_user_connection(client)
