"""Writing to a socket without a pass through the scheduler when the kernel takes it all.

trio's ``SocketStream.send_all`` yields to the scheduler after every successful send
(a checkpoint). A server that answers one long poll per delivery, or writes one frame
per member per broadcast, pays that pass on every write. :func:`write_all` first tries
one plain non-blocking ``write`` from the calling task; only what the socket does not
take goes through ``send_all`` (which waits until it can). Only for a stream that the
calling task alone writes to (the front door's connection task, an outbox's writer).
"""

from __future__ import annotations

import os

import trio

__all__ = ["write_all"]


async def write_all(stream: trio.abc.SendStream, data: bytes | bytearray | memoryview) -> None:
    """``stream.send_all(data)``, except that on a socket the first attempt is a plain
    non-blocking write from this task: an answer that fits the socket's buffer (a poll's
    answer does) then costs no pass through the scheduler. Whatever does not fit is
    sent with ``send_all``. Only for a stream that this task alone writes to."""
    if isinstance(stream, trio.SocketStream) and data:
        fd = stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # EPIPE, ECONNRESET: the peer is gone
            raise trio.BrokenResourceError(f"the peer closed the connection: {exc}") from exc
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    await stream.send_all(data)
