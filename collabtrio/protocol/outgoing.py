"""``Outgoing``: one server-to-client message, serialised once, encoded per transport on demand.

Theory of operation: a broadcast reaches many members, possibly over different
transports. The room builds one :class:`Outgoing` (the Engine.IO text packet, e.g.
``42["op",{...}]``, and the binary attachments that belong to it) and hands the same
object to every member. Each transport asks for its own encoding, which is computed
the first time and cached on the object, so a broadcast to 1,000 WebSocket members is
JSON-encoded once and framed once, and every member's outbox gets the same bytes:

- :meth:`Outgoing.ws_frames`: the WebSocket frames (a text frame, then one binary
  frame per attachment) joined into one ``bytes``, ready for the outbox;
- :meth:`Outgoing.polling_records`: the long-polling records (``"<packet>"``, then
  ``"b<base64>"`` per attachment), to be joined with ``\\x1e`` into a payload.

Attachments always travel with their packet: the encodings are one unit, never split.

JSON: compact, non-ASCII kept, and always valid (a non-finite number or a lone
surrogate raises :class:`~collabtrio.protocol.jsonsafe.UnsafeJSON` when the message is
built, never a broken frame later); payloads holding ``bytes`` become ``BINARY_EVENT`` /
``BINARY_ACK`` packets with placeholders (:func:`collabtrio.protocol.socketio.encode`).
"""

from __future__ import annotations

import base64
from typing import Any, Final

from . import jsonsafe, socketio, wsframe

__all__ = ["Outgoing"]

_dumps: Final = jsonsafe.dumps_message


class Outgoing:
    """An Engine.IO text packet and its binary attachments (see the module docstring).

    Build one with :meth:`event`, :meth:`ack`, :meth:`socketio` or :meth:`engineio`;
    instances are immutable once built (the cached encodings are derived values).
    """

    __slots__ = ("_polling", "_ws", "attachments", "packet", "yws")

    def __init__(self, packet: str, attachments: tuple[bytes, ...] = ()) -> None:
        self.packet = packet
        """The Engine.IO text packet, type digit included (``"42[...]"``, ``"2"``)."""
        self.attachments = attachments
        """Binary Engine.IO ``MESSAGE`` packets that follow ``packet`` (Socket.IO
        attachments, in placeholder order)."""
        self._ws: bytes | None = None
        self._polling: tuple[str, ...] | None = None
        self.yws: bytes | None = None
        """The same message for y-websocket peers, as one framed WebSocket binary
        message (a y-protocols message), or None: those peers get nothing else."""

    # -- constructors --------------------------------------------------------------------

    @classmethod
    def event(cls, event: str, payload: Any) -> Outgoing:
        """A Socket.IO ``EVENT`` (or ``BINARY_EVENT``) ``[event, payload]`` to namespace ``/``.

        Raises ``TypeError``/``ValueError`` (``UnsafeJSON``) for a payload that is not
        storable JSON (or bytes). The payload may be (or hold, as a ``dict``'s values)
        :class:`~collabtrio.protocol.jsonsafe.RawJSON`, embedded as it is.
        """
        try:
            text = socketio.encode_event_text(event, _dumps(payload))
        except TypeError:
            payload = jsonsafe.resolve_raw(payload)
            packet = socketio.Packet(socketio.PacketType.EVENT, data=[event, payload])
            return cls._from_parts(socketio.encode(packet))
        return cls("4" + text)

    @classmethod
    def ack(cls, ack_id: int, payload: Any) -> Outgoing:
        """A Socket.IO ``ACK`` (or ``BINARY_ACK``) answering ``ack_id`` with ``[payload]``
        (which may hold :class:`~collabtrio.protocol.jsonsafe.RawJSON`, as for
        :meth:`event`)."""
        try:
            text = socketio.encode_ack_text(ack_id, _dumps(payload))
        except TypeError:
            payload = jsonsafe.resolve_raw(payload)
            packet = socketio.Packet(socketio.PacketType.ACK, data=[payload], id=ack_id)
            return cls._from_parts(socketio.encode(packet))
        return cls("4" + text)

    @classmethod
    def socketio(cls, text: str) -> Outgoing:
        """A Socket.IO packet given as its text (``"0{...}"``, ``"1"``), without attachments."""
        return cls("4" + text)

    @classmethod
    def engineio(cls, packet: str) -> Outgoing:
        """A bare Engine.IO packet (``"2"`` ping, ``"6"`` noop, ``"3probe"``)."""
        return cls(packet)

    @classmethod
    def yws_only(cls, message: bytes) -> Outgoing:
        """A y-protocols message for y-websocket peers alone (Socket.IO peers are never
        handed one)."""
        return cls("").with_yws(message)

    def with_yws(self, message: bytes) -> Outgoing:
        """Attach the y-protocols ``message`` y-websocket peers get instead; ``self``."""
        self.yws = wsframe.binary_frame(message)
        return self

    @classmethod
    def _from_parts(cls, parts: list[str | bytes]) -> Outgoing:
        head = parts[0]
        assert isinstance(head, str)
        return cls("4" + head, tuple(p for p in parts[1:] if isinstance(p, bytes)))

    # -- encodings -----------------------------------------------------------------------

    def ws_frames(self) -> bytes:
        """The WebSocket frames of this message as one ``bytes`` (computed once)."""
        frames = self._ws
        if frames is None:
            frames = wsframe.text_frame(self.packet)
            if self.attachments:
                frames += b"".join(wsframe.binary_frame(a) for a in self.attachments)
            self._ws = frames
        return frames

    def polling_records(self) -> tuple[str, ...]:
        """The long-polling records of this message (computed once).

        Join the records of consecutive messages with ``"\\x1e"`` to make a payload.
        """
        records = self._polling
        if records is None:
            records = (self.packet, *(
                "b" + base64.b64encode(a).decode("ascii") for a in self.attachments
            ))
            self._polling = records
        return records

    def __repr__(self) -> str:
        shown = self.packet if len(self.packet) <= 60 else self.packet[:57] + "..."
        extra = f", {len(self.attachments)} attachments" if self.attachments else ""
        return f"Outgoing({shown!r}{extra})"
