"""Unit tests for the Socket.IO v5 codec."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from collabtrio.protocol import socketio as sio
from collabtrio.protocol.socketio import (
    Decoder,
    Packet,
    PacketType,
    SocketIOProtocolError,
    TooManyAttachments,
)

# Unless noted otherwise, wire vectors come from the Socket.IO protocol, 5th version
# (github.com/socketio/socket.io-protocol Readme.md, section "Packet encoding"; "SIO v5 doc").

T = PacketType

# (packet, encoded text, attachments) from SIO v5 doc, "Packet encoding" tables.
SPEC_VECTORS: list[tuple[Packet, str, list[bytes]]] = [
    # connection to a namespace
    (Packet(T.CONNECT), "0", []),
    (
        Packet(T.CONNECT, data={"sid": "wZX3oN0bSVIhsaknAAAI"}),
        '0{"sid":"wZX3oN0bSVIhsaknAAAI"}',
        [],
    ),
    (Packet(T.CONNECT, "/admin"), "0/admin,", []),
    (
        Packet(T.CONNECT, "/admin", {"sid": "oSO0OpakMV_3jnilAAAA"}),
        '0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}',
        [],
    ),
    (
        Packet(T.CONNECT_ERROR, data={"message": "Not authorized"}),
        '4{"message":"Not authorized"}',
        [],
    ),
    # sending and receiving data
    (Packet(T.EVENT, data=["foo"]), '2["foo"]', []),
    (Packet(T.EVENT, "/admin", ["bar"]), '2/admin,["bar"]', []),
    (
        Packet(T.BINARY_EVENT, data=["baz", b"\x01\x02\x03\x04"]),
        '51-["baz",{"_placeholder":true,"num":0}]',
        [b"\x01\x02\x03\x04"],
    ),
    (
        Packet(T.BINARY_EVENT, "/admin", ["baz", b"\x01\x02", b"\x03\x04"]),
        '52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
        [b"\x01\x02", b"\x03\x04"],
    ),
    # acknowledgement
    (Packet(T.EVENT, data=["foo"], id=12), '212["foo"]', []),
    (Packet(T.ACK, data=[], id=12), "312[]", []),
    (Packet(T.EVENT, "/admin", ["foo"], 13), '2/admin,13["foo"]', []),
    (Packet(T.ACK, "/admin", ["bar"], 13), '3/admin,13["bar"]', []),
    (
        Packet(T.BINARY_EVENT, data=["foo", b"\x01\x02\x03\x04"], id=14),
        '51-14["foo",{"_placeholder":true,"num":0}]',
        [b"\x01\x02\x03\x04"],
    ),
    (Packet(T.ACK, data=["bar"], id=14), '314["bar"]', []),
    (Packet(T.EVENT, data=["foo"], id=15), '215["foo"]', []),
    (
        Packet(T.BINARY_ACK, data=["bar", b"\x01\x02\x03\x04"], id=15),
        '61-15["bar",{"_placeholder":true,"num":0}]',
        [b"\x01\x02\x03\x04"],
    ),
    # disconnection from a namespace
    (Packet(T.DISCONNECT), "1", []),
    (Packet(T.DISCONNECT, "/admin"), "1/admin,", []),
]


def _decode_all(frames: list[str | bytes], decoder: Decoder | None = None) -> Packet:
    decoder = decoder or Decoder()
    result: Packet | None = None
    for i, frame in enumerate(frames):
        result = decoder.feed(frame)
        if i < len(frames) - 1:
            assert result is None
            assert decoder.pending
    assert result is not None
    assert not decoder.pending
    return result


@pytest.mark.parametrize(("packet", "text", "attachments"), SPEC_VECTORS)
def test_spec_vectors_encode(packet: Packet, text: str, attachments: list[bytes]) -> None:
    assert sio.encode(packet) == [text, *attachments]


@pytest.mark.parametrize(("packet", "text", "attachments"), SPEC_VECTORS)
def test_spec_vectors_decode(packet: Packet, text: str, attachments: list[bytes]) -> None:
    assert _decode_all([text, *attachments]) == packet


def test_sample_session_vectors() -> None:
    # SIO v5 doc, "Sample session": 42["hey","Jude"] (after the Engine.IO "4") and 40.
    assert sio.encode(Packet(T.EVENT, data=["hey", "Jude"])) == ['2["hey","Jude"]']
    assert Decoder().feed("0") == Packet(T.CONNECT)


def test_event_to_binary_switch_and_depth_first_numbering() -> None:
    data = ["ev", {"a": b"A", "b": [b"B", {"c": bytearray(b"C")}]}, memoryview(b"D")]
    frames = sio.encode(Packet(T.EVENT, "/ns", data, id=7))
    assert frames == [
        '54-/ns,7["ev",{"a":{"_placeholder":true,"num":0},"b":[{"_placeholder":true,"num":1},'
        '{"c":{"_placeholder":true,"num":2}}]},{"_placeholder":true,"num":3}]',
        b"A",
        b"B",
        b"C",
        b"D",
    ]
    assert _decode_all(frames) == Packet(
        T.BINARY_EVENT, "/ns", ["ev", {"a": b"A", "b": [b"B", {"c": b"C"}]}, b"D"], 7
    )


def test_ack_with_binary_becomes_binary_ack() -> None:
    assert sio.encode(Packet(T.ACK, data=[b"\x00"], id=3)) == [
        '61-3[{"_placeholder":true,"num":0}]',
        b"\x00",
    ]


def test_binary_type_without_binary_is_written_plain() -> None:
    assert sio.encode(Packet(T.BINARY_EVENT, data=["x"])) == ['2["x"]']
    assert sio.encode(Packet(T.BINARY_ACK, data=[], id=1)) == ["31[]"]


def test_encode_non_ascii_kept() -> None:
    assert sio.encode(Packet(T.EVENT, data=["é", "☃\n"])) == ['2["é","☃\\n"]']


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        (Packet(T.EVENT, "admin", ["x"]), "namespace"),
        (Packet(T.EVENT, "/a,b", ["x"]), "namespace"),
        (Packet(T.EVENT, data=["x"], id=-1), "ack id"),
        (Packet(T.EVENT, data=[]), "non-empty"),
        (Packet(T.EVENT, data=[1]), "string"),
        (Packet(T.EVENT, data="x"), "non-empty"),
        (Packet(T.ACK, data=[]), "ack id"),
        (Packet(T.ACK, data={}, id=1), "array"),
        (Packet(T.CONNECT, data=[1]), "CONNECT"),
        (Packet(T.CONNECT, data={"a": b"x"}), "binary"),
        (Packet(T.CONNECT_ERROR), "CONNECT_ERROR"),
        (Packet(T.DISCONNECT, data={}), "DISCONNECT"),
        (Packet(T.CONNECT, data={}, id=1), "ack id"),
        (Packet(T.EVENT, data=["x", float("nan")]), "JSON"),
    ],
)
def test_encode_rejects_undecodable_packets(packet: Packet, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sio.encode(packet)


def test_encode_rejects_non_json_data() -> None:
    with pytest.raises(TypeError):
        sio.encode(Packet(T.EVENT, data=["x", object()]))


# --- fast paths -----------------------------------------------------------------


def test_encode_event_text() -> None:
    assert sio.encode_event_text("hello", "1") == '2["hello",1]'
    assert sio.encode_event_text("hey", '"Jude"') == '2["hey","Jude"]'  # SIO v5 sample session
    assert sio.encode_event_text("foo", '"a",{"b":2}', ack_id=12) == '212["foo","a",{"b":2}]'
    assert sio.encode_event_text("foo", "") == '2["foo"]'
    assert sio.encode_event_text('we"ird\\', "null") == '2["we\\"ird\\\\",null]'
    assert sio.encode_event_text("é", "1") == '2["é",1]'


@given(
    st.text(),
    st.lists(st.integers() | st.text() | st.none() | st.booleans(), min_size=1),
    st.none() | st.integers(0, sio.MAX_ACK_ID),
)
def test_encode_event_text_matches_encode(event: str, args: list[Any], ack_id: int | None) -> None:
    payload = json.dumps(args, separators=(",", ":"), ensure_ascii=False)[1:-1]
    text = sio.encode_event_text(event, payload, ack_id)
    assert [text] == sio.encode(Packet(T.EVENT, data=[event, *args], id=ack_id))


def test_encode_ack_text() -> None:
    assert sio.encode_ack_text(12, "") == "312[]"  # SIO v5 doc
    assert sio.encode_ack_text(14, '"bar"') == '314["bar"]'  # SIO v5 doc
    assert Decoder().feed(sio.encode_ack_text(1, '{"ok":true}')) == Packet(
        T.ACK, data=[{"ok": True}], id=1
    )


# --- decoder --------------------------------------------------------------------


def test_decode_examples_from_brief() -> None:
    d = Decoder()
    assert d.feed('0{"token":"123"}') == Packet(T.CONNECT, data={"token": "123"})
    assert d.feed('2["hello",1]') == Packet(T.EVENT, data=["hello", 1])
    assert d.feed('212["bar"]') == Packet(T.EVENT, data=["bar"], id=12)
    assert d.feed('31["foo"]') == Packet(T.ACK, data=["foo"], id=1)
    assert d.feed('451-["hello",{"_placeholder":true,"num":0}]'[1:]) is None
    assert d.feed(b"\xff") == Packet(T.BINARY_EVENT, data=["hello", b"\xff"])


def test_decode_namespace_without_trailing_comma() -> None:
    assert Decoder().feed("0/admin") == Packet(T.CONNECT, "/admin")


def test_decode_zero_attachments() -> None:
    assert Decoder().feed('50-["x"]') == Packet(T.BINARY_EVENT, data=["x"])


def test_decode_repeated_placeholder() -> None:
    frames: list[str | bytes] = [
        '51-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]',
        b"z",
    ]
    assert _decode_all(frames).data == ["x", b"z", b"z"]


def test_decoder_accepts_bytearray_and_memoryview_attachments() -> None:
    d = Decoder()
    assert d.feed('52-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]') is None
    assert d.feed(bytearray(b"a")) is None  # type: ignore[arg-type]
    assert d.feed(memoryview(b"b")) == Packet(T.BINARY_EVENT, data=["x", b"a", b"b"])  # type: ignore[arg-type]


def test_bytes_without_pending_binary_packet() -> None:
    with pytest.raises(SocketIOProtocolError, match="no binary packet pending"):
        Decoder().feed(b"x")


def test_text_while_attachments_pending_resets() -> None:
    d = Decoder()
    assert d.feed('51-["x",{"_placeholder":true,"num":0}]') is None
    with pytest.raises(SocketIOProtocolError, match="pending"):
        d.feed('2["y"]')
    assert not d.pending
    assert d.feed('2["y"]') == Packet(T.EVENT, data=["y"])


def test_too_many_attachments() -> None:
    d = Decoder(max_attachments=2)
    with pytest.raises(TooManyAttachments):
        d.feed('53-["x"]')
    assert not d.pending
    assert d.feed('52-["x"]') is None
    with pytest.raises(TooManyAttachments):
        Decoder().feed('599999999999999999999-["x"]')


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        ("", "empty"),
        ("7", "unknown packet type"),
        ("a", "unknown packet type"),
        ("2", "non-empty array"),
        ("2[]", "non-empty array"),
        ("2[1]", "string"),
        ('2{"a":1}', "non-empty array"),
        ('2["x"', "invalid JSON"),
        ('2["x"]garbage', "invalid JSON"),
        ('2abc["x"]', "invalid JSON"),
        ('2["x",NaN]', "NaN"),
        ('2["x",Infinity]', "Infinity"),
        ("2[" * 100_000, "invalid JSON"),
        ('2["x",' + "1" * 5000 + "]", "invalid JSON"),
        ("3[]", "ack id"),
        ("31{}", "ACK data must be an array"),
        ("31", "ACK data must be an array"),
        ("0[]", "CONNECT data"),
        ('0"x"', "CONNECT data"),
        ("01", "ack id"),
        ("4", "CONNECT_ERROR"),
        ('4"Not authorized"', "CONNECT_ERROR"),
        ("1{}", "DISCONNECT"),
        ('5["x"]', "attachment count"),
        ('51["x"]', "attachment count"),
        ('5-["x"]', "attachment count"),
        ("51-", "non-empty array"),
        ('51-["x",{"_placeholder":true,"num":1}]', "out of range"),
        ('51-["x",{"_placeholder":true,"num":-1}]', "out of range"),
        ('51-["x",{"_placeholder":true}]', "num"),
        ('51-["x",{"_placeholder":true,"num":"0"}]', "num"),
        ('51-["x",{"_placeholder":true,"num":true}]', "num"),
        ('51-["x",{"_placeholder":true,"num":0.0}]', "num"),
        ('50-["x",{"_placeholder":true,"num":0}]', "out of range"),
        ('2123456789012345678["x"]', "ack id"),
        ('29007199254740992["x"]', "ack id too large"),
    ],
)
def test_decode_rejects_malformed(frame: str, match: str) -> None:
    d = Decoder()
    with pytest.raises(SocketIOProtocolError, match=match):
        d.feed(frame)
    assert not d.pending


# --- property tests ---------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_json_with_bytes = st.recursive(
    _json_scalars | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_namespaces = st.just("/") | st.text(
    alphabet=st.characters(blacklist_characters=","), max_size=10
).map(lambda s: "/" + s)
_ids = st.none() | st.integers(0, sio.MAX_ACK_ID)


def _has_bytes(value: Any) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, list):
        return any(_has_bytes(v) for v in value)
    if isinstance(value, dict):
        return any(_has_bytes(v) for v in value.values())
    return False


def _has_placeholder_lookalike(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_placeholder_lookalike(v) for v in value)
    if isinstance(value, dict):
        return value.get("_placeholder") is True or any(
            _has_placeholder_lookalike(v) for v in value.values()
        )
    return False


_packets = st.one_of(
    st.builds(
        Packet,
        st.just(T.EVENT),
        _namespaces,
        st.tuples(st.text(), st.lists(_json_with_bytes, max_size=4)).map(lambda t: [t[0], *t[1]]),
        _ids,
    ),
    st.builds(
        Packet,
        st.just(T.ACK),
        _namespaces,
        st.lists(_json_with_bytes, max_size=4),
        st.integers(0, sio.MAX_ACK_ID),
    ),
    st.builds(
        Packet, st.just(T.CONNECT), _namespaces, st.none() | st.dictionaries(st.text(), _json)
    ),
    st.builds(Packet, st.just(T.CONNECT_ERROR), _namespaces, st.dictionaries(st.text(), _json)),
    st.builds(Packet, st.just(T.DISCONNECT), _namespaces),
)


@settings(max_examples=300)
@given(_packets)
def test_round_trip(packet: Packet) -> None:
    # User data that looks like a placeholder is only meaningful inside binary packets.
    assume(not _has_placeholder_lookalike(packet.data))
    frames = sio.encode(packet)
    assert isinstance(frames[0], str)
    assert all(isinstance(f, bytes) for f in frames[1:])
    decoded = _decode_all(frames, Decoder(max_attachments=1000))
    expected_type = packet.type
    if _has_bytes(packet.data):
        expected_type = T.BINARY_EVENT if packet.type is T.EVENT else T.BINARY_ACK
    assert decoded == Packet(expected_type, packet.namespace, packet.data, packet.id)
    # Re-encoding the decoded packet gives the same frames.
    assert sio.encode(decoded) == frames


_fuzz_alphabet = st.sampled_from(list('0123456789-/,[]{}":_placeholdernum truefalse'))


@settings(max_examples=500)
@given(
    st.lists(
        st.text()
        | st.text(alphabet=_fuzz_alphabet)
        | st.binary(max_size=8)
        | st.sampled_from(
            [
                '51-["x",{"_placeholder":true,"num":0}]',
                '52-/a,3["x",{"_placeholder":true,"num":1}]',
                '2["x"]',
            ]
        ),
        max_size=6,
    ),
    st.integers(0, 3),
)
def test_decoder_only_raises_protocol_errors(frames: list[str | bytes], limit: int) -> None:
    decoder = Decoder(max_attachments=limit)
    for frame in frames:
        try:
            result = decoder.feed(frame)
        except SocketIOProtocolError:
            assert not decoder.pending
            continue
        if result is not None:
            assert isinstance(result, Packet)
            assert isinstance(result.type, PacketType)
            assert result.namespace.startswith("/")


def test_abandoned_binary_packet_keeps_its_ack_id() -> None:
    decoder = Decoder()
    assert decoder.feed('51-7["upload",{"_placeholder":true,"num":0}]') is None
    with pytest.raises(SocketIOProtocolError) as info:
        decoder.feed('2["next"]')
    assert info.value.ack_id == 7
    assert not decoder.pending
