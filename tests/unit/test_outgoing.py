"""``Outgoing``: one message, encoded once per transport, the same bytes for everyone.

Checked against the codecs the clients' side uses: the WebSocket frames decode (with
wsproto, as a client) to the Engine.IO packets, and the long-polling records join into
a payload that :func:`collabtrio.protocol.engineio.decode_payload` reads back.
"""

from __future__ import annotations

import json

import pytest
import wsproto
import wsproto.connection
import wsproto.events

from collabtrio.protocol import engineio, socketio
from collabtrio.protocol.jsonsafe import RawJSON, UnsafeJSON, dumps
from collabtrio.protocol.outgoing import Outgoing


def _client_messages(frames: bytes) -> list[str | bytes]:
    """What a WebSocket client reads from server frames."""
    conn = wsproto.connection.Connection(wsproto.ConnectionType.CLIENT)  # framing only
    conn.receive_data(frames)
    out: list[str | bytes] = []
    for event in conn.events():
        if isinstance(event, wsproto.events.TextMessage):
            out.append(event.data)
        elif isinstance(event, wsproto.events.BytesMessage):
            out.append(bytes(event.data))
    return out


def test_text_event_is_one_text_frame() -> None:
    out = Outgoing.event("op", {"room": "r", "seq": 3, "text": "héllo"})
    assert out.packet == '42["op",{"room":"r","seq":3,"text":"héllo"}]'
    assert out.attachments == ()
    assert _client_messages(out.ws_frames()) == [out.packet]


def test_binary_event_becomes_binary_event_with_attachments_in_order() -> None:
    out = Outgoing.event("yjs-update", {"room": "r", "a": b"\x00\x01", "b": [b"\xff"]})
    header, *rest = _client_messages(out.ws_frames())
    assert isinstance(header, str)
    decoder = socketio.Decoder()
    assert decoder.feed(header[1:]) is None
    packet = None
    for part in rest:
        packet = decoder.feed(part)
    assert packet is not None
    assert packet.type is socketio.PacketType.BINARY_EVENT
    assert packet.data == ["yjs-update", {"room": "r", "a": b"\x00\x01", "b": [b"\xff"]}]


@pytest.mark.parametrize("payload", [{"ok": True, "seq": 1}, {"ok": True, "update": b"\x02"}])
def test_ack_answers_its_id(payload: dict[str, object]) -> None:
    out = Outgoing.ack(17, payload)
    header, *attachments = _client_messages(out.ws_frames())
    assert isinstance(header, str)
    decoder = socketio.Decoder()
    packet = decoder.feed(header[1:])
    for part in attachments:
        packet = decoder.feed(part)
    assert packet is not None
    assert packet.id == 17
    assert packet.type in (socketio.PacketType.ACK, socketio.PacketType.BINARY_ACK)
    assert packet.data == [payload]


def test_encodings_are_computed_once_and_shared() -> None:
    out = Outgoing.event("presence", {"room": "r", "users": []})
    assert out.ws_frames() is out.ws_frames()
    assert out.polling_records() is out.polling_records()


def test_polling_records_make_a_payload_the_codec_reads_back() -> None:
    text = Outgoing.event("chat", {"text": "hi"})
    binary = Outgoing.event("yjs-update", {"update": b"\x00\x1e\xff"})
    ping = Outgoing.engineio(engineio.PING_FRAME)
    body = engineio.RECORD_SEPARATOR.join(
        r for out in (text, binary, ping) for r in out.polling_records())
    packets = engineio.decode_payload(body)
    assert [p.type for p in packets] == [engineio.PacketType.MESSAGE] * 3 + [
        engineio.PacketType.PING]
    assert packets[0].data == text.packet[1:]
    assert json.loads(str(packets[1].data)[3:])[1] == {"update": {"_placeholder": True,
                                                                  "num": 0}}
    assert packets[2].data == b"\x00\x1e\xff"


def test_socketio_and_engineio_packets_as_given() -> None:
    assert Outgoing.socketio('0{"sid":"x"}').packet == '40{"sid":"x"}'
    assert _client_messages(Outgoing.socketio("1").ws_frames()) == ["41"]
    assert _client_messages(Outgoing.engineio("6").ws_frames()) == ["6"]


def test_non_json_payload_is_refused() -> None:
    with pytest.raises(TypeError):
        Outgoing.event("op", {"when": object()})


@pytest.mark.parametrize("payload", [
    {"x": float("inf")}, {"x": float("-inf")}, {"x": float("nan")},
    {"name": "lone \ud800"}, {"\udfff": 1}, ["ok", {"deep": ["\ud83d"]}],
])
def test_nothing_built_for_the_wire_is_invalid_json(payload: object) -> None:
    """A message that would carry a non-finite number or a lone surrogate cannot be
    built: the error is raised where it was made, never as a broken frame later."""
    with pytest.raises(UnsafeJSON):
        Outgoing.event("presence", payload)
    with pytest.raises(UnsafeJSON):
        Outgoing.ack(1, payload)
    with pytest.raises(UnsafeJSON):
        Outgoing.event("bin", {"blob": b"\x00", "bad": payload})


def test_valid_astral_characters_and_big_integers_are_kept() -> None:
    out = Outgoing.event("chat", {"text": "🎉 ok", "n": 2**70})
    assert out.packet == '42["chat",{"text":"🎉 ok","n":1180591620717411303424}]'


def test_raw_json_is_embedded_as_it_is_in_events_and_acks() -> None:
    """Pre-encoded JSON (a room's presence list) goes out as the same message the
    decoded value would make, as the payload or as a value of a dict payload."""
    users = {"room": "r", "users": [{"userId": "ü", "cursor": {"x": 1.5}}], "connections": 1}
    raw = RawJSON(dumps(users))
    event = _client_messages(Outgoing.event("presence", raw).ws_frames())
    assert event == ["42" + json.dumps(["presence", users], separators=(",", ":"),
                                       ensure_ascii=False)]
    reply = {"ok": True, "room": "r", "presence": raw, "seq": 3}
    ack = Outgoing.ack(7, reply).packet
    assert ack.startswith("437[")
    assert json.loads(ack[3:]) == [{"ok": True, "room": "r", "presence": users, "seq": 3}]
    # a dict of raw values only, and raw values beside bytes (decoded for the binary path)
    assert json.loads(Outgoing.ack(1, {"p": raw}).packet[3:]) == [{"p": users}]
    binary = Outgoing.event("e", {"p": raw, "blob": b"\x00"})
    assert binary.attachments == (b"\x00",)
    body = json.loads(binary.packet[binary.packet.index("["):])
    assert body == ["e", {"p": users, "blob": {"_placeholder": True, "num": 0}}]
    assert RawJSON(dumps(users)).value() == users
