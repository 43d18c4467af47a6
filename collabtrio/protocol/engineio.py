"""Engine.IO v4 packet and payload codec (sans-IO).

Theory of operation
-------------------
Engine.IO is the transport layer under Socket.IO.  Every unit it carries is a
*packet*: a one-digit type (``0`` open … ``6`` noop) followed by optional data.

* **WebSocket transport** - one packet per WebSocket message.  Text packets are
  sent as a text frame ``"<type><data>"``.  Binary ``MESSAGE`` packets are sent
  as a binary frame holding the raw bytes only; since protocol v4 there is no
  type byte in front, so *every* binary frame is a ``MESSAGE``.
* **HTTP long-polling transport** - several packets are concatenated into one
  text body (a *payload*) separated by the ASCII record separator ``"\\x1e"``.
  Binary ``MESSAGE`` packets are written as ``"b"`` followed by the base64 of
  the bytes.

This module only converts between :class:`Packet` objects and those wire
strings/bytes; it performs no I/O and keeps no state.  Anything malformed that
came from the peer raises :class:`EngineIOProtocolError`; misuse by the caller
(e.g. binary data on a non-``MESSAGE`` packet) raises a plain :class:`ValueError`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "CLOSE_FRAME",
    "NOOP_FRAME",
    "PING_FRAME",
    "PONG_FRAME",
    "PROBE_PING",
    "PROBE_PONG",
    "RECORD_SEPARATOR",
    "UPGRADE_FRAME",
    "EngineIOProtocolError",
    "Packet",
    "PacketType",
    "decode_payload",
    "decode_ws",
    "encode_payload",
    "encode_ws",
    "open_packet",
]


class PacketType(IntEnum):
    """Engine.IO v4 packet types (the first character of a text packet)."""

    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


_TYPE_BY_CHAR: dict[str, PacketType] = {str(int(t)): t for t in PacketType}

RECORD_SEPARATOR = "\x1e"
"""Separator between packets in a long-polling payload."""

PING_FRAME: str = "2"
"""A bare ``PING`` packet (the server's heartbeat)."""
PONG_FRAME: str = "3"
"""A bare ``PONG`` packet (the client's heartbeat answer)."""
PROBE_PING: str = "2probe"
"""The ping a client sends on a new WebSocket to probe an upgrade."""
PROBE_PONG: str = "3probe"
"""The server's answer to :data:`PROBE_PING`."""
UPGRADE_FRAME: str = "5"
"""The ``UPGRADE`` packet a client sends to complete the switch to WebSocket."""
NOOP_FRAME: str = "6"
"""A ``NOOP`` packet, used to release a pending poll during an upgrade."""
CLOSE_FRAME: str = "1"
"""A ``CLOSE`` packet."""


class EngineIOProtocolError(ValueError):
    """The peer sent a malformed Engine.IO packet or payload."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One Engine.IO packet.

    ``data`` is a ``str`` for text packets; it may be ``bytes`` only for a
    binary ``MESSAGE`` packet.
    """

    type: PacketType
    data: str | bytes = ""


def _check_binary(packet: Packet) -> bytes | None:
    """Return the binary data of ``packet`` (or ``None`` for a text packet)."""
    if isinstance(packet.data, bytes | bytearray | memoryview):
        if packet.type is not PacketType.MESSAGE:
            raise ValueError(
                f"binary data is only allowed on MESSAGE packets, not {packet.type.name}"
            )
        return bytes(packet.data)
    return None


def encode_ws(packet: Packet) -> str | bytes:
    """Encode ``packet`` for the WebSocket transport.

    Returns the text of a text frame (``"<type><data>"``) or, for a binary
    ``MESSAGE``, the raw bytes of a binary frame (no type prefix in v4).
    """
    binary = _check_binary(packet)
    if binary is not None:
        return binary
    assert isinstance(packet.data, str)
    return f"{int(packet.type)}{packet.data}"


def _decode_text(text: str) -> Packet:
    """Decode one text packet ``"<type><data>"``."""
    if not text:
        raise EngineIOProtocolError("empty packet")
    ptype = _TYPE_BY_CHAR.get(text[0])
    if ptype is None:
        raise EngineIOProtocolError(f"unknown packet type {text[0]!r}")
    return Packet(ptype, text[1:])


def decode_ws(frame: str | bytes) -> Packet:
    """Decode one WebSocket message.

    A binary frame is always a ``MESSAGE`` carrying ``bytes``; a text frame must
    start with a type digit ``0``-``6``.
    """
    if isinstance(frame, bytes | bytearray | memoryview):
        return Packet(PacketType.MESSAGE, bytes(frame))
    return _decode_text(frame)


def encode_payload(packets: Sequence[Packet]) -> str:
    """Encode ``packets`` as one long-polling body.

    Text packets are written as ``"<type><data>"``, binary ``MESSAGE`` packets
    as ``"b<base64>"``, joined by ``"\\x1e"``.  Text data must not contain the
    separator (JSON text never does: control characters are always escaped).
    """
    if not packets:
        raise ValueError("a payload needs at least one packet")
    parts: list[str] = []
    for packet in packets:
        binary = _check_binary(packet)
        if binary is not None:
            parts.append("b" + base64.b64encode(binary).decode("ascii"))
            continue
        assert isinstance(packet.data, str)
        if RECORD_SEPARATOR in packet.data:
            raise ValueError("packet data must not contain the record separator '\\x1e'")
        parts.append(f"{int(packet.type)}{packet.data}")
    return RECORD_SEPARATOR.join(parts)


def decode_payload(body: str) -> list[Packet]:
    """Decode a long-polling body into its packets.

    Raises :class:`EngineIOProtocolError` on an empty body, an empty record, an
    unknown type or invalid base64.
    """
    if not body:
        raise EngineIOProtocolError("empty payload")
    packets: list[Packet] = []
    for record in body.split(RECORD_SEPARATOR):
        if record.startswith("b"):
            try:
                data = base64.b64decode(record[1:].encode("ascii"), validate=True)
            except (UnicodeEncodeError, binascii.Error) as exc:
                raise EngineIOProtocolError(f"invalid base64 in binary packet: {exc}") from None
            packets.append(Packet(PacketType.MESSAGE, data))
        else:
            packets.append(_decode_text(record))
    return packets


def open_packet(
    sid: str,
    *,
    upgrades: Sequence[str],
    ping_interval_ms: int,
    ping_timeout_ms: int,
    max_payload: int,
) -> str:
    """Return the full ``OPEN`` text packet ``"0{...}"`` of the handshake.

    The JSON object carries ``sid``, ``upgrades``, ``pingInterval``,
    ``pingTimeout`` and ``maxPayload``, in that order.
    """
    handshake = {
        "sid": sid,
        "upgrades": list(upgrades),
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    }
    return "0" + json.dumps(handshake, separators=(",", ":"), ensure_ascii=False)
