"""Client event handlers: validate, check membership and limits, hand over to the room.

A handler runs in the sending client's session task. It validates the payload (pydantic,
``VALIDATION`` / ``INVALID_ROOM``), checks what the connection itself knows (joined
rooms, rooms-per-connection limit, personal rooms) and puts a command in the room's
mailbox. The room answers; handlers only answer refusals (raising
:class:`~collabtrio.errors.CollabError`, which :mod:`.connect` turns into the ack or
``operation-error``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from ..auth.roles import check_join_allowed, resolve_role
from ..errors import CollabError, ErrorCode
from ..protocol import jsonsafe, messages
from ..rooms.commands import (
    ChatCmd,
    Command,
    FieldCmd,
    Join,
    Leave,
    OpCmd,
    Relay,
    YjsAwarenessCmd,
    YjsSyncCmd,
    YjsUpdateCmd,
)
from ..rooms.mailbox import MailboxClosed
from ..rooms.planning import chat_wire
from ..rooms.room import Room
from ..storage.base import ChatMessage
from ..storage.errors import map_storage_errors
from .client import Client
from .context import AppContext
from .grants import reassign_roles

Handler = Callable[[AppContext, Client, Any, "int | None"], Awaitable[None]]
"""A client event handler: ``(context, client, payload, ack id)``."""

# events relayed to the other members as they are (plus the sender's identity)
VOLATILE = frozenset({"cursor", "selection", "typing"})
# the relayed events whose value stays in the member's presence
PRESENCE_KEPT = frozenset({"cursor", "selection"})



# a JSON-escaped NUL: "\u0000" preceded by an even number of backslashes (an odd
# number means the backslash itself is escaped, i.e. the text held "\u0000" literally)
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


MAX_DEPTH = 64


def _too_deep(value: Any, limit: int) -> bool:
    """True if ``value`` nests objects/arrays more than ``limit`` levels (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_storable(value: Any, what: str) -> None:
    """Refuse what no backend can store: bytes, NaN/Infinity, lone surrogates, NUL
    characters (PostgreSQL text and JSONB refuse them), and nesting deeper than
    :data:`MAX_DEPTH` levels.

    Checked here, per operation, so one client's bad value is that client's
    ``VALIDATION`` error and never fails a transaction shared with other rooms.
    """
    if _too_deep(value, MAX_DEPTH):
        raise CollabError(ErrorCode.VALIDATION,
                          f"{what} nests deeper than {MAX_DEPTH} levels")
    try:
        text = jsonsafe.dumps(value)
    except (TypeError, ValueError) as exc:
        raise CollabError(ErrorCode.VALIDATION, f"{what} must be plain JSON: {exc}") from None
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise CollabError(ErrorCode.VALIDATION, f"{what} must not contain NUL characters")


def _presence_size(value: Any) -> int:
    """Bytes of ``value`` as JSON, binary attachments counted by their length."""
    binary = 0

    def attachment(obj: Any) -> None:
        nonlocal binary
        if isinstance(obj, bytes | bytearray | memoryview):
            binary += len(obj)
            return None
        raise TypeError(f"{type(obj).__name__} is not JSON")

    return len(jsonsafe.dumps(value, attachment).encode("utf-8")) + binary


async def _deliver(room: Room, cmd: Command) -> None:
    """Queue ``cmd`` for ``room`` (waiting while its inbox is full)."""
    try:
        await room.mailbox.put(cmd)
    except MailboxClosed:
        raise CollabError(ErrorCode.INTERNAL, f"room {room.id!r} closed; try again",
                          retryable=True) from None


DOCUMENT_QUEUE_WAIT_S = 1.0


async def _document_space(room: Room) -> None:
    await _component_space(room, "document")


def _joined_room(conn: Client, room_id: str, event: str) -> Room:
    room = conn.rooms.get(room_id)
    if room is None:
        raise CollabError(ErrorCode.NOT_JOINED, f"join room {room_id!r} before sending {event}")
    return room


async def join(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None) -> None:
    """``join {room, since?, epoch?}``."""
    msg = messages.parse(messages.JoinPayload, payload)
    await request_join(ctx, conn, msg.room, ack_id, since=msg.since, epoch=msg.epoch)


async def request_join(
    ctx: AppContext,
    conn: Client,
    room_id: str,
    ack_id: int | None,
    *,
    since: int | None = None,
    epoch: str | None = None,
    at_connect: bool = False,
) -> None:
    """Check a join and queue it in the room (shared by ``join`` and connect-time rooms)."""
    identity = conn.identity
    check_join_allowed(identity, room_id)
    limit = ctx.config.max_rooms_per_connection
    if room_id not in conn.rooms and len(conn.rooms) + conn.pending_joins >= limit:
        raise CollabError(
            ErrorCode.FORBIDDEN, f"a connection may be in at most {limit} rooms; leave one first"
        )
    role = resolve_role(identity, room_id, grants=conn.grants, default=ctx.config.default_role)
    room = ctx.registry.get_or_open(room_id)
    conn.pending_joins += 1
    try:
        await _deliver(room, Join(conn, ack_id, role, room_id, since=since,
                                  at_connect=at_connect, epoch=epoch))
    except CollabError:
        conn.pending_joins -= 1
        raise


async def leave(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None) -> None:
    """``leave {room}``."""
    msg = messages.parse(messages.LeavePayload, payload)
    room = _joined_room(conn, msg.room, "leave")
    await _deliver(room, Leave(conn, ack_id))


def _relay_handler(event: str) -> Handler:
    volatile = event in VOLATILE

    model = messages.EVENT_MODELS[event]

    # cursor and selection are kept in presence and repeated to every joiner: bounded
    kept = event in PRESENCE_KEPT

    async def relay(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None) -> None:
        msg = messages.parse(model, payload)
        assert isinstance(msg, messages.RoomPayload)
        if kept:
            limit = ctx.config.max_presence_bytes
            value = payload.get(event)
            size = 4 if value is None else _presence_size(value)
            if size > limit:
                raise CollabError(ErrorCode.TOO_LARGE,
                                  f"{event} is {size} bytes as JSON; the limit is {limit} "
                                  "(max_presence_bytes)")
        room = _joined_room(conn, msg.room, event)
        # relay what the client sent (validated), so its own extra fields reach the others
        cmd = Relay(conn, ack_id, event, dict(payload), volatile)
        if not room.relay_now(cmd):
            await _deliver(room, cmd)

    relay.__name__ = relay.__qualname__ = f"relay_{event}"
    relay.__doc__ = f"``{event}``: relayed to the other members of the room."
    return relay


async def op(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None) -> None:
    """``op``: a document operation, persisted then broadcast (the room checks roles)."""
    msg = messages.parse(messages.OpPayload, payload)
    room = _joined_room(conn, msg.room, "op")
    check_storable([msg.operation_id, msg.collection, msg.id, msg.data], "op")
    await _document_space(room)
    await _deliver(room, OpCmd(conn, ack_id, msg))


async def field(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None) -> None:
    """``field``: a debounced write of one value inside an entity."""
    msg = messages.parse(messages.FieldPayload, payload)
    room = _joined_room(conn, msg.room, "field")
    check_storable([msg.operation_id, msg.collection, msg.id, msg.path, msg.value], "field")
    await _document_space(room)
    await _deliver(room, FieldCmd(conn, ack_id, msg))


async def chat(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None) -> None:
    """``chat``: persisted, then sent to every member, the sender included."""
    msg = messages.parse(messages.ChatPayload, payload)
    room = _joined_room(conn, msg.room, "chat")
    check_storable([msg.text, msg.client_id], "chat")
    await _document_space(room)
    await _deliver(room, ChatCmd(conn, ack_id, msg))


async def _component_space(room: Room, name: str) -> None:
    # the room hands a component's commands straight to it, so the bound that protects
    # memory is the component's queue: wait a little, then a retryable refusal
    component = room.component(name)
    if component is not None and component.full and not await component.wait_for_space(
        DOCUMENT_QUEUE_WAIT_S
    ):
        raise CollabError(ErrorCode.RATE_LIMITED,
                          f"room {room.id!r} is busy storing earlier changes; retry shortly",
                          retryable=True)


async def yjs_update(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None) -> None:
    """``yjs-update {room, update, epoch?}``: applied, relayed, acked once stored."""
    msg = messages.parse(messages.YjsUpdatePayload, payload)
    room = _joined_room(conn, msg.room, "yjs-update")
    await _component_space(room, "yjs")
    await _deliver(room, YjsUpdateCmd(conn, ack_id, msg.update, msg.epoch))


async def yjs_sync(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None) -> None:
    """``yjs-sync {room, stateVector, epoch?}``: acked with what the client is missing
    and the Yjs epoch."""
    msg = messages.parse(messages.YjsSyncPayload, payload)
    room = _joined_room(conn, msg.room, "yjs-sync")
    await _component_space(room, "yjs")
    await _deliver(room, YjsSyncCmd(conn, ack_id, msg.state_vector, epoch=msg.epoch))


async def yjs_awareness(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None
                        ) -> None:
    """``yjs-awareness {room, update}``: relayed; the room tracks its client ids."""
    msg = messages.parse(messages.YjsAwarenessPayload, payload)
    room = _joined_room(conn, msg.room, "yjs-awareness")
    await _deliver(room, YjsAwarenessCmd(conn, ack_id, msg.update))


async def chat_history(
    ctx: AppContext, conn: Client, payload: Any, ack_id: int | None
) -> None:
    """``chat-history {room, before?, limit?}``: an older page of the room's chat."""
    msg = messages.parse(messages.ChatHistoryPayload, payload)
    _joined_room(conn, msg.room, "chat-history")
    with map_storage_errors():
        page: list[ChatMessage] = await ctx.store.chat_page(
            msg.room, before=msg.before, limit=msg.limit
        )
    if ack_id is not None:
        conn.ack(ack_id, {"ok": True, "room": msg.room,
                          "messages": [chat_wire(msg.room, m) for m in page]})


async def refresh_token(ctx: AppContext, conn: Client, payload: Any, ack_id: int | None) -> None:
    """``refresh-token {token}``: replace an expiring token (same ``sub``)."""
    msg = messages.parse(messages.RefreshTokenPayload, payload)
    conn.set_identity(ctx.auth.refresh(conn.identity, msg.token))
    # the new token's rooms claim applies at once, in every room the client is in
    # (a lowered role too: the room tells the client with role-changed)
    reassign_roles(ctx, conn)
    if ack_id is not None:
        conn.ack(ack_id, {"ok": True, "expiresAt": conn.identity.expires_at})


HANDLERS: dict[str, Handler] = {
    "join": join,
    "leave": leave,
    "refresh-token": refresh_token,
    "op": op,
    "field": field,
    "chat": chat,
    "chat-history": chat_history,
    **{name: _relay_handler(name) for name in ("cursor", "selection", "typing", "broadcast")},
    "yjs-update": yjs_update,
    "yjs-sync": yjs_sync,
    "yjs-awareness": yjs_awareness,
}
