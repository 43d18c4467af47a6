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
``BURST_FACTOR`` times the bound. The first frame in line is not counted: it is the
next write, and a single frame larger than the bound (a large join state, a Yjs sync
of a large document) is always accepted into an empty queue, even behind a write in
progress, so a client that reads is not cut off for a message or a burst the server
itself produced. Memory per connection is therefore bounded by ``BURST_FACTOR`` times
the limit, plus one frame, plus one batch in flight.

Every byte written to the socket after the handshake goes through the outbox (pongs
and close frames included), so no lock is needed: the writer task writes, except that
a frame pushed while the writer is parked with nothing queued is written at once by
the pushing task (one non-blocking write, next in order by construction), which saves
a wake-up per delivery at steady rates; whatever the socket does not take then goes
first in the writer's next write. Such direct writes are spaced by at least
:data:`DIRECT_GAP_S`, so a burst still reaches the writer and goes out in few writes.

The writer task need not exist all the time: :meth:`Outbox.attach` gives the outbox
its stream and the connection's nursery, and a writer is started there only when a
frame has to wait (the socket would block, or a burst came within
:data:`DIRECT_GAP_S`); it ends once it has had nothing to write for
:data:`WRITER_LINGER_S`. An idle connection then holds no writer task at all (about
2 kB and 14 objects for the collector to scan, per connection). :meth:`Outbox.drain`
waits for what is queued to be written after :meth:`Outbox.close`. Callers that own a
writer themselves use :meth:`Outbox.run_writer` instead.

