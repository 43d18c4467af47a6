"""The Socket.IO decoder's byte limit: a packet is measured as its frames arrive.

A packet's size is the Engine.IO message of its text (UTF-8, plus the ``4``) plus its
attachments so far. Past ``max_bytes`` it raises :class:`PacketTooLarge` at once and
drops the rest of its attachments as they arrive, so nothing past the limit is held.
"""

from __future__ import annotations

import pytest

from collabtrio.protocol.socketio import (
    Decoder,
    Packet,
    PacketTooLarge,
    PacketType,
    SocketIOProtocolError,
)

T = PacketType
PH = '{"_placeholder":true,"num":%d}'


def binary_text(count: int, ack_id: int | None = 7, name: str = "e") -> str:
    args = ",".join(PH % i for i in range(count))
    return f'5{count}-{"" if ack_id is None else ack_id}["{name}",[{args}]]'


def test_running_total_is_checked_at_each_attachment() -> None:
    text = binary_text(3)
    d = Decoder(max_bytes=len(text) + 1 + 1000)
    assert d.feed(text) is None
    assert d.feed(b"a" * 600) is None
    with pytest.raises(PacketTooLarge) as info:
        d.feed(b"b" * 600)  # 600 + 600 > 1000: refused now, not after the third
    exc = info.value
    assert (exc.type, exc.namespace, exc.ack_id, exc.event) == (T.BINARY_EVENT, "/", 7, "e")
    assert (exc.size, exc.complete) == (len(text) + 1 + 1200, False)
    assert isinstance(exc, SocketIOProtocolError)
    # the rest of its attachments are dropped as they arrive; nothing is held
    assert not d.pending
    assert d.discarding
    assert d._buffers == []
    assert d.feed(b"c" * 10_000) is None
    assert not d.discarding
    assert d.feed('2["next"]') == Packet(T.EVENT, data=["next"])


def test_last_attachment_past_the_limit_is_a_complete_refusal() -> None:
    text = binary_text(1)
    d = Decoder(max_bytes=len(text) + 1 + 10)
    assert d.feed(text) is None
    with pytest.raises(PacketTooLarge) as info:
        d.feed(b"x" * 11)
    assert info.value.complete
    assert not d.discarding
    assert not d.pending
    with pytest.raises(SocketIOProtocolError):
        d.feed(b"stray")  # an attachment nobody announced is still an error


def test_exactly_the_limit_is_accepted() -> None:
    text = binary_text(2)
    d = Decoder(max_bytes=len(text) + 1 + 20)
    assert d.feed(text) is None
    assert d.feed(b"a" * 10) is None
    packet = d.feed(b"b" * 10)
    assert packet is not None
    assert packet.data == ["e", [b"a" * 10, b"b" * 10]]


def test_binary_text_alone_past_the_limit_drops_every_attachment() -> None:
    text = binary_text(2, name="x" * 100)
    d = Decoder(max_bytes=50)
    with pytest.raises(PacketTooLarge) as info:
        d.feed(text)
    assert info.value.event == "x" * 100
    assert d.discarding
    assert d.feed(b"a") is None
    assert d.feed(b"b") is None
    assert not d.discarding


def test_plain_event_past_the_limit_is_refused_with_its_name_and_ack_id() -> None:
    d = Decoder(max_bytes=100)
    text = '212["broadcast","' + "y" * 200 + '"]'
    with pytest.raises(PacketTooLarge) as info:
        d.feed(text)
    assert (info.value.ack_id, info.value.event, info.value.complete) == (12, "broadcast", True)
    assert info.value.size == len(text) + 1
    assert d.feed('2["ok"]') == Packet(T.EVENT, data=["ok"])


def test_text_is_measured_in_utf8_bytes() -> None:
    # 30 three-byte characters: 30 characters, 90 bytes
    text = '51-["e","' + "€" * 30 + '",' + PH % 0 + "]"
    limit = len(text.encode()) + 1 + 5
    d = Decoder(max_bytes=limit)
    assert d.feed(text) is None
    with pytest.raises(PacketTooLarge):
        d.feed(b"z" * 6)  # counted by characters it would have fitted
    d = Decoder(max_bytes=len(text.encode()))  # the text alone, in bytes, is too big
    with pytest.raises(PacketTooLarge):
        d.feed(text)


def test_a_text_frame_ends_the_discarding() -> None:
    d = Decoder(max_bytes=40)
    with pytest.raises(PacketTooLarge):
        d.feed(binary_text(3, name="n" * 40))
    assert d.feed(b"a") is None
    # the client gave up on the rest: the next packet reads as usual
    assert d.feed("0") == Packet(T.CONNECT)
    with pytest.raises(SocketIOProtocolError):
        d.feed(b"b")


def test_discard_skips_the_rest_of_a_pending_packet() -> None:
    d = Decoder()
    assert d.feed(binary_text(3, ack_id=4)) is None
    assert d.feed(b"a") is None
    assert d.discard() == 4
    assert not d.pending
    assert d.discarding
    assert d.feed(b"b") is None
    assert d.feed(b"c") is None
    assert not d.discarding
    assert d.discard() is None  # nothing pending: nothing to do


def test_without_a_limit_nothing_changes() -> None:
    d = Decoder()
    assert d.feed(binary_text(1)) is None
    packet = d.feed(b"q" * 2_000_000)
    assert packet is not None
    assert packet.data == ["e", [b"q" * 2_000_000]]
