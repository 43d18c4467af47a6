"""How answers look on the wire: acks, errors and confirmations (PROTOCOL section 6).

Every client event gets exactly one answer. With an ack id it is the ack: the result,
or ``{ok: false, error: {code, message, retryable}}``. Without one, the origin
server's clients expect events: ``operation-confirmed`` for a persisted operation,
``operation-forbidden`` for ``FORBIDDEN``, ``operation-failed`` for a retryable storage
or internal error, ``operation-error`` for everything else (any event, with ``type``
the error code). Pure functions: each returns the :class:`Outgoing` to send.
"""

from __future__ import annotations

from typing import Any

from ..errors import CollabError, ErrorCode
from ..protocol.outgoing import Outgoing

__all__ = ["confirmation", "error"]


def error(ack_id: int | None, err: CollabError, event: str | None,
          operation_id: str | None = None) -> Outgoing:
    """The answer reporting ``err`` for ``event`` (see the module docstring)."""
    if ack_id is not None:
        return Outgoing.ack(ack_id, {"ok": False, "error": err.to_wire()})
    body: dict[str, Any] = {
        "type": str(err.code),
        "message": err.message,
        "event": event,
        "retryable": err.retryable,
    }
    if err.details is not None:
        body["details"] = err.details
    if operation_id is not None:
        body["operationId"] = operation_id
        if err.code is ErrorCode.FORBIDDEN:
            return Outgoing.event("operation-forbidden", body)
        if err.code in (ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.INTERNAL):
            return Outgoing.event("operation-failed", {
                "operationId": operation_id, "error": err.message, "code": str(err.code),
                "retryable": err.retryable,
            })
    return Outgoing.event("operation-error", body)


def confirmation(ack_id: int | None, result: dict[str, Any]) -> Outgoing:
    """The answer to a persisted operation: its ack, or ``operation-confirmed``."""
    if ack_id is not None:
        return Outgoing.ack(ack_id, result)
    return Outgoing.event("operation-confirmed", {
        "operationId": result.get("operationId"),
        "serverTimestamp": result.get("serverTimestamp"),
        "seq": result.get("seq"),
    })