A slow client is told before it is cut off: when what waits behind a blocked write,
volatile frames not counted (they would be dropped first), first passes half the bound
(the high-water mark), :attr:`Outbox.on_high_water` gives a
frame (the session's ``warning`` event) that goes out *first*, ahead of what is queued.
The writer sends what it took in writes of at most :data:`MAX_WRITE_BYTES` (whole
frames), so that notice, and after an overflow the ``slow-consumer`` error and the close
frame (:meth:`Outbox.clear` drops what was taken but not yet written), wait for at
most one such write. A write that is cancelled may leave part of a frame on the
stream: :attr:`Outbox.torn` then tells the owner to abort the connection rather than
close it as if the stream were whole.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import trio

from ..protocol.outgoing import Outgoing
from .socketwrite import write_all

BURST_FACTOR = 8
DIRECT_GAP_S = 0.001
"""A frame pushed while the writer is idle is written at once by the pushing task (a
room delivering a broadcast), saving the writer's wake-up, unless the outbox was
written that way less than this ago: a burst is left to the writer, which sends it
in a few large writes."""
WRITER_LINGER_S = 0.5
"""A writer started by an attached outbox ends after this long with nothing to write
(a later frame that has to wait starts another)."""
MAX_WRITE_BYTES = 256 * 1024
"""The most one ``send_all`` writes (whole frames; a larger frame goes alone)."""

_monotonic = time.monotonic


class Outbox:
    """Frames waiting to be written to one WebSocket."""

    __slots__ = (
        "_batch",
        "_batch_at",
        "_bytes",
        "_direct",
        "_direct_at",
        "_frames",
        "_idle",
        "_lot",
        "_nursery",
        "_partial",
        "_sending",
        "_stopped",
        "_stream",
        "_urgent",
        "_volatile_at",
        "_volatile_bytes",
        "_warned",
        "_writing",
        "closed",
        "dropped_volatile",
        "max_bytes",
        "on_high_water",
        "torn",
    )

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: list[bytes] = []
        self._volatile_at: list[int] = []
        self._bytes = 0
        self._volatile_bytes = 0  # of _bytes: dropped before anything overflows
        self._batch: list[bytes] = []  # taken by the writer, not yet written
        self._batch_at = 0
        self._urgent: list[bytes] = []  # written before anything else
        self._lot = trio.lowlevel.ParkingLot()
        self._idle = True
        self._sending = False
        self._warned = False
        self._direct: trio.SocketStream | None = None  # the writer's socket, while it runs
        self._direct_at = -math.inf
        self._partial = False  # _urgent starts with the rest of a frame written in part
        self._stream: trio.abc.SendStream | None = None  # attached: see attach()
        self._nursery: trio.Nursery | None = None
        self._writing = False  # an attached outbox's writer task is running
        self._stopped: trio.Event | None = None  # set when that writer ends (drain)
        self.closed = False
        self.dropped_volatile = 0
        self.on_high_water: Callable[[int], bytes | None] | None = None
        """Called with the queued bytes once they pass half the bound behind a blocked
        write; the frame it returns is written first. Re-armed when the queue drains."""
        self.torn = False
        """A write was cancelled part-way: the stream may end inside a frame."""

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting (not counting a batch being written right now)."""
        return self._bytes

    def push(self, frame: bytes, volatile: bool = False) -> bool:
        """Queue one frame; ``False`` means it did not fit (see the module docstring)."""
        if (self._idle and not self._frames and self._direct is not None
                and not self._urgent and not self._batch and not self.closed):
            # nothing waits, so no bound can be passed (the first frame in line is not
            # counted): the steady-rate path, tried first
            now = _monotonic()
            if now - self._direct_at >= DIRECT_GAP_S:
                self._direct_at = now
                if self._write_now(frame):
                    return True
        if self.closed:
            return True
        size = len(frame)
        limit = self.max_bytes if self._sending else self.max_bytes * BURST_FACTOR
        # the first frame in line is the next write's: only what waits behind it counts
        if self._bytes + size - (len(self._frames[0]) if self._frames else size) > limit:
            if self._volatile_at:
                self._drop_volatile()
            if self._bytes + size - (len(self._frames[0]) if self._frames else size) > limit:
                if volatile:
                    self.dropped_volatile += 1
                    return True
                return False
        if volatile:
            self._volatile_at.append(len(self._frames))
            self._volatile_bytes += size
        self._frames.append(frame)
        self._bytes += size
        if self._sending and not self._warned and (
                (self._bytes - self._volatile_bytes - len(self._frames[0])) * 2
                > self.max_bytes):
            # only what cannot be dropped brings an overflow (a disconnect) closer
            self._high_water()
        self._wake()
        return True

    def _wake(self) -> None:
        """Have the writer write what is queued: unpark it, or start one (attached)."""
        if self._idle:
            self._idle = False
            if self._nursery is not None and not self._writing:
                self._writing = True
                self._nursery.start_soon(self._attached_writer)
            else:
                self._lot.unpark()

    def _write_now(self, frame: bytes) -> bool:
        """Write ``frame`` from the pushing task (the writer is parked and nothing is
        queued, so it is next in order); True if it needs nothing more from the writer.
        What the socket does not take is written first by the writer."""
        stream = self._direct
        fd = stream.socket.fileno() if stream is not None else -1
        if fd < 0:
            return False
        try:
            sent = os.write(fd, frame)
        except BlockingIOError:
            return False  # queued as usual
        except OSError:
            # the peer is gone: write nothing more (its reader notices the broken socket)
            self.closed = True
            self._lot.unpark()
            return True
        if sent < len(frame):
            self._urgent.append(frame[sent:])
            self._partial = True
            self._wake()
        return True

    def _high_water(self) -> None:
        self._warned = True
        notice = self.on_high_water(self._bytes) if self.on_high_water is not None else None
        if notice is not None:
            self._urgent.append(notice)

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
        self._volatile_bytes = 0

    def clear(self) -> None:
        """Forget everything queued, and what the writer took but has not written yet
        (used before a forced disconnect, so that what follows goes out next)."""
        self._frames = []
        self._volatile_at.clear()
        self._bytes = 0
        self._volatile_bytes = 0
        self._batch = []
        self._batch_at = 0

    def close(self) -> None:
        """Accept no more frames; the writer stops once the queue is written."""
        self.closed = True
        self._lot.unpark()

    def attach(self, stream: trio.abc.SendStream, nursery: trio.Nursery) -> None:
        """Write to ``stream`` from now on, with a writer task started in ``nursery``
        only while frames wait (see the module docstring). Frames queued before are
        written at once."""
        self._stream = stream
        self._nursery = nursery
        if isinstance(stream, trio.SocketStream):
            self._direct = stream
        if self._frames or self._urgent:
            self._idle = True
            self._wake()

    async def drain(self) -> None:
        """After :meth:`close`: wait until an attached outbox's writer has written what
        was queued (or the socket broke). Direct writes are over from now on: the
        caller is about to close the socket."""
        try:
            if self._writing:
                if self._stopped is None:
                    self._stopped = trio.Event()
                await self._stopped.wait()
        finally:
            # also when the wait is cut short: the socket is closed next
            self._direct = None

    async def _attached_writer(self) -> None:
        stream = self._stream
        assert stream is not None
        try:
            await self._write_queued(stream, linger=True)
        finally:
            self._writing = False
            self._idle = True
            if self._stopped is not None:
                self._stopped.set()

    def _next_write(self) -> bytes | None:
        """What the writer sends next: urgent frames, else whole frames of the batch (up
        to :data:`MAX_WRITE_BYTES`), taking everything queued as the next batch when the
        last one is written; None when there is nothing to write."""
        if self._urgent:
            urgent = self._urgent
            self._urgent = []
            return urgent[0] if len(urgent) == 1 else b"".join(urgent)
        batch = self._batch
        at = self._batch_at
        if at >= len(batch):
            batch = self._frames
            if not batch:
                self._batch = []
                return None
            # what was queued is now in flight: the bound applies to what comes after
            self._batch = batch
            self._frames = []
            self._volatile_at.clear()
            self._bytes = 0
            self._volatile_bytes = 0
            at = 0
        end = at + 1
        size = len(batch[at])
        while end < len(batch) and size + len(batch[end]) <= MAX_WRITE_BYTES:
            size += len(batch[end])
            end += 1
        self._batch_at = end
        if end == len(batch):
            self._batch = []
            self._batch_at = 0
        return batch[at] if end == at + 1 else b"".join(batch[at:end])

    async def run_writer(self, stream: trio.abc.SendStream) -> None:
        """Write queued frames until closed and drained, or the socket breaks.

        Returns normally in both cases; a broken socket is noticed by the reader. If
        cancelled during a write, :attr:`torn` is set before the cancellation goes on.
        """
        if isinstance(stream, trio.SocketStream):
            self._direct = stream
        try:
            await self._write_queued(stream)
        finally:
            # no direct write once the writer is gone: the socket may close, and its
            # descriptor number may then be another connection's
            self._direct = None

    async def _write_queued(self, stream: trio.abc.SendStream, linger: bool = False) -> None:
        while True:
            data = self._next_write()
            if data is None:
                if self.closed:
                    return
                self._idle = True
                self._warned = False  # drained: the next backlog is warned about again
                # an attached outbox's writer ends after a while with nothing to write
                with trio.move_on_after(WRITER_LINGER_S if linger else math.inf) as waited:
                    try:
                        await self._lot.park()
                    except BaseException:
                        if self._partial:
                            self.torn = True  # the rest of a frame was never written
                        raise
                if waited.cancelled_caught and self._idle and not self.closed:
                    return  # nothing came: a frame that has to wait starts another
                continue
            self._sending = True
            try:
                await write_all(stream, data)
                self._partial = False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed = True
                return
            except BaseException:
                # cancelled (or failed) part-way: nothing may be written after this
                self.torn = True
                self.closed = True
                raise
            finally:
                self._sending = False
