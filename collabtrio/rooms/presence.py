"""Presence: each member's place in a room, and the ``presence`` event that lists them.

PROTOCOL section 6: ``presence`` is ``{room, users: [{socketId, userId, userName,
avatarUrl, role, joinedAt, lastActivity, cursor, selection}], uniqueUsers,
connections}``. The room task owns the :class:`Member` records and decides when to
broadcast (once per batch in which membership changed); this module only says what a
member holds and how the list looks.

Cost: the list goes out in every join's ack and in every presence broadcast, so a room
of N members that N clients join at once sends N lists of up to N entries. Each member
keeps its entry encoded (:meth:`Member.entry_json`, re-encoded only when one of the
values it shows changed), and :func:`presence_json` joins those texts: a list costs one
string join, not N dicts and a JSON encoding of all of them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.ids import Role
from ..protocol.jsonsafe import RawJSON, dumps
from .peer import Peer

__all__ = ["PRESENCE_EVENTS", "Member", "presence_json", "presence_payload"]

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
    # the values the encoded entry was made from, and the entry (see entry_json)
    _shown: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)
    _json: str = field(default="", repr=False, compare=False)

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

    def entry_json(self) -> str:
        """:meth:`presence_entry` as JSON text, encoded again only when a value it shows
        changed (the cursor and selection are compared by value, so an equal new value
        keeps the text)."""
        shown = (self.conn.identity, self.role, self.last_activity, self.cursor,
                 self.selection, self.typing)
        if shown != self._shown:
            self._json = dumps(self.presence_entry())
            self._shown = shown
        return self._json


def presence_json(room_id: str, members: Collection[Member]) -> RawJSON | dict[str, Any]:
    """The ``presence`` payload for ``members`` of room ``room_id`` to send: as JSON text
    made of each member's cached entry (the object :func:`presence_payload` gives), or
    as that object itself when a cursor or selection holds bytes (sent as a binary
    event, with attachments)."""
    try:
        users = ",".join([m.entry_json() for m in members])
    except TypeError:
        return presence_payload(room_id, members)
    unique = len({m.conn.identity.user_id for m in members})
    return RawJSON(f'{{"room":{dumps(room_id)},"users":[{users}],'
                   f'"uniqueUsers":{unique},"connections":{len(members)}}}')


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
