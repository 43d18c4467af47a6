"""The commands handlers put in a room's mailbox, and how each is refused.

Every command names the peer it came from, the ack id to answer (``None``: the client
asked for no ack) and the client event it answers. :meth:`Command.refuse` is the one
way a command that cannot be carried out is answered, so a room that closes, a keeper
that cannot store, or a bug in one handler all answer the same way.

Which task takes a command is the room's dispatch table (``room.py``): membership
commands are the room task's own; the rest belong to a room component (the document
keeper takes :class:`OpCmd`, :class:`FieldCmd` and :class:`ChatCmd`), after the room
checked membership and :meth:`Command.required_role`.

:class:`ServerCommand` is the exception: it comes from back-end code in the server's
own process (the embedding API on :class:`~collabtrio.server.Server`), not from a
member, so the room hands it over without those checks. Its peer is a
:class:`ServerCall`, which keeps the answer for the task awaiting
:meth:`ServerCall.result`. It goes through the same mailbox, so it is ordered with
the members' commands. Back-end code has two of its own: :class:`PublishCmd` (an
event for every member) and :class:`ServerOpCmd` (a document operation, an
:class:`OpCmd` made under the caller's identity).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import trio

from ..auth.tokens import Identity
from ..errors import CollabError
from ..protocol.ids import Role
from ..protocol.messages import ChatPayload, FieldPayload, OpPayload
from ..protocol.outgoing import Outgoing
from .peer import Peer

__all__ = ["SERVER_IDENTITY", "ChatCmd", "Command", "FieldCmd", "Join", "Leave", "OpCmd",
           "PublishCmd", "Relay", "ServerCall", "ServerCommand", "ServerOpCmd", "SetRole",
           "YjsAwarenessCmd", "YjsHelloCmd", "YjsReadCmd", "YjsResetCmd", "YjsSyncCmd",
           "YjsUpdateCmd"]


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
    epoch: str | None = None
    """The document epoch ``since`` belongs to (``join {epoch}``)."""
    yjs_epoch: str | None = None
    """The Yjs epoch of the joiner's document (a y-websocket peer's ``?epoch=``)."""

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
    """A Yjs update for the room's CRDT document (``epoch``: the Yjs epoch of the
    sender's document, if it said)."""

    update: bytes
    epoch: str | None = None

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
    epoch: str | None = None

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


SERVER_IDENTITY = Identity(user_id="server", name="server", email=None, picture=None)
"""Who a :class:`ServerCall` is unless it is given another identity."""


class ServerCall:
    """The :class:`Peer` of a :class:`ServerCommand`: not a member of anything; the
    command's answer (its ack, or its refusal) is kept for :meth:`result`.

    ``identity`` is who the command acts as (user id ``server`` by default): a document
    operation from back-end code is recorded, broadcast and made idempotent under it.
    """

    pending_joins = 0

    def __init__(self, identity: Identity | None = None) -> None:
        self._identity = identity or SERVER_IDENTITY
        self._done = trio.Event()
        self._value: Any = None
        self._error: CollabError | None = None
        self._rooms: dict[str, Any] = {}

    @property
    def sid(self) -> str:
        """``server``: what members would see as ``socketId``."""
        return "server"

    @property
    def identity(self) -> Identity:
        """Who the command acts as (the server's own identity, user id ``server``,
        unless another was given)."""
        return self._identity

    @property
    def rooms(self) -> MutableMapping[str, Any]:
        """Always empty: a server call joins nothing."""
        return self._rooms

    @property
    def close_reason(self) -> str | None:
        """Never closing."""
        return None

    def send(self, out: Outgoing, volatile: bool = False) -> None:
        """Nothing is sent to a server call."""

    def emit(self, event: str, payload: Any, volatile: bool = False) -> None:
        """Nothing is sent to a server call."""

    def ack(self, ack_id: int, payload: Any) -> None:
        """The command's result."""
        self._finish(payload, None)

    def confirm(self, ack_id: int | None, result: dict[str, Any]) -> None:
        """The command's result."""
        self._finish(result, None)

    def reply_error(self, ack_id: int | None, err: CollabError, event: str | None,
                    operation_id: str | None = None) -> None:
        """The command was refused: :meth:`result` raises ``err``."""
        self._finish(None, err)

    def _finish(self, value: Any, error: CollabError | None) -> None:
        if not self._done.is_set():  # the first answer is the answer
            self._value, self._error = value, error
            self._done.set()

    async def result(self) -> Any:
        """Wait for the answer; raise the :class:`CollabError` of a refusal."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(slots=True)
class ServerCommand(Command):
    """A command from back-end code in the server's process (``conn`` a
    :class:`ServerCall`): handed to its component without membership or role checks."""


@dataclass(slots=True)
class YjsReadCmd(ServerCommand):
    """Read the room's Yjs document: the answer is ``read(doc)`` (a ``pycrdt.Doc``),
    computed in the Yjs component's task, in order with the updates before it."""

    read: Callable[[Any], Any]

    event: ClassVar[str] = "yjs-read"


@dataclass(slots=True)
class YjsResetCmd(ServerCommand):
    """Replace (``update``) or delete (None) the room's Yjs document: a new Yjs epoch.
    The answer is the new epoch."""

    update: bytes | None

    event: ClassVar[str] = "yjs-reset"


@dataclass(slots=True)
class PublishCmd(ServerCommand):
    """An event from back-end code for every member of the room (``out``, encoded once;
    a ``broadcast`` event). The answer is how many members it was handed to."""

    out: Outgoing

    event: ClassVar[str] = "publish"


@dataclass(slots=True)
class ServerOpCmd(OpCmd, ServerCommand):
    """A document operation from back-end code: an :class:`OpCmd` (same validation,
    idempotency, persistence and broadcast, under the caller's identity) that the room
    hands over without membership or role checks. The answer is the op's result."""
