"""The HTTP API's bodies: one pydantic model per request and per answer.

The routes validate requests and shape answers with these models, and the OpenAPI
document (:mod:`.openapi`) is produced from the same models, so the two cannot drift.
Field constraints reuse the socket protocol's types
(:mod:`collabtrio.protocol.messages`), so an operation sent over HTTP is held to the
same rules as one sent by a client. Unknown fields in a request are ignored, as in the
socket protocol; names on the wire are camelCase.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from ..protocol.messages import EntityKey, OperationId, OpKind, Timestamp

__all__ = [
    "ConnectionStats", "DisconnectRequest", "DisconnectResponse", "ErrorBody", "ErrorInfo",
    "MemberInfo", "OpRequest", "OpResponse", "PublishManyRequest", "PublishManyResponse",
    "PublishRequest", "PublishResponse", "RoomDelivery", "RoomListResponse", "RoomStateResponse",
    "RoomStats", "RoomSummary", "RoomsQuery", "StatsResponse", "StorageStats",
    "validation_details",
]

EventName = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128)]
Target = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=261)]


class ApiModel(BaseModel):
    """Base of every API body: camelCase on the wire, extra request fields ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors as the protocol's ``VALIDATION`` details: ``{loc, msg, type}``,
    never echoing the input."""
    return [
        {"loc": [part if isinstance(part, int) else str(part) for part in err["loc"]],
         "msg": str(err["msg"]), "type": str(err["type"])}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


# -- errors ----------------------------------------------------------------------------

class ErrorInfo(ApiModel):
    """A refusal: the socket protocol's error codes where one applies (``VALIDATION``,
    ``NOT_FOUND``, ``RATE_LIMITED``...), plus ``METHOD_NOT_ALLOWED`` for HTTP."""

    code: str
    message: str
    retryable: bool = False
    details: Any = None


class ErrorBody(ApiModel):
    """Every error answer: ``{error: {code, message, retryable, details?}}``."""

    error: ErrorInfo


# -- publishing --------------------------------------------------------------------------

class PublishRequest(ApiModel):
    """``POST /api/rooms/{room}/publish``: the event name and its data (any JSON)."""

    event: EventName
    data: Any = None


class PublishManyRequest(PublishRequest):
    """``POST /api/publish``: the same event for several rooms (``user:<sub>`` for a
    user's connections), at most ``api_max_rooms`` of them."""

    rooms: Annotated[list[Target], Field(min_length=1)]


class RoomDelivery(ApiModel):
    """What a publish did in one room: whether it was open, how many connections got it."""

    room: str
    open: bool
    delivered: int


class PublishResponse(RoomDelivery):
    """The answer to a publish to one room."""

    ok: Literal[True] = True


class PublishManyResponse(ApiModel):
    """The answer to a publish to several rooms: the total, and each room's part."""

    ok: Literal[True] = True
    delivered: int
    rooms: list[RoomDelivery]


# -- documents ---------------------------------------------------------------------------

class OpRequest(ApiModel):
    """``POST /api/rooms/{room}/ops``: a document operation (PROTOCOL section 5), as a
    client's ``op`` without ``room``; ``operationId`` makes it idempotent."""

    operation_id: OperationId
    op: OpKind
    collection: EntityKey
    id: EntityKey
    data: Any = None
    timestamp: Timestamp = None


class OpResponse(ApiModel):
    """The committed operation: its ``seq`` (``null`` for a ``move`` that is only
    relayed) and the server's time; ``epoch`` after a ``replace``."""

    ok: Literal[True] = True
    operation_id: str
    seq: int | None
    server_timestamp: int
    epoch: str | None = None


# -- reading ----------------------------------------------------------------------------

class ConnectionStats(ApiModel):
    """Live connections: Socket.IO ones by transport, those still in their handshake,
    y-websocket peers, and the Socket.IO connections accepted since the start."""

    socketio: int
    websocket: int
    polling: int
    handshaking: int
    y_websocket: int
    accepted_total: int


class RoomStats(ApiModel):
    """Open rooms, their members (a connection in two rooms counts twice), and the
    rooms opened since the start."""

    open: int
    members: int
    opened_total: int


class StorageStats(ApiModel):
    """The storage backend, whether it answered a ping just now, and the group-commit
    counts (transactions, room commits)."""

    backend: str
    reachable: bool | None = None
    error: str | None = None
    transactions: int
    room_commits: int


class StatsResponse(ApiModel):
    """``GET /api/stats``."""

    version: str
    uptime_s: float
    connections: ConnectionStats
    rooms: RoomStats
    users: int
    storage: StorageStats


class RoomsQuery(ApiModel):
    """``GET /api/rooms`` query: ``limit`` (at most ``api_max_rooms``, the default),
    ``cursor`` (the ``nextCursor`` of the previous page), ``prefix``."""

    limit: Annotated[int, Field(ge=1)] | None = None
    cursor: Annotated[str, StringConstraints(max_length=128)] | None = None
    prefix: Annotated[str, StringConstraints(max_length=128)] | None = None


class RoomSummary(ApiModel):
    """One open room: connections, distinct users, seq (``null`` while loading) and the
    time of the last activity (ms since the epoch)."""

    room: str
    connections: int
    unique_users: int
    seq: int | None
    last_activity: int


class RoomListResponse(ApiModel):
    """A page of open rooms, in id order; ``nextCursor`` is ``null`` on the last page."""

    rooms: list[RoomSummary]
    next_cursor: str | None


class MemberInfo(ApiModel):
    """A member as the ``presence`` event lists it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    socket_id: str
    user_id: str
    user_name: str | None = None
    avatar_url: str | None = None
    role: str
    joined_at: int
    last_activity: int
    cursor: Any = None
    selection: Any = None


class RoomStateResponse(ApiModel):
    """``GET /api/rooms/{room}``: the committed document ``{collection: {id: entity}}``,
    its seq and epoch, and the members (none when the room is not open)."""

    room: str
    open: bool
    seq: int
    epoch: str | None
    state: dict[str, dict[str, Any]]
    members: list[MemberInfo]
    unique_users: int
    connections: int


# -- connections -------------------------------------------------------------------------

class DisconnectRequest(ApiModel):
    """``POST /api/users/{sub}/disconnect``: the reason the user's clients are told
    (the body may be empty)."""

    reason: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)] = (
        "disconnected by the server")


class DisconnectResponse(ApiModel):
    """How many connections of the user were closed, Socket.IO and y-websocket."""

    ok: Literal[True] = True
    user_id: str
    disconnected: int
    socketio: int
    y_websocket: int
