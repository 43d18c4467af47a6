"""HTTP long-polling: a session's outbound queue, drained by the client's ``GET`` requests.

Theory of operation: a long-polling client receives by sending ``GET`` requests that
the server holds open until it has something to send (a ping is due every
``pingInterval``, so a poll never waits longer than that). Everything the server sends
such a client is an :class:`~collabtrio.protocol.outgoing.Outgoing` queued here; a
``GET`` takes every message queued and answers with their long-polling records joined
by ``\\x1e`` (binary attachments as ``b`` + base64). One ``GET`` at a time: a second
one while one is waiting is a protocol error (the HTTP endpoint closes the session).

The queue is bounded like a WebSocket's outbox (:mod:`.outbox`), with "the client is
not reading" meaning "no ``GET`` is waiting": while the client is away, what queues
past ``max_bytes`` drops the volatile messages first, then refuses (the session
disconnects that client as a slow consumer), so a client that stops polling costs
bounded memory. While a ``GET`` is waiting, what the server queues in one go may use
``BURST_FACTOR`` times the bound. The first message in line is not counted (the next
poll takes it), so one message larger than the bound always fits an empty queue.
When what waits for an absent poll (volatile messages not counted) passes half the
bound, the session's ``warning``
event (:attr:`PollQueue.on_high_water`) is put first in the queue.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..protocol import engineio
from ..protocol.outgoing import Outgoing
from .outbox import BURST_FACTOR

__all__ = ["MAX_PACKETS_PER_POLL", "PollQueue"]

MAX_PACKETS_PER_POLL = 16
"""Packets in one poll's answer at most: python-engineio's client refuses a payload of
more than 16 packets (``Payload.max_decode_packets``) and drops the connection, so a
burst goes out over several polls (Engine.IO allows any split)."""


def _size(out: Outgoing) -> int:
    # what the records will weigh on the wire (base64 grows binary by a third)
    return len(out.packet) + sum(len(a) * 4 // 3 + 4 for a in out.attachments) + 1


class PollQueue:
    """Messages waiting for the next ``GET`` (see the module docstring)."""

    __slots__ = ("_bytes", "_items", "_lot", "_volatile_bytes", "_warned", "closed",
                 "dropped_volatile", "max_bytes", "on_high_water", "waiting", "waker")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: list[tuple[Outgoing, bool]] = []
        self._bytes = 0
        self._volatile_bytes = 0  # of _bytes: dropped before anything overflows
        self._lot = trio.lowlevel.ParkingLot()
        self.waiting = False
        """A ``GET`` is waiting for messages."""
        self.closed = False
        self.dropped_volatile = 0
        self.waker: Callable[[], None] | None = None
        """Called (synchronously) when something is queued or the queue closes."""
        self.on_high_water: Callable[[int], Outgoing | None] | None = None
        """Called with the queued bytes once they pass half the bound while no poll
        waits; the message it returns goes first. Re-armed when a poll empties the
        queue."""
        self._warned = False

    def __len__(self) -> int:
        return len(self._items)

    def push(self, out: Outgoing, volatile: bool = False) -> bool:
        """Queue ``out``; ``False`` means it did not fit (the caller disconnects)."""
        if self.closed:
            return True
        size = _size(out)
        limit = self.max_bytes * BURST_FACTOR if self.waiting else self.max_bytes
        # the first message in line goes out with the next poll: only what waits
        # behind it counts (so one large message never overflows a client that polls)
        if self._bytes + size - self._head_size(size) > limit:
            self._drop_volatile()
            if self._bytes + size - self._head_size(size) > limit:
                if volatile:
                    self.dropped_volatile += 1
                    return True
                return False
        self._items.append((out, volatile))
        self._bytes += size
        if volatile:
            self._volatile_bytes += size
        if not self.waiting and not self._warned and (
                (self._bytes - self._volatile_bytes - _size(self._items[0][0])) * 2
                > self.max_bytes):
            # only what cannot be dropped brings an overflow (a disconnect) closer
            self._warned = True
            notice = self.on_high_water(self._bytes) if self.on_high_water else None
            if notice is not None:
                # first in line: the next poll tells the client before anything else
                self._items.insert(0, (notice, False))
                self._bytes += _size(notice)
        self._wake()
        return True

    def _head_size(self, size: int) -> int:
        # the first message's size; ``size`` (the one being pushed) if none is queued
        return _size(self._items[0][0]) if self._items else size

    def _wake(self) -> None:
        waker = self.waker
        if waker is not None:
            waker()
        if self._lot:
            self._lot.unpark_all()

    def _drop_volatile(self) -> None:
        kept = [item for item in self._items if not item[1]]
        self.dropped_volatile += len(self._items) - len(kept)
        self._items = kept
        self._bytes = sum(_size(out) for out, _ in kept)
        self._volatile_bytes = 0

    def clear(self) -> None:
        """Forget everything queued (before a forced disconnect)."""
        self._items = []
        self._bytes = 0
        self._volatile_bytes = 0

    def close(self) -> None:
        """Accept no more messages; a waiting ``GET`` takes what is queued and returns."""
        self.closed = True
        self._wake()

    def take(self) -> list[tuple[Outgoing, bool]]:
        """Everything queued (each with its volatile flag), oldest first; the queue is
        emptied."""
        items = self._items
        self._items = []
        self._bytes = 0
        self._volatile_bytes = 0
        self._warned = False
        return items

    async def wait(self) -> None:
        """Return once something is queued or the queue is closed."""
        while not self._items and not self.closed:
            await self._lot.park()

    def payload(self, max_packets: int = MAX_PACKETS_PER_POLL) -> bytes:
        """Take what is queued as one long-polling body (UTF-8): whole messages, at most
        ``max_packets`` Engine.IO packets (but always the first message), the rest left
        for the next poll (which is then answered at once)."""
        records: list[str] = []
        taken = 0
        for out, _ in self._items:
            more = out.polling_records()
            if records and len(records) + len(more) > max_packets:
                break
            records.extend(more)
            taken += 1
        if taken == len(self._items):
            self.take()
        else:
            del self._items[:taken]
            self._bytes = sum(_size(out) for out, _ in self._items)
            self._volatile_bytes = sum(_size(out) for out, v in self._items if v)
        return engineio.RECORD_SEPARATOR.join(records).encode("utf-8")
