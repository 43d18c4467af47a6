"""Validated payloads of the client-to-server events (PROTOCOL section 4).

One pydantic model per event, and :func:`parse_payload`, which turns an event name
and its raw payload into a model or a :class:`~collabtrio.errors.CollabError`:

* an unknown event name -> ``UNKNOWN_EVENT``;
* a ``room`` that is present but not a valid room id -> ``INVALID_ROOM`` (checked
  before anything else, so a bad room never reads as a generic validation error);
* anything else wrong -> ``VALIDATION`` with pydantic's error list (``loc``, ``msg``,
  ``type``) as JSON-safe ``details``.

Unknown extra fields are ignored (clients may send more than we read). Types are
strict where a coercion would hide a client bug: strings stay strings, integers are
not booleans, and binary fields (Yjs updates, state vectors) must be real bytes as
delivered by Socket.IO binary attachments (``bytearray`` / ``memoryview`` are copied
to ``bytes``; a ``str`` is refused, so base64 is never guessed at).

Attribute names are snake_case; the wire names (``operationId``, ``clientId``,
``stateVector``) are the aliases, and models can be built by either name.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)

from ..errors import CollabError, ErrorCode
from .ids import ROOM_ID_RE, check_room_id

__all__ = [
    "EVENT_MODELS",
    "OP_KINDS",
    "BroadcastPayload",
    "ChatPayload",
    "CursorPayload",
    "FieldPayload",
    "JoinPayload",
    "LeavePayload",
    "OpKind",
    "OpPayload",
    "Payload",
    "RefreshTokenPayload",
    "RoomPayload",
    "SelectionPayload",
    "TypingPayload",
    "YjsAwarenessPayload",
    "YjsSyncPayload",
    "YjsUpdatePayload",
    "parse",
    "parse_payload",
]

OpKind = Literal["add", "update", "remove", "duplicate", "move", "replace"]
"""The document operations of PROTOCOL section 5."""

OP_KINDS: Final[tuple[OpKind, ...]] = ("add", "update", "remove", "duplicate", "move", "replace")


def _to_bytes(value: object) -> object:
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


RoomId = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=128, pattern=ROOM_ID_RE.pattern)
]
OperationId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128)]
EntityKey = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]
PathKey = Annotated[str, StringConstraints(strict=True, max_length=256)]
# a document epoch as the server hands it out (URL-safe base64 or hex), bounded
Epoch = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64,
                                         pattern=r"^[A-Za-z0-9_-]+$")]
# integers a JavaScript client can hold exactly, and a seq SQLite's INTEGER can hold
_JS_SAFE: Final = 2**53 - 1
_SEQ_MAX: Final = 2**63 - 1
# a client's timestamp (milliseconds): a number JavaScript holds exactly
Timestamp = (Annotated[StrictInt, Field(ge=-_JS_SAFE, le=_JS_SAFE)]
             | Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-_JS_SAFE, le=_JS_SAFE)]
             | None)
Seq = Annotated[StrictInt, Field(ge=0, le=_SEQ_MAX)]
Bytes = Annotated[bytes, BeforeValidator(_to_bytes), Field(strict=True)]
NonEmptyBytes = Annotated[bytes, BeforeValidator(_to_bytes), Field(strict=True, min_length=1)]


class Payload(BaseModel):
    """Base of every event payload: extra fields ignored, instances frozen."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class RoomPayload(Payload):
    """A payload addressed to one room (every event but ``refresh-token``)."""

    room: RoomId


class JoinPayload(RoomPayload):
    """``join {room, since?, epoch?}``: ``since`` is the last seq seen (int >= 0) or
    absent/null; ``epoch`` the document epoch that seq belongs to (from a join ack or a
    ``replace``), so a ``since`` from another timeline gets the full state."""

    since: Seq | None = None
    epoch: Epoch | None = None


class LeavePayload(RoomPayload):
    """``leave {room}``."""


class OpPayload(RoomPayload):
    """``op {room, operationId, op, collection, id, data?, timestamp?}``.

    ``collection`` and ``id`` are 1-256 character strings (``*`` for ``replace``);
    ``data`` is any JSON value (its shape per ``op`` is checked by the document).
    """

    operation_id: OperationId = Field(alias="operationId")
    op: OpKind
    collection: EntityKey
    id: EntityKey
    data: Any = None
    timestamp: Timestamp = None


class FieldPayload(RoomPayload):
    """``field {room, operationId, collection, id, path, value, timestamp?}``.

    ``path`` is a list of 1-32 string keys; ``value`` is required (``null`` allowed).
    """

    operation_id: OperationId = Field(alias="operationId")
    collection: EntityKey
    id: EntityKey
    path: Annotated[list[PathKey], Field(min_length=1, max_length=32)]
    value: Any
    timestamp: Timestamp = None


