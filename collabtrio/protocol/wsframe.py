"""Pre-encoded server-to-client WebSocket frames (RFC 6455, section 5.2).

Theory of operation
-------------------
A broadcast to a room sends the same message to many sockets.  Rather than
letting each connection frame the message again, the server encodes the frame
once with these functions and writes the identical bytes to every member's
stream.  That is valid because frames sent by a server are never masked
(RFC 6455 section 5.1) and we negotiate no extensions, so a frame depends only
on its opcode and payload.

Every frame is a single, final frame (FIN set, RSV bits clear) with the
header::

    byte 0: 0x80 | opcode
    byte 1: payload length if < 126, else 126 (+ 2-byte length) or 127 (+ 8-byte length)

followed by the payload.  Lengths are big-endian.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "OPCODE_BINARY",
    "OPCODE_CLOSE",
    "OPCODE_TEXT",
    "binary_frame",
    "close_frame",
    "text_frame",
]

OPCODE_TEXT: Final = 0x1
"""RFC 6455 opcode of a text frame."""
OPCODE_BINARY: Final = 0x2
"""RFC 6455 opcode of a binary frame."""
OPCODE_CLOSE: Final = 0x8
"""RFC 6455 opcode of a close frame."""
_FIN: Final = 0x80
_MAX_CLOSE_REASON: Final = 123  # control frames carry at most 125 bytes; 2 are the code


def _frame(opcode: int, payload: bytes) -> bytes:
    """Build one unmasked final frame with ``opcode`` around ``payload``."""
    length = len(payload)
    first = _FIN | opcode
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def text_frame(payload: str | bytes) -> bytes:
    """A text frame (opcode 0x1); a ``str`` payload is UTF-8 encoded.

    A ``bytes`` payload is sent as is and must already be valid UTF-8.
    """
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    return _frame(OPCODE_TEXT, data)


def binary_frame(payload: bytes) -> bytes:
    """A binary frame (opcode 0x2) carrying ``payload``."""
    return _frame(OPCODE_BINARY, bytes(payload))


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame (opcode 0x8): 2-byte status ``code`` then the UTF-8 ``reason``.

    The reason is truncated to 123 bytes, never in the middle of a character.
    Raises ``ValueError`` if ``code`` does not fit in two bytes.
    """
    if not 0 <= code <= 0xFFFF:
        raise ValueError(f"close code out of range: {code}")
    encoded = reason.encode("utf-8")
    if len(encoded) > _MAX_CLOSE_REASON:
        encoded = encoded[:_MAX_CLOSE_REASON].decode("utf-8", errors="ignore").encode("utf-8")
    return _frame(OPCODE_CLOSE, struct.pack("!H", code) + encoded)
