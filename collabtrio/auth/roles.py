"""Role policy: which role a user has in a room, and who may join a reserved room.

PROTOCOL section 3: the token's ``rooms`` claim decides first, then the grants stored
in the database, then the configured default; an exact room id beats the longest
matching ``prefix*`` rule. Room ids starting with ``user:`` are personal rooms.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import CollabError, ErrorCode
from ..protocol.ids import PERSONAL_ROOM_PREFIX, ROLE_RANK, Role, personal_room
from .tokens import Identity

__all__ = ["check_join_allowed", "match_role", "resolve_role", "role_at_least"]


def match_role(rules: Mapping[str, Role], room: str) -> Role | None:
    """The role ``rules`` give ``room``, or ``None`` when no rule matches.

    An exact key wins; otherwise the longest matching ``prefix*`` key (``*`` alone is
    the empty prefix, so it matches every room but loses to any longer prefix).
    """
    exact = rules.get(room)
    if exact is not None:
        return exact
    best: Role | None = None
    best_len = -1
    for key, role in rules.items():
        if key.endswith("*"):
            prefix = key[:-1]
            if len(prefix) > best_len and room.startswith(prefix):
                best, best_len = role, len(prefix)
    return best


def resolve_role(
    identity: Identity,
    room: str,
    *,
    grants: Mapping[str, Role] | None,
    default: Role,
) -> Role:
    """The role of ``identity`` in ``room``.

    The token's ``rooms`` claim decides first (:func:`match_role`), then ``grants``
    (the stored grants for this user, same matching), then ``default``.
    """
    role = match_role(identity.rooms, room)
    if role is None and grants:
        role = match_role(grants, room)
    return default if role is None else role


def role_at_least(role: Role, needed: Role) -> bool:
    """True when ``role`` is ``needed`` or more powerful (read < write < admin)."""
    return ROLE_RANK[role] >= ROLE_RANK[needed]


def check_join_allowed(identity: Identity, room: str) -> None:
    """Raise ``CollabError(FORBIDDEN)`` when ``room`` is another user's personal room.

    Room ids starting with ``user:`` are reserved; only ``user:<own sub>`` may be
    joined. Any other room passes (room-id validity is :func:`check_room_id`'s job).
    """
    if room.startswith(PERSONAL_ROOM_PREFIX) and room != personal_room(identity.user_id):
        raise CollabError(
            ErrorCode.FORBIDDEN, "rooms starting with 'user:' are other users' personal rooms"
        )
