"""Client event handlers: validate, check membership and limits, hand over to the room.

A handler runs in the sending connection's task. It validates the payload (pydantic,
``VALIDATION`` / ``INVALID_ROOM``), checks what the connection itself knows (joined
rooms, rooms-per-connection limit, personal rooms) and puts a command in the room's
mailbox. The room answers; handlers only answer refusals (raising
:class:`~collabtrio.errors.CollabError`, which the connection turns into the ack or
``operation-error``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .auth import check_join_allowed, check_room_id, resolve_role
from .errors import CollabError, ErrorCode
from .protocol import messages
from .rooms.keeper import ChatCmd, FieldCmd, OpCmd, chat_wire
from .rooms.mailbox import MailboxClosed
from .rooms.room import Command, Join, Leave, Relay, Room
from .storage.base import ChatMessage, StorageError

if TYPE_CHECKING:
    from .server import Server
    from .transport.connection import Connection

Handler = Callable[["Server", "Connection", Any, "int | None"], Awaitable[None]]

# events relayed to the other members as they are (plus the sender's identity)
VOLATILE = frozenset({"cursor", "selection", "typing"})

# events of the protocol that this server version does not implement yet
NOT_YET = frozenset({"yjs-update", "yjs-sync", "yjs-awareness"})


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


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


def _check_storable(value: Any, what: str) -> None:
    """Refuse what no backend can store: bytes, NaN/Infinity, NUL characters, and
    nesting deeper than :data:`MAX_DEPTH` levels.

    Checked here, per operation, so one client's bad value is that client's
    ``VALIDATION`` error and never fails a transaction shared with other rooms.
    """
    if _too_deep(value, MAX_DEPTH):
        raise CollabError(ErrorCode.VALIDATION,
                          f"{what} nests deeper than {MAX_DEPTH} levels")
    try:
        text = _dumps(value)
    except (TypeError, ValueError) as exc:
        raise CollabError(ErrorCode.VALIDATION, f"{what} must be plain JSON: {exc}") from None
    if r"\u0000" in text:
        raise CollabError(ErrorCode.VALIDATION, f"{what} must not contain NUL characters")


async def _deliver(room: Room, cmd: Command) -> None:
    """Queue ``cmd`` for ``room`` (waiting while its inbox is full)."""
    try:
        await room.mailbox.put(cmd)
    except MailboxClosed:
        raise CollabError(ErrorCode.INTERNAL, f"room {room.id!r} closed; try again",
                          retryable=True) from None


DOCUMENT_QUEUE_WAIT_S = 1.0


async def _document_space(room: Room) -> None:
    # the room hands document commands straight to its keeper, so the bound that
    # protects memory is the keeper's queue: wait a little, then a retryable refusal
    keeper = room.keeper
    if keeper is not None and keeper.full and not await keeper.wait_for_space(
        DOCUMENT_QUEUE_WAIT_S
    ):
        raise CollabError(ErrorCode.RATE_LIMITED,
                          f"room {room.id!r} is busy storing earlier changes; retry shortly",
                          retryable=True)


def _joined_room(conn: Connection, room_id: str, event: str) -> Any:
    room = conn.rooms.get(room_id)
    if room is None:
        raise CollabError(ErrorCode.NOT_JOINED, f"join room {room_id!r} before sending {event}")
    return room


async def join(server: Server, conn: Connection, payload: Any, ack_id: int | None) -> None:
    """``join {room, since?}``."""
    msg = messages.parse_payload("join", payload)
    assert isinstance(msg, messages.JoinPayload)
    await request_join(server, conn, msg.room, ack_id, since=msg.since)


async def request_join(
    server: Server,
    conn: Connection,
    room_id: str,
    ack_id: int | None,
    *,
    since: int | None = None,
    at_connect: bool = False,
) -> None:
    """Check a join and queue it in the room (shared by ``join`` and connect-time rooms)."""
    identity = conn.identity
    assert identity is not None
    check_join_allowed(identity, room_id)
    limit = server.config.max_rooms_per_connection
    if room_id not in conn.rooms and len(conn.rooms) + conn.pending_joins >= limit:
        raise CollabError(
            ErrorCode.FORBIDDEN, f"a connection may be in at most {limit} rooms; leave one first"
        )
    role = resolve_role(identity, room_id, grants=conn.grants, default=server.config.default_role)
    room = server.registry.get_or_open(room_id)
    conn.pending_joins += 1
    try:
        await _deliver(room, Join(conn, role, ack_id, since=since, at_connect=at_connect))
    except CollabError:
        conn.pending_joins -= 1
        raise


async def leave(server: Server, conn: Connection, payload: Any, ack_id: int | None) -> None:
    """``leave {room}``."""
    msg = messages.parse_payload("leave", payload)
    assert isinstance(msg, messages.LeavePayload)
    room = _joined_room(conn, msg.room, "leave")
    await _deliver(room, Leave(conn, ack_id))


def _relay_handler(event: str) -> Handler:
    volatile = event in VOLATILE

    async def relay(server: Server, conn: Connection, payload: Any, ack_id: int | None) -> None:
        msg = messages.parse_payload(event, payload)
        room_id: str = msg.room  # type: ignore[attr-defined]
        room = _joined_room(conn, room_id, event)
        # relay what the client sent (validated), so its own extra fields reach the others
        await _deliver(room, Relay(conn, event, dict(payload), ack_id, volatile))

    relay.__name__ = relay.__qualname__ = f"relay_{event}"
    relay.__doc__ = f"``{event}``: relayed to the other members of the room."
    return relay


async def op(server: Server, conn: Connection, payload: Any, ack_id: int | None) -> None:
    """``op``: a document operation, persisted then broadcast (the room checks roles)."""
    msg = messages.parse_payload("op", payload)
    assert isinstance(msg, messages.OpPayload)
    room = _joined_room(conn, msg.room, "op")
    _check_storable([msg.operation_id, msg.collection, msg.id, msg.data], "op")
    await _document_space(room)
    await _deliver(room, OpCmd(conn, msg, ack_id))


async def field(server: Server, conn: Connection, payload: Any, ack_id: int | None) -> None:
    """``field``: a debounced write of one value inside an entity."""
    msg = messages.parse_payload("field", payload)
    assert isinstance(msg, messages.FieldPayload)
    room = _joined_room(conn, msg.room, "field")
    _check_storable([msg.operation_id, msg.collection, msg.id, msg.path, msg.value], "field")
    await _document_space(room)
    await _deliver(room, FieldCmd(conn, msg, ack_id))


async def chat(server: Server, conn: Connection, payload: Any, ack_id: int | None) -> None:
    """``chat``: persisted, then sent to every member, the sender included."""
    msg = messages.parse_payload("chat", payload)
    assert isinstance(msg, messages.ChatPayload)
    room = _joined_room(conn, msg.room, "chat")
    _check_storable([msg.text, msg.client_id], "chat")
    await _document_space(room)
    await _deliver(room, ChatCmd(conn, msg, ack_id))


async def chat_history(
    server: Server, conn: Connection, payload: Any, ack_id: int | None
) -> None:
    """``chat-history {room, before?, limit?}``: an older page of the room's chat."""
    msg = messages.parse_payload("chat-history", payload)
    assert isinstance(msg, messages.ChatHistoryPayload)
    _joined_room(conn, msg.room, "chat-history")
    try:
        page: list[ChatMessage] = await server.store.chat_page(
            msg.room, before=msg.before, limit=msg.limit
        )
    except StorageError as exc:
        raise CollabError(ErrorCode.STORAGE_UNAVAILABLE, "storage is unavailable; try again",
                          retryable=True) from exc
    if ack_id is not None:
        conn.ack(ack_id, {"ok": True, "room": msg.room,
                          "messages": [chat_wire(msg.room, m) for m in page]})


async def refresh_token(server: Server, conn: Connection, payload: Any, ack_id: int | None) -> None:
    """``refresh-token {token}``: replace an expiring token (same ``sub``)."""
    msg = messages.parse_payload("refresh-token", payload)
    assert isinstance(msg, messages.RefreshTokenPayload)
    assert conn.identity is not None
    conn.identity = server.auth.refresh(conn.identity, msg.token)
    server.schedule_token_expiry(conn)
    if ack_id is not None:
        conn.ack(ack_id, {"ok": True, "expiresAt": conn.identity.expires_at})


async def not_yet(server: Server, conn: Connection, payload: Any, ack_id: int | None) -> None:
    """Protocol events this server version does not implement."""
    if isinstance(payload, dict) and "room" in payload:
        check_room_id(payload["room"])
    raise CollabError(ErrorCode.UNKNOWN_EVENT, "this event is not supported by this server version")


HANDLERS: dict[str, Handler] = {
    "join": join,
    "leave": leave,
    "refresh-token": refresh_token,
    "op": op,
    "field": field,
    "chat": chat,
    "chat-history": chat_history,
    **{name: _relay_handler(name) for name in ("cursor", "selection", "typing", "broadcast")},
    **{name: not_yet for name in NOT_YET},
}
