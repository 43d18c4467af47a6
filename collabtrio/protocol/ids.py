"""Names of the wire protocol: room ids, room-rule patterns, roles, personal rooms.

Pure syntax, no policy (which role a user has is :mod:`collabtrio.auth.roles`), so the
codecs and message models can check a room id without depending on authentication.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal

from ..errors import CollabError, ErrorCode

__all__ = [
    "PERSONAL_ROOM_PREFIX",
    "ROLES",
    "ROLE_RANK",
    "ROOM_ID_RE",
    "ROOM_PATTERN_RE",
    "Role",
    "check_room_id",
    "personal_room",
]

Role = Literal["read", "write", "admin"]
"""A role in a room (PROTOCOL section 3)."""

ROLES: Final[tuple[Role, ...]] = ("read", "write", "admin")
"""Every role, weakest first."""

ROLE_RANK: Final[Mapping[Role, int]] = MappingProxyType({"read": 0, "write": 1, "admin": 2})
"""Roles in increasing order of power: ``read`` < ``write`` < ``admin``."""

ROOM_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
"""A valid room id: 1 to 128 characters of ``[A-Za-z0-9._:-]`` (use ``fullmatch``)."""

ROOM_PATTERN_RE: Final = re.compile(r"^(?:[A-Za-z0-9._:-]{1,128}|[A-Za-z0-9._:-]{0,127}\*)$")
"""A key of a ``rooms`` rule set: an exact room id, ``prefix*``, or ``*`` alone."""

PERSONAL_ROOM_PREFIX: Final = "user:"
"""Room ids starting with this are reserved for personal rooms (``user:<sub>``)."""


def short_repr(value: object, limit: int = 64) -> str:
    """``repr(value)``, cut to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_room_id(room: object) -> str:
    """Return ``room`` if it is a valid room id (see :data:`ROOM_ID_RE`).

    Raises ``CollabError(INVALID_ROOM)`` when it is not a string, or is empty, longer
    than 128 characters, or contains a character outside ``[A-Za-z0-9._:-]``.
    """
    if not isinstance(room, str):
        raise CollabError(
            ErrorCode.INVALID_ROOM, f"room id must be a string, not {type(room).__name__}"
        )
    if ROOM_ID_RE.fullmatch(room) is None:
        raise CollabError(
            ErrorCode.INVALID_ROOM,
            f"invalid room id {short_repr(room)}: use 1 to 128 characters of A-Z a-z 0-9 . _ : -",
        )
    return room


def personal_room(user_id: str) -> str:
    """The personal room of a user: ``"user:<user_id>"``.

    Every connection is put in it. Note it may not pass :func:`check_room_id` when the
    user id contains other characters (e.g. ``auth0|123``); it is server-assigned.
    """
    return PERSONAL_ROOM_PREFIX + user_id
