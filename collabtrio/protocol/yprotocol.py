"""y-protocols wire format, as y-websocket speaks it (sans-IO).

Theory of operation
-------------------
A Yjs client on y-websocket sends binary WebSocket messages; each one is exactly
one y-protocols *message*.  Everything is built from three lib0 primitives:

* **varUint** - an unsigned integer, 7 bits per byte, least significant group
  first, the high bit set on every byte but the last (LEB128).  lib0 reads into a
  JavaScript number, so values stop at ``2**53 - 1``; 8 bytes already hold 56 bits,
  so a longer varint is never valid.  Non-minimal forms (``80 00`` for 0) are
  accepted, as lib0 accepts them; the encoder always writes the minimal form.
* **varUint8Array** - a varUint length, then that many bytes.
* **varString** - a varUint8Array holding UTF-8.  lib0 decodes with a fatal
  ``TextDecoder`` that keeps a leading BOM, which is what strict ``utf-8`` does.

A message starts with a varUint message type (y-websocket's numbering):

==========  ====================================================================
``0`` sync  a varUint sub-type, then a varUint8Array: ``0`` step 1 (a state
            vector), ``1`` step 2 (an update answering a step 1), ``2`` an update
``1``       awareness: a varUint8Array holding an awareness update (below)
``2``       auth: a varUint sub-type, only ``0`` (permission denied), then a
            varString, the reason
``3``       query-awareness: nothing else; the peer answers with its states
==========  ====================================================================

An *awareness update* is a varUint count, then per entry the varUint client id,
the varUint clock and a varString holding the state as JSON (``null`` when the
client is gone).  A receiver keeps an entry when its clock is newer than the one it
knows, or equal with a ``null`` state (that is how a removal is accepted, see
:func:`removal_update`).

This module only frames bytes: sync payloads (state vectors and updates) stay
opaque, as does the awareness update inside an :class:`AwarenessMessage` until
:func:`decode_awareness` is called on it.  Nothing is read past the input and
nothing is allocated beyond its length.  Anything malformed from the peer
(truncated or oversized varints, lengths past the end, unknown types, trailing
bytes, invalid UTF-8, a state that is not JSON) raises :class:`YProtocolError`;
misuse by the caller (a negative integer, a state that is not JSON) raises a
plain :class:`ValueError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeAlias

__all__ = [
    "AUTH_PERMISSION_DENIED",
    "MAX_VAR_UINT",
    "MAX_VAR_UINT_BYTES",
    "MESSAGE_AUTH",
    "MESSAGE_AWARENESS",
    "MESSAGE_QUERY_AWARENESS",
    "MESSAGE_SYNC",
    "SYNC_STEP1",
    "SYNC_STEP2",
    "SYNC_UPDATE",
    "AuthMessage",
    "AwarenessEntry",
    "AwarenessMessage",
    "Message",
    "QueryAwareness",
    "SyncStep1",
    "SyncStep2",
    "SyncUpdate",
    "YProtocolError",
    "decode_awareness",
    "decode_message",
    "decode_state_vector",
    "encode_awareness",
    "encode_message",
    "read_var_bytes",
    "read_var_string",
    "read_var_uint",
    "removal_update",
    "write_var_bytes",
    "write_var_string",
    "write_var_uint",
]

MESSAGE_SYNC = 0
"""Message type of a sync message (y-websocket ``messageSync``)."""
MESSAGE_AWARENESS = 1
"""Message type of an awareness message (y-websocket ``messageAwareness``)."""
MESSAGE_AUTH = 2
"""Message type of an auth message (y-websocket ``messageAuth``)."""
MESSAGE_QUERY_AWARENESS = 3
"""Message type of a query-awareness message (y-websocket ``messageQueryAwareness``)."""

SYNC_STEP1 = 0
"""Sync sub-type: step 1, a state vector (y-protocols ``messageYjsSyncStep1``)."""
SYNC_STEP2 = 1
"""Sync sub-type: step 2, the update a step 1 asked for (``messageYjsSyncStep2``)."""
SYNC_UPDATE = 2
"""Sync sub-type: an update (y-protocols ``messageYjsUpdate``)."""

AUTH_PERMISSION_DENIED = 0
"""Auth sub-type: permission denied (y-protocols ``messagePermissionDenied``)."""

MAX_VAR_UINT = 2**53 - 1
"""The largest varUint lib0 reads exactly (``Number.MAX_SAFE_INTEGER``)."""
MAX_VAR_UINT_BYTES = 8
"""The longest varUint accepted: 8 bytes carry 56 bits, more than 53 need."""


class YProtocolError(ValueError):
    """The peer sent a malformed y-protocols message or awareness update."""


def _fail(message: str) -> NoReturn:
    raise YProtocolError(message)


# --- lib0 primitives ---------------------------------------------------------


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """Read a varUint at ``pos``; return it and the position after it.

    Raises :class:`YProtocolError` when the input ends inside the varint, when it
    is longer than :data:`MAX_VAR_UINT_BYTES` or when its value is above
    :data:`MAX_VAR_UINT`.
    """
    if pos < 0:
        raise ValueError(f"negative position {pos}")
    end = len(data)
    num = 0
    shift = 0
    for i in range(pos, min(end, pos + MAX_VAR_UINT_BYTES)):
        byte = data[i]
        num |= (byte & 0x7F) << shift
        if byte < 0x80:
            if num > MAX_VAR_UINT:
                _fail(f"varUint at {pos} is above 2**53 - 1")
            return num, i + 1
        shift += 7
    if end - pos >= MAX_VAR_UINT_BYTES:
        _fail(f"varUint at {pos} is longer than {MAX_VAR_UINT_BYTES} bytes")
    _fail(f"truncated varUint at {pos}")


def write_var_uint(n: int) -> bytes:
    """Encode ``n`` (``0`` to :data:`MAX_VAR_UINT`) as a minimal varUint."""
    if not 0 <= n <= MAX_VAR_UINT:
        raise ValueError(f"varUint out of range: {n}")
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    """Read a varUint8Array at ``pos``; return its bytes and the position after it.

    Raises :class:`YProtocolError` when the length is malformed or runs past the
    end of ``data`` (checked before anything is copied).
    """
    length, start = read_var_uint(data, pos)
    if length > len(data) - start:
        _fail(f"length {length} at {pos} runs past the end ({len(data) - start} bytes left)")
    return bytes(data[start : start + length]), start + length


def write_var_bytes(payload: bytes) -> bytes:
    """Encode ``payload`` as a varUint8Array (its length, then the bytes)."""
    return write_var_uint(len(payload)) + bytes(payload)


def read_var_string(data: bytes, pos: int) -> tuple[str, int]:
    """Read a varString at ``pos``; return the text and the position after it.

    Raises :class:`YProtocolError` on a malformed length or invalid UTF-8 (lone
    surrogates included, as lib0's fatal ``TextDecoder`` does).
    """
    raw, after = read_var_bytes(data, pos)
    try:
        return raw.decode("utf-8"), after
    except UnicodeDecodeError as exc:
        _fail(f"invalid UTF-8 in varString at {pos}: {exc.reason}")


def write_var_string(text: str) -> bytes:
    """Encode ``text`` as a varString (UTF-8 in a varUint8Array).

    Raises :class:`ValueError` on a lone surrogate, which has no UTF-8 form.
    """
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string has no UTF-8 form: {exc.reason}") from None
    return write_var_bytes(raw)


def _check_end(data: bytes, pos: int, what: str) -> None:
    if pos != len(data):
        _fail(f"{len(data) - pos} trailing byte(s) after {what}")


def _bytes(data: bytes) -> bytes:
    # a memoryview or bytearray would make the slices handed out views or mutable
    return data if type(data) is bytes else bytes(data)


# --- messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """Sync step 1: the sender's encoded state vector; answer with :class:`SyncStep2`."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """Sync step 2: the encoded update holding what the step 1 sender lacked."""

    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """A document update (an encoded Yjs update, v1 encoding)."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessMessage:
    """An awareness update, still encoded; read it with :func:`decode_awareness`."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AuthMessage:
    """Auth: permission denied, with a human-readable reason (y-protocols auth.js)."""

    denied_reason: str


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """Query-awareness: asks the peer to send every awareness state it knows."""


Message: TypeAlias = (
    SyncStep1 | SyncStep2 | SyncUpdate | AwarenessMessage | AuthMessage | QueryAwareness
)
"""Any one y-protocols message."""

_SYNC_TYPES: dict[int, type[SyncStep1] | type[SyncStep2] | type[SyncUpdate]] = {
    SYNC_STEP1: SyncStep1,
    SYNC_STEP2: SyncStep2,
    SYNC_UPDATE: SyncUpdate,
}


def decode_message(data: bytes) -> Message:
    """Decode one y-protocols message (one WebSocket binary message).

    Sync payloads and the awareness update are returned as bytes, unparsed.
    Raises :class:`YProtocolError` on an empty message, an unknown message type
    or sub-type, a malformed field or bytes left after the message.
    """
    data = _bytes(data)
    if not data:
        _fail("empty message")
    mtype, pos = read_var_uint(data, 0)
    msg: Message
    if mtype == MESSAGE_SYNC:
        sub, pos = read_var_uint(data, pos)
        cls = _SYNC_TYPES.get(sub)
        if cls is None:
            _fail(f"unknown sync message type {sub}")
        payload, pos = read_var_bytes(data, pos)
        msg = cls(payload)
    elif mtype == MESSAGE_AWARENESS:
        update, pos = read_var_bytes(data, pos)
        msg = AwarenessMessage(update)
    elif mtype == MESSAGE_AUTH:
        sub, pos = read_var_uint(data, pos)
        if sub != AUTH_PERMISSION_DENIED:
            _fail(f"unknown auth message type {sub}")
        reason, pos = read_var_string(data, pos)
        msg = AuthMessage(reason)
    elif mtype == MESSAGE_QUERY_AWARENESS:
        msg = QueryAwareness()
    else:
        _fail(f"unknown message type {mtype}")
    _check_end(data, pos, "the message")
    return msg


def encode_message(msg: Message) -> bytes:
    """Encode ``msg`` as one y-protocols message (one WebSocket binary message)."""
    if isinstance(msg, SyncStep1):
        return bytes((MESSAGE_SYNC, SYNC_STEP1)) + write_var_bytes(msg.state_vector)
    if isinstance(msg, SyncStep2):
        return bytes((MESSAGE_SYNC, SYNC_STEP2)) + write_var_bytes(msg.update)
    if isinstance(msg, SyncUpdate):
        return bytes((MESSAGE_SYNC, SYNC_UPDATE)) + write_var_bytes(msg.update)
    if isinstance(msg, AwarenessMessage):
        return bytes((MESSAGE_AWARENESS,)) + write_var_bytes(msg.update)
    if isinstance(msg, AuthMessage):
        return bytes((MESSAGE_AUTH, AUTH_PERMISSION_DENIED)) + write_var_string(msg.denied_reason)
    if isinstance(msg, QueryAwareness):
        return bytes((MESSAGE_QUERY_AWARENESS,))
    raise TypeError(f"not a y-protocols message: {msg!r}")


# --- awareness ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's entry in an awareness update.

    ``state`` is the JSON text exactly as it travels (``"null"`` when the client
    is removed), so relaying an entry reproduces its bytes.
    """

    client_id: int
    clock: int
    state: str


def _reject_constant(name: str) -> NoReturn:
    # Python's json reads NaN and Infinity; JSON.parse does not
    raise ValueError(f"{name} is not JSON")


def _is_json(text: str) -> bool:
    try:
        # parse_int=float: the text is kept, not the value, and float() has no digit limit
        json.loads(text, parse_constant=_reject_constant, parse_int=float)
    except (ValueError, RecursionError):
        return False
    return True


def decode_awareness(update: bytes) -> list[AwarenessEntry]:
    """Decode an awareness update (the payload of an :class:`AwarenessMessage`).

    Raises :class:`YProtocolError` on a malformed field, a state that is not JSON
    (as ``JSON.parse`` reads it; nesting too deep for Python's parser counts too)
    or bytes left after the last entry.
    """
    update = _bytes(update)
    count, pos = read_var_uint(update, 0)
    # an entry takes at least three bytes: rejects a huge count before any work
    if count > (len(update) - pos) // 3:
        _fail(f"{count} awareness entries cannot fit in {len(update) - pos} bytes")
    entries: list[AwarenessEntry] = []
    for _ in range(count):
        client_id, pos = read_var_uint(update, pos)
        clock, pos = read_var_uint(update, pos)
        at = pos
        state, pos = read_var_string(update, pos)
        if not _is_json(state):
            _fail(f"awareness state at {at} is not JSON")
        entries.append(AwarenessEntry(client_id, clock, state))
    _check_end(update, pos, "the awareness update")
    return entries


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Decode a state vector (``Y.encodeStateVector``, ``pycrdt.Doc.get_state()``) as
    ``{client id: clock}``. Raises :class:`YProtocolError` on a malformed field or bytes
    left after the last entry."""
    data = _bytes(data)
    count, pos = read_var_uint(data, 0)
    # an entry takes at least two bytes: rejects a huge count before any work
    if count > (len(data) - pos) // 2:
        _fail(f"{count} state vector entries cannot fit in {len(data) - pos} bytes")
    out: dict[int, int] = {}
    for _ in range(count):
        client_id, pos = read_var_uint(data, pos)
        out[client_id], pos = read_var_uint(data, pos)
    _check_end(data, pos, "the state vector")
    return out


def encode_awareness(entries: Sequence[AwarenessEntry]) -> bytes:
    """Encode ``entries`` as an awareness update, in order.

    Raises :class:`ValueError` when an id or clock is out of range or a state is
    not JSON text.
    """
    parts = [write_var_uint(len(entries))]
    for entry in entries:
        if not _is_json(entry.state):
            raise ValueError(f"awareness state of client {entry.client_id} is not JSON")
        parts.append(write_var_uint(entry.client_id))
        parts.append(write_var_uint(entry.clock))
        parts.append(write_var_string(entry.state))
    return b"".join(parts)


def removal_update(entries: Iterable[tuple[int, int]]) -> bytes:
    """The awareness update that removes each ``(client_id, clock)`` pair.

    ``clock`` is the last clock known for the client, and the update carries it
    unchanged with a ``null`` state: that is what y-protocols'
    ``removeAwarenessStates`` followed by ``encodeAwarenessUpdate`` sends for a
    remote client (y-websocket's server does this when a connection closes), and
    receivers accept a ``null`` state at an equal clock as a removal.  Only the
    awareness' own client id gets ``clock + 1`` there; to remove your own state that
    way, pass ``clock + 1``.  Not bumping a remote client's clock matters: its own
    next update carries ``clock + 1`` and would otherwise be ignored as stale.
    """
    return encode_awareness([AwarenessEntry(cid, clock, "null") for cid, clock in entries])
