"""The commands handlers put in a room's mailbox, and how each is refused.

Every command names the peer it came from, the ack id to answer (``None``: the client
asked for no ack) and the client event it answers. :meth:`Command.refuse` is the one
way a command that cannot be carried out is answered, so a room that closes, a keeper
that cannot store, or a bug in one handler all answer the same way.

Which task takes a command is the room's dispatch table (``room.py``): membership
commands are the room task's own; the rest belong to a room component (the document
keeper takes :class:`OpCmd`, :class:`FieldCmd` and :class:`ChatCmd`), after the room
checked membership and :meth:`Command.required_role`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import CollabError
from ..protocol.ids import Role
from ..protocol.messages import ChatPayload, FieldPayload, OpPayload
from .peer import Peer

__all__ = ["ChatCmd", "Command", "FieldCmd", "Join", "Leave", "OpCmd", "Relay", "SetRole",
           "YjsAwarenessCmd", "YjsHelloCmd", "YjsSyncCmd", "YjsUpdateCmd"]


@dataclass(slots=True)
class Command:
    """Base of every room command."""

    conn: Peer
    ack_id: int | None

    event: ClassVar[str] = ""
    """The client event this command answers (``operation-error`` names it)."""

    @property
    def operation_id(self) -> str | None:
        """The client's operation id, for commands that have one."""
        return None

    def required_role(self) -> Role:
        """The weakest role that may send this command (``read`` for membership)."""
        return "read"

    def refuse(self, err: CollabError) -> None:
        """Answer this command with ``err`` (ack, or an event when no ack was asked)."""
        self.conn.reply_error(self.ack_id, err, self.event, self.operation_id)


@dataclass(slots=True)
class Join(Command):
    """Add ``conn`` with ``role``; answer with the ack, or a ``joined`` event."""

    role: Role
    room_id: str
    since: int | None = None
    at_connect: bool = False

    event: ClassVar[str] = "join"

    def refuse(self, err: CollabError) -> None:
        """Connect-time joins and un-acked joins are answered with ``room-error``."""
        if self.at_connect or self.ack_id is None:
            self.conn.emit("room-error", {"room": self.room_id, "ok": False,
                                          "error": err.to_wire()})
        else:
            self.conn.reply_error(self.ack_id, err, "join")


@dataclass(slots=True)
class Leave(Command):
    """Remove ``conn`` (``ack_id`` None for a disconnect: no answer)."""

    event: ClassVar[str] = "leave"

    def refuse(self, err: CollabError) -> None:
        """Only an acked leave is answered (a disconnect's leave has nobody to tell)."""
        if self.ack_id is not None:
            self.conn.reply_error(self.ack_id, err, "leave")


@dataclass(slots=True)
class Relay(Command):
    """Ephemeral event from ``conn`` to the other members (cursor, broadcast...)."""

    name: str
    payload: dict[str, Any]
    volatile: bool

    event: ClassVar[str] = "relay"

    def refuse(self, err: CollabError) -> None:
        """Answered under the relayed event's own name."""
        self.conn.reply_error(self.ack_id, err, self.name)


@dataclass(slots=True)
class SetRole(Command):
    """A member's role changed (stored grants changed while connected); no answer."""

    role: Role

    def refuse(self, err: CollabError) -> None:
        """Nobody asked: nothing to answer."""


@dataclass(slots=True)
class OpCmd(Command):
    """A validated ``op``."""

    msg: OpPayload

    event: ClassVar[str] = "op"

    @property
    def operation_id(self) -> str | None:
        """The op's ``operationId``."""
        return self.msg.operation_id

    def required_role(self) -> Role:
        """``replace`` needs ``admin``; every other op ``write``."""
        return "admin" if self.msg.op == "replace" else "write"


@dataclass(slots=True)
class FieldCmd(Command):
    """A validated ``field`` write."""

    msg: FieldPayload

    event: ClassVar[str] = "field"

    @property
    def operation_id(self) -> str | None:
        """The write's ``operationId``."""
        return self.msg.operation_id

    def required_role(self) -> Role:
        """Field writes need ``write``."""
        return "write"


@dataclass(slots=True)
class ChatCmd(Command):
    """A validated ``chat`` message."""

    msg: ChatPayload

    event: ClassVar[str] = "chat"

    def required_role(self) -> Role:
        """Chat needs ``write``."""
        return "write"


@dataclass(slots=True)
class YjsUpdateCmd(Command):
    """A Yjs update for the room's CRDT document."""

    update: bytes

    event: ClassVar[str] = "yjs-update"

    def required_role(self) -> Role:
        """Changing the Yjs document needs ``write``."""
        return "write"


@dataclass(slots=True)
class YjsSyncCmd(Command):
    """A state vector: answer with what the client is missing (an ack, or for a
    y-websocket peer, ``step2``, a y-protocols sync step 2)."""

    state_vector: bytes
    step2: bool = False

    event: ClassVar[str] = "yjs-sync"


@dataclass(slots=True)
class YjsAwarenessCmd(Command):
    """A y-protocols awareness update (presence of Yjs clients): relayed, tracked."""

    update: bytes

    event: ClassVar[str] = "yjs-awareness"


@dataclass(slots=True)
class YjsHelloCmd(Command):
    """A y-websocket peer joined: send it the document's sync step 1 (and awareness)."""

    event: ClassVar[str] = "yjs-hello"
