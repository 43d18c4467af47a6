"""A connection's bounded outbound queue and the one task that writes it.

Theory of operation: producers (room tasks, the timer task, the connection's own
reader) call :meth:`Outbox.push` with *pre-encoded* WebSocket frames; a push never
blocks and never awaits the socket. The writer task takes everything queued so far and
writes it with a single ``send_all``, so a burst of N broadcasts costs one syscall and
one wake-up per connection rather than N. A broadcast's frame is the same bytes object
for every member, encoded once by the room.

The queue is bounded in bytes, and the bound applies to what waits behind a write in
progress: while the writer is blocked in ``send_all`` (the client is not reading
fast enough for the kernel's buffer), a push that would pass the bound first drops
the volatile frames already queued (cursor, selection, typing, move, awareness); a
volatile frame that still does not fit is dropped; a non-volatile one that does not
fit makes :meth:`push` return ``False`` and the caller disconnects that client
(``slow-consumer``). What the server queues in one go while no write is in progress
(a join's full state, a replay, a committed batch of operations) may use
``BURST_FACTOR`` times the bound, and a single frame into an empty queue (a large
join state) is always accepted, so a client that reads is not cut off for a burst the
server itself produced. Memory per connection is therefore bounded by
``BURST_FACTOR`` times the limit, plus one frame, plus one batch in flight.

Every byte written to the socket after the handshake goes through the outbox (pongs
and close frames included), so the writer task owns the stream for writing and no lock
is needed.
"""

from __future__ import annotations

import trio

from ..protocol.outgoing import Outgoing

BURST_FACTOR = 8


class Outbox:
    """Frames waiting to be written to one WebSocket."""

    __slots__ = (
        "_bytes",
        "_frames",
        "_idle",
        "_lot",
        "_sending",
        "_volatile_at",
        "closed",
        "dropped_volatile",
        "max_bytes",
    )

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: list[bytes] = []
        self._volatile_at: list[int] = []
        self._bytes = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._idle = True
        self._sending = False
        self.closed = False
        self.dropped_volatile = 0

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting (not counting a batch being written right now)."""
        return self._bytes

    def push(self, frame: bytes, volatile: bool = False) -> bool:
        """Queue one frame; ``False`` means it did not fit (see the module docstring)."""
        if self.closed:
            return True
        size = len(frame)
        limit = self.max_bytes if self._sending else self.max_bytes * BURST_FACTOR
        if self._bytes + size > limit and (self._sending or self._frames):
            if self._volatile_at:
                self._drop_volatile()
            if self._bytes + size > limit:
                if volatile:
                    self.dropped_volatile += 1
                    return True
                return False
        if volatile:
            self._volatile_at.append(len(self._frames))
        self._frames.append(frame)
        self._bytes += size
        if self._idle:
            self._idle = False
            self._lot.unpark()
        return True

    def send(self, out: Outgoing, volatile: bool = False) -> bool:
        """Queue the WebSocket frames of ``out`` (encoded once, shared by every member)."""
        return self.push(out.ws_frames(), volatile)

    def push_many(self, frames: list[bytes], volatile: bool = False) -> bool:
        """Queue several frames that belong together (a packet and its attachments)."""
        if len(frames) == 1:
            return self.push(frames[0], volatile)
        # attachments must not be split from their packet: treat them as one unit
        return self.push(b"".join(frames), volatile)

    def _drop_volatile(self) -> None:
        drop = set(self._volatile_at)
        kept = [f for i, f in enumerate(self._frames) if i not in drop]
        self.dropped_volatile += len(self._frames) - len(kept)
        self._frames = kept
        self._bytes = sum(len(f) for f in kept)
        self._volatile_at.clear()

    def clear(self) -> None:
        """Forget everything queued (used before a forced disconnect)."""
        self._frames = []
        self._volatile_at.clear()
        self._bytes = 0

    def close(self) -> None:
        """Accept no more frames; the writer stops once the queue is written."""
        self.closed = True
        self._lot.unpark()

    async def run_writer(self, stream: trio.abc.SendStream) -> None:
        """Write queued frames until closed and drained, or the socket breaks.

        Returns normally in both cases; a broken socket is noticed by the reader.
        """
        while True:
            frames = self._frames
            if not frames:
                if self.closed:
                    return
                self._idle = True
                await self._lot.park()
                continue
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            self._frames = []
            self._volatile_at.clear()
            self._bytes = 0
            self._sending = True
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True
                return
            finally:
                self._sending = False
