"""Coalescing of ``field`` writes: per key, a trailing window and a maximum hold.

Pure bookkeeping (times are passed in): the room's document task asks for
:meth:`FieldDebouncer.next_deadline`, sleeps until then (or until new work arrives),
and when a deadline has passed takes *every* pending key at once, so one flush is one
transaction for the whole room.

A key is ``(collection, id, path)``. A write to a pending key replaces its value and
pushes its trailing deadline to ``now + window``, but never past ``first + max_hold``
(the time of the key's first pending write plus the hold limit). Every write's sender
is remembered so each gets its own confirmation when the winning value is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FieldKey = tuple[str, str, tuple[str, ...]]


@dataclass(slots=True)
class FieldWaiter:
    """One coalesced write waiting for its confirmation."""

    conn: Any  # the sending Connection
    operation_id: str
    ack_id: int | None
    record_key: str = ""  # the sender's own key for the operation id (idempotency)


@dataclass(slots=True)
class PendingField:
    """The newest value of one key and everyone waiting on it."""

    key: FieldKey
    value: Any
    conn: Any  # who sent the newest value
    operation_id: str  # the operation that wrote the newest value
    timestamp: float | None
    first_at: float
    last_at: float
    waiters: list[FieldWaiter] = field(default_factory=list)


class FieldDebouncer:
    """Pending field writes of one room (see the module docstring)."""

    def __init__(self, window_s: float, max_hold_s: float) -> None:
        self.window_s = window_s
        self.max_hold_s = max_hold_s
        self.pending: dict[FieldKey, PendingField] = {}
        # record key (sender and operation id) -> the write it is waiting on
        self.by_operation: dict[str, PendingField] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def add(
        self, key: FieldKey, value: Any, waiter: FieldWaiter, timestamp: float | None, now: float
    ) -> None:
        """Record a write to ``key`` at time ``now``."""
        entry = self.pending.get(key)
        if entry is None:
            entry = self.pending[key] = PendingField(
                key, value, waiter.conn, waiter.operation_id, timestamp, now, now
            )
        else:
            entry.value = value
            entry.conn = waiter.conn
            entry.operation_id = waiter.operation_id
            entry.timestamp = timestamp
            entry.last_at = now
        entry.waiters.append(waiter)
        self.by_operation[waiter.record_key or waiter.operation_id] = entry

    def next_deadline(self) -> float:
        """When the earliest key must be flushed (``inf`` when nothing is pending)."""
        deadline = float("inf")
        window, hold = self.window_s, self.max_hold_s
        for entry in self.pending.values():
            due = min(entry.last_at + window, entry.first_at + hold)
            if due < deadline:
                deadline = due
        return deadline

    def take_entity(self, collection: str, entity_id: str) -> list[PendingField]:
        """The pending keys of one entity (an operation on it is about to be applied)."""
        keys = [k for k in self.pending if k[0] == collection and k[1] == entity_id]
        entries = [self.pending.pop(k) for k in keys]
        for entry in entries:
            for w in entry.waiters:
                self.by_operation.pop(w.record_key or w.operation_id, None)
        return entries

    def take_all(self) -> list[PendingField]:
        """Every pending key (the flush takes them all), oldest first."""
        entries = list(self.pending.values())
        self.pending.clear()
        self.by_operation.clear()
        return entries
