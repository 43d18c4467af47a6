"""What a room needs of a member: the ``Peer`` protocol.

Rooms never see sockets, frames or transports. A member is a :class:`Peer`: it has a
socket id and an identity, a room can hand it an
:class:`~collabtrio.protocol.outgoing.Outgoing` (the same object for every member of a
broadcast, encoded once per transport), and it answers commands (acks, errors,
confirmations) in whatever way its client expects. The application's per-client
state implements it for Socket.IO clients; other kinds of peers (a y-websocket
provider, a node of a cluster) implement it their own way.

Rules a peer keeps: :meth:`Peer.send` never blocks and never awaits (it queues, and a
peer that cannot keep up disconnects itself); ``rooms`` is maintained by the rooms
themselves (``peer.rooms[room.id] is room`` exactly while the peer is a member).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Protocol

from ..auth.tokens import Identity
from ..errors import CollabError
from ..protocol.outgoing import Outgoing

__all__ = ["Peer"]


class Peer(Protocol):
    """A member of rooms (see the module docstring)."""

    @property
    def sid(self) -> str:
        """The socket id other members see as ``socketId``."""

    @property
    def identity(self) -> Identity:
        """Who this peer is (set before it can join anything)."""

    @property
    def rooms(self) -> MutableMapping[str, Any]:
        """Room id -> room, for the rooms this peer is in (kept by the rooms)."""

    pending_joins: int
    """Joins queued in rooms and not answered yet (counted against the room limit)."""

    @property
    def close_reason(self) -> str | None:
        """Why the peer is going away, once it is; rooms skip answering it then."""

    def send(self, out: Outgoing, volatile: bool = False) -> None:
        """Queue ``out``; a ``volatile`` message may be dropped under backpressure."""

    def emit(self, event: str, payload: Any, volatile: bool = False) -> None:
        """Send one event to this peer alone."""

    def ack(self, ack_id: int, payload: Any) -> None:
        """Answer the command that carried ``ack_id``."""

    def reply_error(
        self, ack_id: int | None, err: CollabError, event: str | None,
        operation_id: str | None = None,
    ) -> None:
        """Report a refusal: as the ack, or as an event when no ack was asked for."""

    def confirm(self, ack_id: int | None, result: dict[str, Any]) -> None:
        """Answer a persisted operation: its ack, or a confirmation event without one."""
