"""Authentication and role policy.

:mod:`~collabtrio.auth.tokens` turns a JWT (or no token, in anonymous mode) into an
:class:`Identity`; :mod:`~collabtrio.auth.roles` answers which role an identity has in
a room. The room-id syntax they rely on is :mod:`collabtrio.protocol.ids`, re-exported
here for callers that think of it as part of auth.
"""

from __future__ import annotations

from ..protocol.ids import (
    PERSONAL_ROOM_PREFIX,
    ROLE_RANK,
    ROOM_ID_RE,
    ROOM_PATTERN_RE,
    check_room_id,
    personal_room,
)
from .roles import check_join_allowed, match_role, resolve_role, role_at_least
from .tokens import NBF_LEEWAY_S, Authenticator, Identity, mint_token

__all__ = [
    "NBF_LEEWAY_S",
    "PERSONAL_ROOM_PREFIX",
    "ROLE_RANK",
    "ROOM_ID_RE",
    "ROOM_PATTERN_RE",
    "Authenticator",
    "Identity",
    "check_join_allowed",
    "check_room_id",
    "match_role",
    "mint_token",
    "personal_room",
    "resolve_role",
    "role_at_least",
]
