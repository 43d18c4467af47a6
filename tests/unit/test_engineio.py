"""Unit tests for the Engine.IO v4 codec."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collabtrio.protocol import engineio as eio
from collabtrio.protocol.engineio import EngineIOProtocolError, Packet, PacketType

# Vectors marked "EIO v4 doc" come from the Engine.IO protocol, 4th version
# (github.com/socketio/engine.io-protocol README, section "Packet encoding");
# vectors marked "SIO v5 doc" come from the Socket.IO protocol, 5th version
# (github.com/socketio/socket.io-protocol Readme.md, section "Sample session").


# --- websocket transport ---------------------------------------------------


def test_ws_text_message_vector() -> None:
    # EIO v4 doc, "WebSocket": 4hello => message packet type + "hello"
    assert eio.encode_ws(Packet(PacketType.MESSAGE, "hello")) == "4hello"
    assert eio.decode_ws("4hello") == Packet(PacketType.MESSAGE, "hello")


def test_ws_binary_message_is_raw_bytes() -> None:
    # EIO v4 doc, "WebSocket": binary payloads are sent as is (no type byte since v4).
    assert eio.encode_ws(Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")) == b"\x01\x02\x03\x04"
    assert eio.decode_ws(b"\x01\x02\x03\x04") == Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")
    assert eio.decode_ws(b"") == Packet(PacketType.MESSAGE, b"")


def test_ws_probe_and_control_frames() -> None:
    # EIO v4 doc, "Upgrade": client sends 2probe, server answers 3probe, client sends 5.
    assert eio.decode_ws(eio.PROBE_PING) == Packet(PacketType.PING, "probe")
    assert eio.encode_ws(Packet(PacketType.PONG, "probe")) == eio.PROBE_PONG == "3probe"
    assert eio.decode_ws(eio.UPGRADE_FRAME) == Packet(PacketType.UPGRADE)
    assert eio.encode_ws(Packet(PacketType.PING)) == eio.PING_FRAME == "2"
    assert eio.encode_ws(Packet(PacketType.PONG)) == eio.PONG_FRAME == "3"
    assert eio.encode_ws(Packet(PacketType.NOOP)) == eio.NOOP_FRAME == "6"
    assert eio.encode_ws(Packet(PacketType.CLOSE)) == eio.CLOSE_FRAME == "1"


@pytest.mark.parametrize("frame", ["", "7", "9hello", "x", "-1", "\x1e4", "٣"])
def test_ws_decode_rejects_bad_text(frame: str) -> None:
    with pytest.raises(EngineIOProtocolError):
        eio.decode_ws(frame)


def test_binary_data_only_on_message() -> None:
    with pytest.raises(ValueError, match="MESSAGE"):
        eio.encode_ws(Packet(PacketType.PING, b"x"))
    with pytest.raises(ValueError, match="MESSAGE"):
        eio.encode_payload([Packet(PacketType.PONG, b"x")])


_packet_types = st.sampled_from(list(PacketType))
_text_packets = st.builds(Packet, _packet_types, st.text())
_binary_packets = st.builds(Packet, st.just(PacketType.MESSAGE), st.binary())


@given(st.one_of(_text_packets, _binary_packets))
def test_ws_round_trip(packet: Packet) -> None:
    assert eio.decode_ws(eio.encode_ws(packet)) == packet


# --- long-polling payloads -------------------------------------------------


def test_payload_text_vector() -> None:
    # EIO v4 doc, "HTTP long-polling": 4hello\x1e2\x1e4world
    packets = [
        Packet(PacketType.MESSAGE, "hello"),
        Packet(PacketType.PING),
        Packet(PacketType.MESSAGE, "world"),
    ]
    assert eio.encode_payload(packets) == "4hello\x1e2\x1e4world"
    assert eio.decode_payload("4hello\x1e2\x1e4world") == packets


def test_payload_binary_vector() -> None:
    # EIO v4 doc, "HTTP long-polling": 4hello\x1ebAQIDBA== (AQIDBA== is <01 02 03 04>)
    packets = [Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")]
    assert eio.encode_payload(packets) == "4hello\x1ebAQIDBA=="
    assert eio.decode_payload("4hello\x1ebAQIDBA==") == packets


def test_payload_sample_session_vector() -> None:
    # SIO v5 doc, "Sample session", request n°5: 42["hello"]\x1e42["world"]
    assert eio.decode_payload('42["hello"]\x1e42["world"]') == [
        Packet(PacketType.MESSAGE, '2["hello"]'),
        Packet(PacketType.MESSAGE, '2["world"]'),
    ]


def test_single_packet_payload_has_no_separator() -> None:
    # SIO v5 doc, "Sample session", request n°2: body "40"
    assert eio.encode_payload([Packet(PacketType.MESSAGE, "0")]) == "40"
    assert eio.decode_payload("40") == [Packet(PacketType.MESSAGE, "0")]


@pytest.mark.parametrize(
    "body",
    ["", "\x1e", "4hello\x1e", "\x1e4hello", "4a\x1e\x1e4b", "8", "4hi\x1ez", "b!!!", "bAQI", "bé"],
)
def test_payload_decode_rejects_garbage(body: str) -> None:
    with pytest.raises(EngineIOProtocolError):
        eio.decode_payload(body)


def test_payload_encode_rejects_separator_in_text_and_empty_list() -> None:
    with pytest.raises(ValueError, match="separator"):
        eio.encode_payload([Packet(PacketType.MESSAGE, "a\x1eb")])
    with pytest.raises(ValueError, match="at least one"):
        eio.encode_payload([])


_payload_text_packets = st.builds(
    Packet, _packet_types, st.text(alphabet=st.characters(blacklist_characters="\x1e"))
)


@given(st.lists(st.one_of(_payload_text_packets, _binary_packets), min_size=1))
def test_payload_round_trip(packets: list[Packet]) -> None:
    assert eio.decode_payload(eio.encode_payload(packets)) == packets


@given(st.text())
def test_payload_decode_never_raises_other_errors(body: str) -> None:
    try:
        packets = eio.decode_payload(body)
    except EngineIOProtocolError:
        return
    assert packets


# --- handshake ---------------------------------------------------------------


def test_open_packet_vector() -> None:
    # SIO v5 doc, "Sample session", request n°1 (the Engine.IO handshake).
    frame = eio.open_packet(
        "lv_VI97HAXpY6yYWAAAC",
        upgrades=["websocket"],
        ping_interval_ms=25000,
        ping_timeout_ms=5000,
        max_payload=1000000,
    )
    assert frame == (
        '0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],'
        '"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}'
    )
    packet = eio.decode_ws(frame)
    assert packet.type is PacketType.OPEN
    assert isinstance(packet.data, str)
    assert json.loads(packet.data)["sid"] == "lv_VI97HAXpY6yYWAAAC"


def test_open_packet_no_upgrades() -> None:
    frame = eio.open_packet("s", upgrades=(), ping_interval_ms=1, ping_timeout_ms=2, max_payload=3)
    assert frame == '0{"sid":"s","upgrades":[],"pingInterval":1,"pingTimeout":2,"maxPayload":3}'