class CursorPayload(RoomPayload):
    """``cursor {room, cursor}``: any JSON value, ``null`` (or absent) clears it."""

    cursor: Any = None


class SelectionPayload(RoomPayload):
    """``selection {room, selection}``: any JSON value, ``null`` (or absent) clears it."""

    selection: Any = None


class TypingPayload(RoomPayload):
    """``typing {room, typing}``: a boolean (required)."""

    typing: StrictBool


class BroadcastPayload(RoomPayload):
    """``broadcast {room, event, data}``: ``event`` a 1-128 character name, ``data`` any JSON."""

    event: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128)]
    data: Any = None


class ChatPayload(RoomPayload):
    """``chat {room, text, clientId?}``: ``text`` 1-10000 characters, ``clientId`` 1-128."""

    text: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=10000)]
    client_id: OperationId | None = Field(default=None, alias="clientId")


class ChatHistoryPayload(RoomPayload):
    """``chat-history {room, before?, limit?}``: messages with ``seq < before`` (the
    newest ``limit``, 1-100, default 50)."""

    before: Seq | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=100)] = 50


class YjsUpdatePayload(RoomPayload):
    """``yjs-update {room, update, epoch?}``: a non-empty Yjs update as bytes;
    ``epoch`` the Yjs epoch of the client's document (refused if not the room's)."""

    update: NonEmptyBytes
    epoch: Epoch | None = None


class YjsSyncPayload(RoomPayload):
    """``yjs-sync {room, stateVector, epoch?}``: the client's Yjs state vector as bytes;
    ``epoch`` the Yjs epoch of the client's document, if it has one (refused if not the
    room's; a client that dropped its document sends none)."""

    state_vector: Bytes = Field(alias="stateVector")
    epoch: Epoch | None = None


class YjsAwarenessPayload(RoomPayload):
    """``yjs-awareness {room, update}``: a non-empty y-protocols awareness update as bytes."""

    update: NonEmptyBytes


class RefreshTokenPayload(Payload):
    """``refresh-token {token}``: the new JWT (1-16384 characters)."""

    token: Annotated[StrictStr, StringConstraints(min_length=1, max_length=16384)]


EVENT_MODELS: Final[dict[str, type[Payload]]] = {
    "join": JoinPayload,
    "leave": LeavePayload,
    "op": OpPayload,
    "field": FieldPayload,
    "cursor": CursorPayload,
    "selection": SelectionPayload,
    "typing": TypingPayload,
    "broadcast": BroadcastPayload,
    "chat": ChatPayload,
    "chat-history": ChatHistoryPayload,
    "yjs-update": YjsUpdatePayload,
    "yjs-sync": YjsSyncPayload,
    "yjs-awareness": YjsAwarenessPayload,
    "refresh-token": RefreshTokenPayload,
}
"""Client event name -> payload model (PROTOCOL section 4)."""

_HAS_ROOM: Final[frozenset[str]] = frozenset(
    name for name, model in EVENT_MODELS.items() if issubclass(model, RoomPayload)
)


def _error_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in err["loc"]],
            "msg": str(err["msg"]),
            "type": str(err["type"]),
        }
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


P = TypeVar("P", bound=Payload)

_EVENT_OF: Final[dict[type[Payload], str]] = {model: name for name, model in EVENT_MODELS.items()}


def parse(model: type[P], payload: object) -> P:
    """Validate ``payload`` as ``model`` (one of :data:`EVENT_MODELS`); errors as in
    :func:`parse_payload`."""
    event = _EVENT_OF[model]
    if not isinstance(payload, dict):
        raise CollabError(
            ErrorCode.VALIDATION,
            f"invalid {event} payload: expected an object",
            details=[{"loc": [], "msg": "Input should be an object", "type": "dict_type"}],
        )
    if event in _HAS_ROOM and "room" in payload:
        check_room_id(payload["room"])
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise CollabError(
            ErrorCode.VALIDATION, f"invalid {event} payload", details=_error_details(exc)
        ) from None


def parse_payload(event: str, payload: object) -> Payload:
    """Validate ``payload`` of client event ``event`` and return its model instance.

    Raises :class:`CollabError` with ``UNKNOWN_EVENT`` for an event name not in
    :data:`EVENT_MODELS`; ``VALIDATION`` when ``payload`` is not an object (dict);
    ``INVALID_ROOM`` when a ``room`` key is present but is not a valid room id;
    otherwise ``VALIDATION`` (message ``"invalid <event> payload"``) with ``details``
    a list of ``{loc, msg, type}`` dicts (JSON-safe, never echoing the input).
    """
    model = EVENT_MODELS.get(event) if isinstance(event, str) else None
    if model is None:
        shown = event if not isinstance(event, str) or len(event) <= 100 else event[:100] + "..."
        raise CollabError(ErrorCode.UNKNOWN_EVENT, f"unknown event {shown!r}")
    return parse(model, payload)
