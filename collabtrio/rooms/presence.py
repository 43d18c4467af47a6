"""Presence: each member's place in a room, and the ``presence`` event that lists them.

PROTOCOL section 6: ``presence`` is ``{room, users: [{socketId, userId, userName,
avatarUrl, role, joinedAt, lastActivity, cursor, selection}], uniqueUsers,
connections}``. The room task owns the :class:`Member` records and decides when to
broadcast (once per batch in which membership changed); this module only says what a
member holds and how the list looks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.ids import Role
from .peer import Peer

__all__ = ["PRESENCE_EVENTS", "Member", "presence_payload"]

PRESENCE_EVENTS = frozenset({"cursor", "selection", "typing"})
"""Relayed events whose value is also kept in the member's presence entry."""


@dataclass(slots=True)
class Member:
    """One peer's place in a room."""

    conn: Peer
    role: Role
    joined_at: int
    last_activity: int
    cursor: Any = None
    selection: Any = None
    typing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def update_presence(self, event: str, payload: dict[str, Any]) -> None:
        """Keep the value of a ``cursor`` / ``selection`` / ``typing`` relay."""
        if event in PRESENCE_EVENTS:
            setattr(self, event, payload.get(event))

    def presence_entry(self) -> dict[str, Any]:
        """This member as the ``presence`` event lists it."""
        ident = self.conn.identity
        return {
            "socketId": self.conn.sid,
            "userId": ident.user_id,
            "userName": ident.name,
            "avatarUrl": ident.picture,
            "role": self.role,
            "joinedAt": self.joined_at,
            "lastActivity": self.last_activity,
            "cursor": self.cursor,
            "selection": self.selection,
            "typing": self.typing,
        }


def presence_payload(room_id: str, members: Iterable[Member]) -> dict[str, Any]:
    """The ``presence`` payload for ``members`` of room ``room_id``."""
    users = [m.presence_entry() for m in members]
    unique = {u["userId"] for u in users}
    return {
        "room": room_id,
        "users": users,
        "uniqueUsers": len(unique),
        "connections": len(users),
    }
