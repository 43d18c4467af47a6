"""Error codes clients see, and the one exception type that carries them.

Every refusal a client gets is a :class:`CollabError`: it becomes
``{ok: false, error: {code, message, retryable}}`` in an ack, an ``operation-error``
event when the client asked for no ack, or ``CONNECT_ERROR`` data during the handshake.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """The error codes of the wire protocol (PROTOCOL section 7)."""

    AUTH_REQUIRED = "AUTH_REQUIRED"
    INVALID_TOKEN = "INVALID_TOKEN"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    INVALID_ROOM = "INVALID_ROOM"
    NOT_JOINED = "NOT_JOINED"
    FORBIDDEN = "FORBIDDEN"
    VALIDATION = "VALIDATION"
    NOT_FOUND = "NOT_FOUND"
    DUPLICATE = "DUPLICATE"
    TOO_LARGE = "TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    ROOM_FULL = "ROOM_FULL"
    UNKNOWN_EVENT = "UNKNOWN_EVENT"
    EPOCH_MISMATCH = "EPOCH_MISMATCH"
    """The client's document is from another timeline (the room's Yjs document was
    replaced or storage restored): drop it and sync again; retrying cannot succeed."""
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    INTERNAL = "INTERNAL"


RETRYABLE = frozenset({ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED})


class CollabError(Exception):
    """A refusal with a protocol error code, safe to show to the client that caused it."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = code in RETRYABLE if retryable is None else retryable
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` object of the protocol."""
        out: dict[str, Any] = {
            "code": str(self.code),
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.details is not None:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CollabError({self.code!s}, {self.message!r})"
