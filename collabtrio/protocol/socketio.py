"""Socket.IO v5 packet codec (sans-IO): one cohesive codec, encoder and decoder together.

Theory of operation
-------------------
A Socket.IO packet travels inside an Engine.IO ``MESSAGE`` packet; this module
deals with the text *after* the Engine.IO ``"4"`` prefix.  The text layout is::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]

* ``type`` is one digit (:class:`PacketType`).
* ``<attachments>-`` is present only for ``BINARY_EVENT``/``BINARY_ACK``: the
  number of binary attachments that follow as separate (binary) Engine.IO
  messages.  In the JSON each attachment is replaced by the placeholder
  ``{"_placeholder":true,"num":<index>}``, numbered in depth-first order.
* ``<namespace>,`` is omitted for the main namespace ``"/"``.
* ``<ack id>`` is a decimal integer written right before the JSON.

:func:`encode` turns a :class:`Packet` into the text followed by its
attachments; :func:`encode_event_text` / :func:`encode_ack_text` are fast paths
for already-serialised payloads.  :class:`Decoder` is the only stateful piece:
it reassembles a binary packet from its text frame plus attachment frames.

Everything malformed that came from the peer raises
:class:`SocketIOProtocolError` (never anything else); misuse by the caller on
the encoding side raises :class:`ValueError` or :class:`TypeError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from . import jsonsafe

__all__ = [
    "MAX_ACK_ID",
    "Decoder",
    "Packet",
    "PacketTooLarge",
    "PacketType",
    "SocketIOProtocolError",
    "TooManyAttachments",
    "encode",
    "encode_ack_text",
    "encode_event_text",
]


class PacketType(IntEnum):
    """Socket.IO v5 packet types."""

    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


_TYPE_BY_CHAR: Final[dict[str, PacketType]] = {str(int(t)): t for t in PacketType}
_BINARY_TYPES: Final = frozenset({PacketType.BINARY_EVENT, PacketType.BINARY_ACK})
_EVENT_TYPES: Final = frozenset({PacketType.EVENT, PacketType.BINARY_EVENT})
_ACK_TYPES: Final = frozenset({PacketType.ACK, PacketType.BINARY_ACK})
_TO_BINARY: Final = {
    PacketType.EVENT: PacketType.BINARY_EVENT,
    PacketType.ACK: PacketType.BINARY_ACK,
}
_TO_PLAIN: Final = {
    PacketType.BINARY_EVENT: PacketType.EVENT,
    PacketType.BINARY_ACK: PacketType.ACK,
}
_DIGITS: Final = frozenset("0123456789")
MAX_ACK_ID: Final = 2**53 - 1
"""Largest ack id accepted or written (ids must survive a JavaScript number)."""
_MAX_ID_DIGITS: Final = 16
_MAX_COUNT_DIGITS: Final = 10


class SocketIOProtocolError(ValueError):
    """The peer sent a malformed Socket.IO packet (or frames in a bad order).

    ``ack_id`` is the packet's ack id when it could be read before the problem was
    found, so the error can still be answered as that event's ack.
    """

    def __init__(self, message: str, *, ack_id: int | None = None) -> None:
        super().__init__(message)
        self.ack_id = ack_id


class TooManyAttachments(SocketIOProtocolError):
    """A binary packet announced more attachments than the decoder allows."""


class PacketTooLarge(SocketIOProtocolError):
    """A packet (its text plus the attachments received so far) passed the byte limit.

    The packet is refused, not the connection: the decoder discards the rest of its
    attachments as they arrive. ``size`` is what had arrived when the limit was passed
    (the whole packet when ``complete``), ``limit`` the limit; ``type``, ``namespace``,
    ``ack_id`` and ``event`` (an event's name, when its JSON was read) say what to
    answer.
    """

    def __init__(self, message: str, *, ptype: PacketType, namespace: str,
                 ack_id: int | None, event: str | None, size: int, limit: int,
                 complete: bool) -> None:
        super().__init__(message, ack_id=ack_id)
        self.type = ptype
        self.namespace = namespace
        self.event = event
        self.size = size
        self.limit = limit
        self.complete = complete


@dataclass(frozen=True, slots=True)
class Packet:
    """One Socket.IO packet.

    ``data`` is: for ``EVENT`` a list ``[name, *args]``; for ``ACK`` a list of
    arguments; for ``CONNECT`` a dict or ``None``; for ``CONNECT_ERROR`` a dict;
    for ``DISCONNECT`` ``None``.  In binary packets ``data`` holds real ``bytes``
    objects where the wire had placeholders.  ``id`` is the ack id, if any.
    """

    type: PacketType
    namespace: str = "/"
    data: Any = None
    id: int | None = None


def _dumps(value: Any, default: Any = None) -> str:
    """Serialise ``value`` as compact JSON (no NaN/Infinity, no lone surrogates, non-ASCII
    kept); :class:`~collabtrio.protocol.jsonsafe.UnsafeJSON` (a ``ValueError``) else."""
    return jsonsafe.dumps(value, default)


def _data_problem(ptype: PacketType, data: Any, pid: int | None) -> str | None:
    """Describe why ``data``/``pid`` are invalid for ``ptype``, or ``None`` if valid."""
    if ptype in _EVENT_TYPES:
        if not isinstance(data, list) or not data:
            return "EVENT data must be a non-empty array"
        if not isinstance(data[0], str):
            return "EVENT name (first array item) must be a string"
    elif ptype in _ACK_TYPES:
        if not isinstance(data, list):
            return "ACK data must be an array"
        if pid is None:
            return "ACK packet without an ack id"
    else:
        if pid is not None:
            return f"{ptype.name} packet must not carry an ack id"
        if ptype is PacketType.CONNECT:
            if data is not None and not isinstance(data, dict):
                return "CONNECT data must be an object or absent"
        elif ptype is PacketType.CONNECT_ERROR:
            if not isinstance(data, dict):
                return "CONNECT_ERROR data must be an object"
        elif data is not None:
            return "DISCONNECT packet must not carry data"
    return None


def _header(ptype: PacketType, attachments: int | None, namespace: str, pid: int | None) -> str:
    """Everything of the text form that comes before the JSON."""
    parts = [str(int(ptype))]
    if attachments is not None:
        parts.append(f"{attachments}-")
    if namespace != "/":
        parts.append(namespace + ",")
    if pid is not None:
        parts.append(str(pid))
    return "".join(parts)


def encode(packet: Packet) -> list[str | bytes]:
    """Encode ``packet``: the Socket.IO text (without the Engine.IO ``"4"``) then attachments.

    ``bytes``/``bytearray``/``memoryview`` anywhere in ``data`` (inside lists
    and dict values) turn an ``EVENT`` into a ``BINARY_EVENT`` (``ACK`` into
    ``BINARY_ACK``): each is replaced by a placeholder, numbered depth-first,
    and appended to the result as ``bytes``.  A ``BINARY_*`` packet without any
    binary data is written as its plain counterpart.  Raises ``ValueError`` for
    a packet that could not be decoded on the other side (bad namespace,
    negative ack id, wrong data shape, binary in a non-event packet, NaN) and
    ``TypeError`` for data that is not JSON-serialisable.
    """
    namespace = packet.namespace
    if not namespace.startswith("/") or "," in namespace:
        raise ValueError(f"namespace must start with '/' and contain no ',': {namespace!r}")
    pid = packet.id
    if pid is not None and (isinstance(pid, bool) or not 0 <= pid <= MAX_ACK_ID):
        raise ValueError(f"ack id must be an integer in [0, 2**53): {pid!r}")
    ptype = _TO_PLAIN.get(packet.type, packet.type)
    problem = _data_problem(ptype, packet.data, pid)
    if problem is not None:
        raise ValueError(problem)

    if packet.data is None:
        return [_header(ptype, None, namespace, pid)]

    attachments: list[str | bytes] = []

    def placeholder(obj: object) -> object:
        # json calls this for every non-serialisable object, in document order.
        if isinstance(obj, bytes | bytearray | memoryview):
            attachments.append(bytes(obj))
            return {"_placeholder": True, "num": len(attachments) - 1}
        raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")

    body = _dumps(packet.data, placeholder)
    if not attachments:
        return [_header(ptype, None, namespace, pid) + body]
    binary_type = _TO_BINARY.get(ptype)
    if binary_type is None:
        raise ValueError(f"binary data is only allowed in EVENT and ACK packets, not {ptype.name}")
    return [_header(binary_type, len(attachments), namespace, pid) + body, *attachments]


def encode_event_text(event: str, payload_json: str, ack_id: int | None = None) -> str:
    """Fast path: the text of an ``EVENT`` to namespace ``"/"``.

    Returns ``'2<ack_id>["<event>",<payload_json>]'`` where ``payload_json`` is
    already-encoded JSON (one or more comma-separated values); an empty
    ``payload_json`` gives ``'2["<event>"]'``.  The event name is JSON-escaped.
    """
    name = _dumps(event)
    head = "2" if ack_id is None else f"2{ack_id}"
    if not payload_json:
        return f"{head}[{name}]"
    return f"{head}[{name},{payload_json}]"


def encode_ack_text(ack_id: int, payload_json: str) -> str:
    """Fast path: the text of an ``ACK`` to namespace ``"/"``: ``'3<ack_id>[<payload_json>]'``.

    ``payload_json`` is already-encoded JSON (may be empty for ``[]``).
    """
    return f"3{ack_id}[{payload_json}]"


def _is_placeholder(value: dict[str, Any]) -> bool:
    """Whether ``value`` is an attachment placeholder object."""
    return value.get("_placeholder") is True


def _placeholder_num(value: dict[str, Any], count: int) -> int:
    """The attachment index of a placeholder, validated against ``count``."""
    num = value.get("num")
    if not isinstance(num, int) or isinstance(num, bool):
        raise SocketIOProtocolError("binary placeholder without an integer 'num'")
    if not 0 <= num < count:
        raise SocketIOProtocolError(
            f"binary placeholder num {num} out of range for {count} attachment(s)"
        )
    return num


def _check_placeholders(data: Any, count: int) -> None:
    """Validate every placeholder in freshly parsed ``data`` (iteratively)."""
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if _is_placeholder(item):
                _placeholder_num(item, count)
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _fill_placeholders(data: Any, buffers: list[bytes]) -> Any:
    """Replace placeholders in ``data`` (owned by the decoder) with ``buffers``, in place."""
    count = len(buffers)
    if isinstance(data, dict) and _is_placeholder(data):
        return buffers[_placeholder_num(data, count)]
    stack: list[Any] = [data]
    while stack:
        container = stack.pop()
        if isinstance(container, list):
            keys: Any = range(len(container))
        elif isinstance(container, dict):
            keys = list(container)
        else:
            continue
        for key in keys:
            value = container[key]
            if isinstance(value, dict) and _is_placeholder(value):
                container[key] = buffers[_placeholder_num(value, count)]
            elif isinstance(value, list | dict):
                stack.append(value)
    return data


def _read_digits(
    text: str,
    start: int,
    limit: int,
    what: str,
    error: type[SocketIOProtocolError] = SocketIOProtocolError,
) -> tuple[int | None, int]:
    """Read a run of ASCII digits at ``start``; return (value or None, end index).

    More than ``limit`` digits raises ``error``.
    """
    end = start
    while end < len(text) and text[end] in _DIGITS:
        end += 1
    if end == start:
        return None, end
    if end - start > limit:
        raise error(f"{what} too long")
    return int(text[start:end]), end


def _text_size(text: str, limit: int | None) -> int:
    """The bytes of the Engine.IO message that carried ``text``: its UTF-8 length plus
    the ``"4"``. The character count stands in for a plain packet surely within
    ``limit`` (encoding every event just to measure it would cost more than the rest);
    a binary packet is measured exactly, since its attachments add up with it."""
    size = len(text) + 1
    if limit is not None and (size * 4 > limit or text[:1] in ("5", "6")):
        size = len(text.encode("utf-8", "surrogatepass")) + 1
    return size


class Decoder:
    """Incremental decoder for the Socket.IO frames of one connection.

    Feed it every Engine.IO ``MESSAGE`` payload in order: text frames (with the
    Engine.IO ``"4"`` already stripped) and binary frames.  It returns each
    complete :class:`Packet`, or ``None`` while a binary packet still waits for
    attachments (or while it discards them).  After it raised, no packet is pending.

    With ``max_bytes``, a packet is measured as it arrives: the Engine.IO message of
    its text (the UTF-8 text plus the ``"4"`` it travelled behind) plus each
    attachment received so far. Once that passes ``max_bytes`` the packet raises
    :class:`PacketTooLarge` and its remaining attachments are discarded as they
    arrive, so a binary packet never holds more than ``max_bytes`` (plus one frame)
    in memory. :meth:`discard` does the same on the caller's request (a packet it will
    not use).
    """

    __slots__ = ("_buffers", "_count", "_max_attachments", "_max_bytes", "_pending",
                 "_size", "_skip")

    def __init__(self, *, max_attachments: int = 10, max_bytes: int | None = None) -> None:
        """Create a decoder allowing at most ``max_attachments`` per binary packet and,
        with ``max_bytes``, at most that many bytes per packet."""
        self._max_attachments = max_attachments
        self._max_bytes = max_bytes
        self._pending: Packet | None = None
        self._count = 0
        self._buffers: list[bytes] = []
        self._size = 0
        self._skip = 0  # attachments of a refused packet still to discard

    @property
    def pending(self) -> bool:
        """Whether a binary packet is waiting for more attachment frames."""
        return self._pending is not None

    @property
    def discarding(self) -> bool:
        """Whether the attachments of a refused (or discarded) packet are being skipped."""
        return self._skip > 0

    def _reset(self) -> None:
        self._pending = None
        self._count = 0
        self._buffers = []
        self._size = 0
        self._skip = 0

    def feed(self, frame: str | bytes) -> Packet | None:
        """Feed one frame; return a complete packet or ``None`` if more frames are needed.

        Raises :class:`SocketIOProtocolError` (or :class:`TooManyAttachments`, or
        :class:`PacketTooLarge`) for anything malformed, out of order or too large.
        """
        if isinstance(frame, bytes | bytearray | memoryview):
            if self._skip:
                self._skip -= 1  # a refused packet's attachment: dropped unread
                return None
            pending = self._pending
            if pending is None:
                raise SocketIOProtocolError("binary frame received with no binary packet pending")
            self._size += len(frame)
            if self._max_bytes is not None and self._size > self._max_bytes:
                remaining = self._count - len(self._buffers) - 1
                size = self._size
                self._reset()
                self._skip = remaining
                raise self._too_large(pending, size, complete=remaining == 0)
            self._buffers.append(bytes(frame))
            if len(self._buffers) < self._count:
                return None
            return self._complete()
        if not isinstance(frame, str):
            self._reset()
            raise SocketIOProtocolError(f"frame must be str or bytes, not {type(frame).__name__}")
        # a text frame ends the skipping of a refused packet: it was answered already
        self._skip = 0
        if self._pending is not None:
            # the abandoned binary packet's ack id travels with the error, so that
            # event is still answered
            pending_id = self._pending.id
            self._reset()
            raise SocketIOProtocolError(
                "text frame received while binary attachments are pending", ack_id=pending_id
            )
        size = _text_size(frame, self._max_bytes)
        packet, count = self._parse(frame)
        if self._max_bytes is not None and size > self._max_bytes:
            self._skip = count if packet.type in _BINARY_TYPES else 0
            raise self._too_large(packet, size, complete=self._skip == 0)
        if packet.type not in _BINARY_TYPES or count == 0:
            return packet
        self._pending = packet
        self._count = count
        self._size = size
        return None

    def _too_large(self, packet: Packet, size: int, *, complete: bool) -> PacketTooLarge:
        limit = self._max_bytes
        assert limit is not None
        data = packet.data
        event = data[0] if packet.type in _EVENT_TYPES and isinstance(data, list) and data and (
            isinstance(data[0], str)) else None
        what = f"{size} bytes" if complete else f"at least {size} bytes"
        return PacketTooLarge(f"packet is {what}; the limit is {limit}", ptype=packet.type,
                              namespace=packet.namespace, ack_id=packet.id, event=event,
                              size=size, limit=limit, complete=complete)

    def abandon(self) -> int | None:
        """Drop a binary packet still waiting for attachments; return its ack id."""
        pending_id = self._pending.id if self._pending is not None else None
        self._reset()
        return pending_id

    def discard(self) -> int | None:
        """Drop the pending binary packet and skip the rest of its attachments as they
        arrive (for a packet the caller will not use); return its ack id."""
        pending = self._pending
        if pending is None:
            return None
        remaining = self._count - len(self._buffers)
        self._reset()
        self._skip = remaining
        return pending.id

    def _complete(self) -> Packet:
        pending = self._pending
        assert pending is not None
        buffers = self._buffers
        self._reset()
        data = _fill_placeholders(pending.data, buffers)
        return Packet(pending.type, pending.namespace, data, pending.id)

    def _parse(self, text: str) -> tuple[Packet, int]:
        """Parse a text frame into a packet (placeholders unresolved) and its attachment count."""
        if not text:
            raise SocketIOProtocolError("empty packet")
        ptype = _TYPE_BY_CHAR.get(text[0])
        if ptype is None:
            raise SocketIOProtocolError(f"unknown packet type {text[0]!r}")
        pos = 1
        count = 0
        if ptype in _BINARY_TYPES:
            value, pos = _read_digits(
                text, pos, _MAX_COUNT_DIGITS, "attachment count", TooManyAttachments
            )
            if value is None or pos >= len(text) or text[pos] != "-":
                raise SocketIOProtocolError("binary packet without '<count>-' attachment count")
            pos += 1
            count = value
            if count > self._max_attachments:
                raise TooManyAttachments(
                    f"{count} attachments announced, at most {self._max_attachments} allowed"
                )
        namespace = "/"
        if pos < len(text) and text[pos] == "/":
            comma = text.find(",", pos)
            if comma == -1:
                namespace, pos = text[pos:], len(text)
            else:
                namespace, pos = text[pos:comma], comma + 1
        pid, pos = _read_digits(text, pos, _MAX_ID_DIGITS, "ack id")
        if pid is not None and pid > MAX_ACK_ID:
            raise SocketIOProtocolError("ack id too large")
        data: Any = None
        rest = text[pos:]
        if rest:
            try:
                data = jsonsafe.loads(rest)
            except jsonsafe.UnsafeJSON as exc:
                raise SocketIOProtocolError(f"unsafe JSON payload: {exc}", ack_id=pid) from None
            except (ValueError, RecursionError) as exc:
                raise SocketIOProtocolError(f"invalid JSON payload: {exc}", ack_id=pid) from None
        problem = _data_problem(ptype, data, pid)
        if problem is not None:
            raise SocketIOProtocolError(problem, ack_id=pid)
        if ptype in _BINARY_TYPES:
            _check_placeholders(data, count)
        return Packet(ptype, namespace, data, pid), count
