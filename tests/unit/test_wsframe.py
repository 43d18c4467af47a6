"""Unit tests for pre-encoded WebSocket frames, parsed back with wsproto as a client."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from collabtrio.protocol.wsframe import binary_frame, close_frame, text_frame

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def _parse(data: bytes) -> list[tuple[Opcode, object]]:
    """Parse server frames the way a client does; join fragments of each message."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(data)
    messages: list[tuple[Opcode, object]] = []
    parts: list[object] = []
    opcode: Opcode | None = None
    for frame in client.received_frames():
        if frame.opcode is Opcode.CLOSE:
            messages.append((frame.opcode, frame.payload))
            continue
        if frame.opcode is not Opcode.CONTINUATION:
            opcode = frame.opcode
        parts.append(frame.payload)
        if frame.message_finished:
            assert opcode is not None
            joined: object = (
                "".join(str(p) for p in parts)
                if opcode is Opcode.TEXT
                else b"".join(bytes(p) for p in parts)  # type: ignore[call-overload]
            )
            messages.append((opcode, joined))
            parts = []
    assert not parts, "trailing incomplete message"
    return messages


def _parse_close(data: bytes) -> tuple[int, str]:
    """Parse ``data`` as exactly one close frame; return (code, reason)."""
    [(opcode, payload)] = _parse(data)
    assert opcode is Opcode.CLOSE
    assert isinstance(payload, tuple)
    code, reason = payload
    assert isinstance(code, int)
    assert isinstance(reason, str)
    return code, reason


@pytest.mark.parametrize("size", SIZES)
def test_text_frame_sizes(size: int) -> None:
    payload = "x" * size
    assert _parse(text_frame(payload)) == [(Opcode.TEXT, payload)]


@pytest.mark.parametrize("size", SIZES)
def test_binary_frame_sizes(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    assert _parse(binary_frame(payload)) == [(Opcode.BINARY, payload)]


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_header_length_encoding(size: int, header: bytes) -> None:
    # RFC 6455 section 5.2: FIN + opcode, unmasked 7/16/64-bit payload length.
    frame = text_frame(b"a" * size)
    assert frame[: len(header)] == header
    assert len(frame) == len(header) + size


def test_rfc6455_example_vectors() -> None:
    # RFC 6455 section 5.7: single-frame unmasked text "Hello", 256/65536-byte binary headers.
    assert text_frame("Hello") == b"\x81\x05\x48\x65\x6c\x6c\x6f"
    assert binary_frame(b"\x00" * 256)[:4] == b"\x82\x7e\x01\x00"
    assert binary_frame(b"\x00" * 65536)[:10] == b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"


def test_text_frame_utf8_and_bytes_payload() -> None:
    assert _parse(text_frame("héllo ☃ 🎉")) == [(Opcode.TEXT, "héllo ☃ 🎉")]
    assert text_frame("héllo") == text_frame("héllo".encode())


def test_frames_concatenate() -> None:
    data = text_frame('42["a",1]') + binary_frame(b"\x01\x02") + close_frame(1000)
    assert _parse(data) == [
        (Opcode.TEXT, '42["a",1]'),
        (Opcode.BINARY, b"\x01\x02"),
        (Opcode.CLOSE, (1000, "")),
    ]


def test_close_frame() -> None:
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert _parse(close_frame(1001, "going away")) == [(Opcode.CLOSE, (1001, "going away"))]
    assert _parse(close_frame(4000, "custom")) == [(Opcode.CLOSE, (4000, "custom"))]


def test_close_frame_truncates_reason_on_char_boundary() -> None:
    frame = close_frame(1000, "é" * 100)  # 200 bytes of UTF-8
    assert len(frame) <= 2 + 125
    code, reason = _parse_close(frame)
    assert code == 1000
    assert reason == "é" * 61  # 122 bytes; a half character is dropped
    assert len(close_frame(1000, "a" * 500)) == 2 + 125


def test_close_frame_rejects_bad_code() -> None:
    with pytest.raises(ValueError, match="close code"):
        close_frame(70000)
    with pytest.raises(ValueError, match="close code"):
        close_frame(-1)


@settings(max_examples=50)
@given(st.text(max_size=70000))
def test_text_frame_round_trip(payload: str) -> None:
    assert _parse(text_frame(payload)) == [(Opcode.TEXT, payload)]


@settings(max_examples=50)
@given(st.binary(max_size=70000))
def test_binary_frame_round_trip(payload: bytes) -> None:
    assert _parse(binary_frame(payload)) == [(Opcode.BINARY, payload)]


@given(st.integers(min_value=0, max_value=200_000))
@settings(max_examples=30)
def test_binary_frame_round_trip_sizes(size: int) -> None:
    payload = b"\xab" * size
    assert _parse(binary_frame(payload)) == [(Opcode.BINARY, payload)]


@given(st.integers(min_value=1000, max_value=1003) | st.integers(3000, 4999), st.text())
def test_close_frame_round_trip(code: int, reason: str) -> None:
    got_code, got_reason = _parse_close(close_frame(code, reason))
    assert got_code == code
    assert reason.startswith(got_reason)
    assert len(got_reason.encode()) <= 123
