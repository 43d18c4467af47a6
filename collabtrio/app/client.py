"""One connected client as the application knows it: identity, grants, rooms, answers.

A :class:`Client` is created when a Socket.IO ``CONNECT`` is accepted and lives as long
as that namespace. It is the :class:`~collabtrio.rooms.peer.Peer` the rooms see:
rooms hand it :class:`~collabtrio.protocol.outgoing.Outgoing` values (``send`` is the
transport session's own method, so a delivery costs no extra call) and ask it to
answer commands, which it does as :mod:`.replies` says.
"""

from __future__ import annotations

import math
from typing import Any

from ..auth.tokens import Identity
from ..errors import CollabError
from ..protocol.ids import Role
from ..protocol.outgoing import Outgoing
from ..rooms.room import Room
from ..timers import TimerHandle
from ..transport.session import SocketIOSession
from . import replies
from .context import AppContext

__all__ = ["Client"]


class Client:
    """A connected client (see the module docstring).

    Attributes: ``session`` (its transport), ``identity`` (replaced by
    ``refresh-token``), ``grants`` (stored grants, kept current by the grants
    watcher), ``rooms`` (room id -> Room, kept by the rooms), ``pending_joins``,
    ``auth_rooms`` (rooms asked for in the handshake).
    """

    __slots__ = ("_identity", "auth_rooms", "ctx", "expiry_timer", "grants", "pending_joins",
                 "rooms", "send", "session", "sid")

    def __init__(self, ctx: AppContext, session: SocketIOSession, identity: Identity) -> None:
        self.ctx = ctx
        self.session = session
        self.sid = session.sid
        self.send = session.send
        self._identity = identity
        self.grants: dict[str, Role] = {}
        self.rooms: dict[str, Room] = {}
        self.pending_joins = 0
        self.auth_rooms: list[Any] = []
        self.expiry_timer: TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Client {self.sid} {self._identity.user_id}>"

    @property
    def identity(self) -> Identity:
        """Who this client is."""
        return self._identity

    @property
    def close_reason(self) -> str | None:
        """Why the client's session is ending, once it is."""
        return self.session.close_reason

    # -- answers -------------------------------------------------------------------------

    def emit(self, event: str, payload: Any, volatile: bool = False) -> None:
        """Send one event to this client."""
        self.send(Outgoing.event(event, payload), volatile)

    def ack(self, ack_id: int, payload: Any) -> None:
        """Answer an acked event."""
        self.send(Outgoing.ack(ack_id, payload))

    def reply_error(self, ack_id: int | None, err: CollabError, event: str | None,
                    operation_id: str | None = None) -> None:
        """Report ``err`` as the ack, or as an event when no ack was asked for."""
        self.ctx.metrics.refusal(err.code)
        self.send(replies.error(ack_id, err, event, operation_id))

    def confirm(self, ack_id: int | None, result: dict[str, Any]) -> None:
        """Answer a persisted operation: its ack, or ``operation-confirmed``."""
        self.send(replies.confirmation(ack_id, result))

    def close(self, reason: str, code: int = 1000, *, notify: bool = True) -> None:
        """Disconnect this client (see :meth:`SocketIOSession.close`)."""
        self.session.close(reason, code, notify=notify)

    # -- the token's lifetime ------------------------------------------------------------

    def set_identity(self, identity: Identity) -> None:
        """Replace the identity (``refresh-token``) and schedule its expiry anew."""
        self._identity = identity
        self.schedule_token_expiry()

    def schedule_token_expiry(self) -> None:
        """Warn this client when its token expires, then disconnect it after the grace."""
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
            self.expiry_timer = None
        expected = self._identity
        if expected.expires_at is None:
            return
        ctx = self.ctx
        delay = max(0.0, expected.expires_at - ctx.wall_clock())
        if math.isinf(delay):
            return
        grace = ctx.config.token_refresh_grace_s

        def expired() -> None:
            if self._identity is not expected or self.close_reason is not None:
                return
            self.emit("error", {
                "code": "TOKEN_EXPIRED", "retryable": True,
                "message": f"token expired; send refresh-token within {grace:g}s",
            })

            def too_late() -> None:
                if self._identity is expected:
                    self.close("token expired", 1008)

            self.expiry_timer = ctx.timers.call_later(grace, too_late)

        self.expiry_timer = ctx.timers.call_later(delay, expired)

    def cancel_timers(self) -> None:
        """Stop the expiry timer (the client is gone)."""
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
            self.expiry_timer = None
