"""Tests for collabtrio.protocol.messages: payload models and parse_payload."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from collabtrio.auth import ROOM_ID_RE
from collabtrio.errors import CollabError, ErrorCode
from collabtrio.protocol.messages import (
    EVENT_MODELS,
    OP_KINDS,
    BroadcastPayload,
    ChatPayload,
    CursorPayload,
    FieldPayload,
    JoinPayload,
    LeavePayload,
    OpPayload,
    RefreshTokenPayload,
    RoomPayload,
    SelectionPayload,
    TypingPayload,
    YjsAwarenessPayload,
    YjsSyncPayload,
    YjsUpdatePayload,
    parse_payload,
)

OP = {"room": "r", "operationId": "op-1", "op": "add", "collection": "c", "id": "1"}
FIELD = {
    "room": "r",
    "operationId": "f-1",
    "collection": "c",
    "id": "1",
    "path": ["a", "b"],
    "value": 3,
}

VALID: list[tuple[str, dict[str, Any]]] = [
    ("join", {"room": "doc:1"}),
    ("join", {"room": "doc:1", "since": 0}),
    ("join", {"room": "doc:1", "since": 17}),
    ("join", {"room": "doc:1", "since": None}),
    ("leave", {"room": "doc:1"}),
    ("op", OP),
    ("op", {**OP, "op": "update", "data": {"x": 1}, "timestamp": 1700000000123}),
    ("op", {**OP, "op": "replace", "collection": "*", "id": "*", "data": {}}),
    ("op", {**OP, "op": "move", "data": {"position": {"x": 1.5}}, "timestamp": 1.5}),
    ("field", FIELD),
    ("field", {**FIELD, "value": None, "timestamp": 5}),
    ("field", {**FIELD, "path": [""] * 32}),
    ("cursor", {"room": "r", "cursor": {"x": 1, "y": 2}}),
    ("cursor", {"room": "r", "cursor": None}),
    ("cursor", {"room": "r"}),
    ("selection", {"room": "r", "selection": [1, 2, "three"]}),
    ("typing", {"room": "r", "typing": True}),
    ("typing", {"room": "r", "typing": False}),
    ("broadcast", {"room": "r", "event": "progress", "data": {"pct": 50}}),
    ("broadcast", {"room": "r", "event": "e" * 128}),
    ("chat", {"room": "r", "text": "hello"}),
    ("chat", {"room": "r", "text": "x" * 10000, "clientId": "c-1"}),
    ("chat-history", {"room": "r"}),
    ("chat-history", {"room": "r", "before": 10, "limit": 100}),
    ("yjs-update", {"room": "r", "update": b"\x01\x00"}),
    ("yjs-sync", {"room": "r", "stateVector": b"\x00"}),
    ("yjs-sync", {"room": "r", "stateVector": b""}),
    ("yjs-awareness", {"room": "r", "update": b"\x01\x02\x03"}),
    ("refresh-token", {"token": "a.b.c"}),
]

INVALID: list[tuple[str, dict[str, Any]]] = [
    ("join", {}),
    ("join", {"room": "r", "since": -1}),
    ("join", {"room": "r", "since": "3"}),
    ("join", {"room": "r", "since": 1.5}),
    ("join", {"room": "r", "since": True}),
    ("leave", {}),
    ("op", {k: v for k, v in OP.items() if k != "operationId"}),
    ("op", {**OP, "operationId": ""}),
    ("op", {**OP, "operationId": "x" * 129}),
    ("op", {**OP, "operationId": 5}),
    ("op", {**OP, "op": "delete"}),
    ("op", {**OP, "op": None}),
    ("op", {**OP, "collection": ""}),
    ("op", {**OP, "id": 7}),
    ("op", {**OP, "timestamp": "yesterday"}),
    ("op", {**OP, "timestamp": True}),
    ("field", {k: v for k, v in FIELD.items() if k != "value"}),
    ("field", {**FIELD, "path": []}),
    ("field", {**FIELD, "path": ["a"] * 33}),
    ("field", {**FIELD, "path": "a.b"}),
    ("field", {**FIELD, "path": ["a", 1]}),
    ("field", {**FIELD, "operationId": None}),
    ("typing", {"room": "r"}),
    ("typing", {"room": "r", "typing": "yes"}),
    ("typing", {"room": "r", "typing": 1}),
    ("broadcast", {"room": "r"}),
    ("broadcast", {"room": "r", "event": ""}),
    ("broadcast", {"room": "r", "event": "e" * 129}),
    ("broadcast", {"room": "r", "event": 3}),
    ("chat", {"room": "r"}),
    ("chat", {"room": "r", "text": ""}),
    ("chat", {"room": "r", "text": "x" * 10001}),
    ("chat", {"room": "r", "text": 42}),
    ("chat", {"room": "r", "text": "hi", "clientId": 9}),
    ("chat-history", {"room": "r", "limit": 0}),
    ("chat-history", {"room": "r", "limit": 101}),
    ("chat-history", {"room": "r", "before": -1}),
    ("chat-history", {"room": "r", "before": "10"}),
    ("yjs-update", {"room": "r"}),
    ("yjs-update", {"room": "r", "update": b""}),
    ("yjs-update", {"room": "r", "update": "AQA="}),
    ("yjs-update", {"room": "r", "update": [1, 0]}),
    ("yjs-sync", {"room": "r", "stateVector": "AA=="}),
    ("yjs-sync", {"room": "r"}),
    ("yjs-awareness", {"room": "r", "update": "x"}),
    ("refresh-token", {}),
    ("refresh-token", {"token": ""}),
    ("refresh-token", {"token": 5}),
    ("refresh-token", {"token": None}),
]


def test_every_event_has_a_model() -> None:
    assert set(EVENT_MODELS) == {
        "join",
        "leave",
        "op",
        "field",
        "cursor",
        "selection",
        "typing",
        "broadcast",
        "chat",
        "chat-history",
        "yjs-update",
        "yjs-sync",
        "yjs-awareness",
        "refresh-token",
    }
    assert {event for event, _ in VALID} == set(EVENT_MODELS)
    assert {event for event, _ in INVALID} == set(EVENT_MODELS) - {"cursor", "selection"}


@pytest.mark.parametrize(("event", "payload"), VALID)
def test_valid(event: str, payload: dict[str, Any]) -> None:
    model = parse_payload(event, payload)
    assert type(model) is EVENT_MODELS[event]


@pytest.mark.parametrize(("event", "payload"), INVALID)
def test_invalid_is_validation(event: str, payload: dict[str, Any]) -> None:
    with pytest.raises(CollabError) as info:
        parse_payload(event, payload)
    err = info.value
    assert err.code is ErrorCode.VALIDATION
    assert err.message == f"invalid {event} payload"
    assert not err.retryable
    assert isinstance(err.details, list)
    assert err.details
    for item in err.details:
        assert set(item) == {"loc", "msg", "type"}
        assert isinstance(item["loc"], list)
    json.dumps(err.to_wire())  # JSON-safe


def test_details_do_not_echo_input() -> None:
    with pytest.raises(CollabError) as info:
        parse_payload("chat", {"room": "r", "text": 12345678})
    assert "12345678" not in json.dumps(info.value.details)
    assert info.value.details == [
        {"loc": ["text"], "msg": "Input should be a valid string", "type": "string_type"}
    ]


def test_field_values() -> None:
    op = parse_payload("op", {**OP, "data": {"a": [1]}, "extra": "ignored"})
    assert isinstance(op, OpPayload)
    assert op.room == "r"
    assert op.operation_id == "op-1"
    assert op.op == "add"
    assert (op.collection, op.id, op.data, op.timestamp) == ("c", "1", {"a": [1]}, None)
    assert not hasattr(op, "extra")

    field = parse_payload("field", FIELD)
    assert isinstance(field, FieldPayload)
    assert field.path == ["a", "b"]
    assert field.value == 3

    join = parse_payload("join", {"room": "r"})
    assert isinstance(join, JoinPayload)
    assert join.since is None

    chat = parse_payload("chat", {"room": "r", "text": "hi", "clientId": "c1"})
    assert isinstance(chat, ChatPayload)
    assert chat.client_id == "c1"

    sync = parse_payload("yjs-sync", {"room": "r", "stateVector": b"\x00"})
    assert isinstance(sync, YjsSyncPayload)
    assert sync.state_vector == b"\x00"

    token = parse_payload("refresh-token", {"token": "t", "room": "bad room!"})
    assert isinstance(token, RefreshTokenPayload)  # no room field: ignored, not checked
    assert token.token == "t"


def test_all_op_kinds() -> None:
    for kind in OP_KINDS:
        model = parse_payload("op", {**OP, "op": kind})
        assert isinstance(model, OpPayload)
        assert model.op == kind


def test_models_by_python_name_and_frozen() -> None:
    by_name = OpPayload.model_validate(
        {"room": "r", "operation_id": "o", "op": "remove", "collection": "c", "id": "1"}
    )
    by_alias = OpPayload.model_validate(
        {"room": "r", "operationId": "o", "op": "remove", "collection": "c", "id": "1"}
    )
    assert by_name == by_alias
    assert by_name.operation_id == "o"
    with pytest.raises(ValidationError, match="frozen"):
        by_name.room = "other"


def test_model_classes() -> None:
    for name, model in EVENT_MODELS.items():
        assert issubclass(model, RoomPayload) == (name != "refresh-token")
    assert EVENT_MODELS["leave"] is LeavePayload
    assert EVENT_MODELS["cursor"] is CursorPayload
    assert EVENT_MODELS["selection"] is SelectionPayload
    assert EVENT_MODELS["typing"] is TypingPayload
    assert EVENT_MODELS["broadcast"] is BroadcastPayload
    assert EVENT_MODELS["yjs-update"] is YjsUpdatePayload
    assert EVENT_MODELS["yjs-awareness"] is YjsAwarenessPayload


# --- the INVALID_ROOM / VALIDATION / UNKNOWN_EVENT split -------------------------


@pytest.mark.parametrize("event", sorted(set(EVENT_MODELS) - {"refresh-token"}))
@pytest.mark.parametrize("room", ["", "a b", "x" * 129, "doc/1", "é", 5, None, ["r"], b"r"])
def test_invalid_room(event: str, room: object) -> None:
    # even when the rest of the payload is also wrong, the room decides first
    with pytest.raises(CollabError) as info:
        parse_payload(event, {"room": room, "since": -5, "text": 3})
    assert info.value.code is ErrorCode.INVALID_ROOM


def test_missing_room_is_validation() -> None:
    with pytest.raises(CollabError) as info:
        parse_payload("join", {})
    assert info.value.code is ErrorCode.VALIDATION
    assert info.value.details == [{"loc": ["room"], "msg": "Field required", "type": "missing"}]


@pytest.mark.parametrize("event", ["", "nope", "JOIN", "connect", "message", "x" * 500])
def test_unknown_event(event: str) -> None:
    with pytest.raises(CollabError) as info:
        parse_payload(event, {"room": "r"})
    assert info.value.code is ErrorCode.UNKNOWN_EVENT
    assert info.value.message.startswith("unknown event ")
    assert len(info.value.message) < 200


def test_unknown_event_message() -> None:
    with pytest.raises(CollabError) as info:
        parse_payload("nope", {})
    assert info.value.message == "unknown event 'nope'"


def test_unknown_event_checked_before_payload_shape() -> None:
    with pytest.raises(CollabError) as info:
        parse_payload("nope", "not a dict")
    assert info.value.code is ErrorCode.UNKNOWN_EVENT


@pytest.mark.parametrize("payload", [None, "r", 5, ["r"], b"r", (("room", "r"),)])
def test_payload_not_an_object(payload: object) -> None:
    with pytest.raises(CollabError) as info:
        parse_payload("join", payload)
    assert info.value.code is ErrorCode.VALIDATION
    assert isinstance(info.value.details, list)
    assert info.value.details
    json.dumps(info.value.to_wire())


# --- bytes strictness -------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "key"),
    [("yjs-update", "update"), ("yjs-sync", "stateVector"), ("yjs-awareness", "update")],
)
def test_bytes_fields(event: str, key: str) -> None:
    for good in (b"\x01\x02", bytearray(b"\x01\x02"), memoryview(b"\x01\x02")):
        model = parse_payload(event, {"room": "r", key: good})
        value = getattr(model, "state_vector" if key == "stateVector" else key)
        assert type(value) is bytes
        assert value == b"\x01\x02"
    for bad in ("\x01\x02", "AQI=", [1, 2], 12, None, {"_placeholder": True, "num": 0}):
        with pytest.raises(CollabError) as info:
            parse_payload(event, {"room": "r", key: bad})
        assert info.value.code is ErrorCode.VALIDATION
        assert info.value.details[0]["loc"] == [key]


# --- properties -------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(event=st.sampled_from(sorted(EVENT_MODELS)), payload=_json)
def test_parse_payload_only_raises_collab_errors(event: str, payload: object) -> None:
    try:
        parse_payload(event, payload)
    except CollabError as exc:
        caught: CollabError | None = exc
    else:
        caught = None
    if caught is not None:
        assert caught.code in {ErrorCode.VALIDATION, ErrorCode.INVALID_ROOM}
        json.dumps(caught.to_wire())


@given(
    event=st.sampled_from(sorted(set(EVENT_MODELS) - {"refresh-token"})),
    room=st.text(max_size=140),
    rest=st.dictionaries(st.sampled_from(["since", "text", "typing", "op", "path"]), _json),
)
def test_room_split_property(event: str, room: str, rest: dict[str, Any]) -> None:
    if ROOM_ID_RE.fullmatch(room) is None:
        with pytest.raises(CollabError) as info:
            parse_payload(event, {**rest, "room": room})
        assert info.value.code is ErrorCode.INVALID_ROOM
    else:
        try:
            parse_payload(event, {**rest, "room": room})
        except CollabError as exc:
            code: ErrorCode | None = exc.code
        else:
            code = None
        assert code in {None, ErrorCode.VALIDATION}
